"""Reports of a search: CSV, JSON and one self-contained HTML page, checked in a real headless Chromium.

The page must load without a single error, show every thumbnail (each decoded by the browser: naturalWidth > 0),
ask nothing of the network, and escape what the evidence names (file names with <, &, quotes). Files are written
whole or not at all. The command line's --export runs as a subprocess on both stores.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from image_search import (ImageSearchError, InvalidInputError, __version__, check_report_path, search_report,
                          write_report, write_report_files)
from tests.browser import Browser, open_page, require_chromium, screenshot_file
from tests.conftest import TEST_MODEL, run_tool

HOSTILE_NAME = "<img src=x onerror=alert('x')> & \"quoted\".jpg"  # file names cannot hold a slash


@pytest.fixture(scope="session")
def chromium() -> str:
    """The Debian Chromium, installed when missing (as .ci/run does)."""
    return require_chromium()


@pytest.fixture
def browser(chromium, tmp_path):
    running = Browser(chromium, tmp_path / "chromium-profile")
    yield running
    running.close()


@pytest.fixture
def case(tmp_path, photos) -> Path:
    """Five photos, one with a name that is HTML, one in a folder whose name is too."""
    folder = tmp_path / "case & <evidence>"
    (folder / 'sub "dir"').mkdir(parents=True)
    originals = sorted(photos.iterdir())
    for photo in originals[:3]:
        shutil.copy(photo, folder / photo.name)
    shutil.copy(originals[3], folder / HOSTILE_NAME)
    shutil.copy(originals[4], folder / 'sub "dir"' / originals[4].name)
    return folder


def image_report(engine, case: Path, name: str = "report-case") -> dict:
    engine.ingest(case, name, progress=False)
    query = case / HOSTILE_NAME
    results = engine.search_image(name, query, 5)
    return search_report([r.to_dict() for r in results], dataset=name, model=engine.dataset(name).model,
                         image=str(query))


# -- the HTML page --------------------------------------------------------------------------------------------
def test_the_html_report_is_one_escaped_page_with_everything_inside(sqlite_engine, case, tmp_path):
    report = image_report(sqlite_engine, case)
    path = write_report(tmp_path / "report.html", report)
    page = Path(path).read_text(encoding="utf-8")
    assert page.startswith("<!DOCTYPE html>")
    assert "<img src=x" not in page and "<script" not in page
    assert "&lt;img src=x onerror=alert(&#x27;x&#x27;)&gt; &amp; &quot;quoted&quot;.jpg" in page
    assert "case &amp; &lt;evidence&gt;" in page and "sub &quot;dir&quot;" in page
    # nothing outside the file: no address, no stylesheet or script link, a policy that forbids loading
    assert not re.search(r"https?://|<link|src=\"(?!data:)", page)
    assert "Content-Security-Policy" in page and "default-src 'none'" in page
    # the query: the picture and its SHA-256; the dataset, model, time and version
    query_hash = hashlib.sha256((case / HOSTILE_NAME).read_bytes()).hexdigest()
    assert report["query"]["sha256"] == query_hash and query_hash in page
    assert "report-case" in page and TEST_MODEL in page and f"image-search {__version__}" in page
    assert report["searched_at"] in page
    assert page.count("data:image/jpeg;base64,") == 1 + len(report["results"]) == 6
    for hit in report["results"]:
        assert hit["sha256"] and hit["sha256"] in page and hit["md5"] in page


def test_the_html_report_loads_in_chromium_without_errors_and_shows_every_thumbnail(sqlite_engine, case, tmp_path,
                                                                                   browser):
    report = image_report(sqlite_engine, case)
    path = write_report(tmp_path / "report.html", report)
    page = open_page(browser, Path(path).as_uri())
    assert page.errors() == []
    images = page.evaluate("Array.from(document.images).map(i => [i.complete, i.naturalWidth, i.naturalHeight])")
    assert len(images) == 6 and all(complete and width > 0 and height > 0 for complete, width, height in images)
    requested = page.requested_urls()
    assert requested and all(url.startswith(("file:", "data:")) for url in requested), requested
    assert page.evaluate("document.title") == "Image search report: report-case"
    shown = page.evaluate("document.body.innerText")
    assert HOSTILE_NAME in shown and report["query"]["sha256"] in shown  # escaped, so shown as text
    assert page.evaluate("document.querySelectorAll('figure.hit').length") == 5
    png = page.screenshot()
    assert png.startswith(b"\x89PNG")
    picture = np.asarray(Image.open(io.BytesIO(png)).convert("RGB"), dtype=np.float32)
    assert picture.shape[0] > 300 and picture.std() > 20  # thumbnails and text, not a blank page


def test_a_screenshot_of_the_report_from_chromiums_command_line(chromium, sqlite_engine, case, tmp_path):
    path = write_report(tmp_path / "report.html", image_report(sqlite_engine, case))
    png = tmp_path / "report.png"
    done = screenshot_file(chromium, Path(path).as_uri(), png, tmp_path / "profile", window=(1200, 900))
    assert done.returncode == 0 and png.exists(), done.stderr[-2000:]
    picture = Image.open(png)
    assert picture.size == (1200, 900) and png.stat().st_size > 20_000
    pixels = np.asarray(picture.convert("RGB"), dtype=np.float32)
    assert pixels.std() > 20
    # the thumbnails are there: a grid card's picture is far more colourful than the page's greys
    assert (pixels.max(axis=2) - pixels.min(axis=2)).mean() > 5


def test_a_picture_gone_since_the_ingest_is_named_not_broken(sqlite_engine, case, tmp_path, browser):
    report = image_report(sqlite_engine, case)
    gone = next(hit for hit in report["results"] if hit["path"] != report["query"]["image"])
    os.unlink(gone["path"])
    path = write_report(tmp_path / "report.html", report)
    page = open_page(browser, Path(path).as_uri())
    assert page.errors() == []
    assert page.evaluate("Array.from(document.images).every(i => i.complete && i.naturalWidth > 0)")
    assert page.evaluate("document.images.length") == 5
    assert "cannot show the picture now: file disappeared" in page.evaluate("document.body.innerText")


# -- CSV and JSON -----------------------------------------------------------------------------------------------
def test_the_csv_and_json_reports_hold_every_hit_with_its_hashes(sqlite_engine, case, tmp_path):
    report = image_report(sqlite_engine, case)
    with open(write_report(tmp_path / "report.csv", report), newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    assert [row["rank"] for row in rows] == ["1", "2", "3", "4", "5"]
    assert [row["path"] for row in rows] == [hit["path"] for hit in report["results"]]
    for row, hit in zip(rows, report["results"]):
        assert row["sha256"] == hit["sha256"] == hashlib.sha256(Path(hit["path"]).read_bytes()).hexdigest()
        assert row["md5"] == hashlib.md5(Path(hit["path"]).read_bytes()).hexdigest()
        assert int(row["size_bytes"]) == os.path.getsize(hit["path"]) and row["format"] == "JPEG"
        assert float(row["score"]) == pytest.approx(hit["score"])
    assert json.loads(Path(write_report(tmp_path / "report.json", report)).read_text()) == report


def test_csv_cells_from_the_evidence_never_run_as_spreadsheet_formulas(tmp_path):
    hit = {"path": "/case/a.jpg", "title": "=HYPERLINK(\"http://x\")", "score": -0.01, "camera": "+cmd|' /C calc'!A0",
           "lens": "@SUM(1)", "sha256": "ab" * 32}
    report = search_report([hit], dataset="d", model="m", text="q")
    with open(write_report(tmp_path / "r.csv", report), newline="", encoding="utf-8") as handle:
        [row] = list(csv.DictReader(handle))
    assert row["title"].startswith("'=") and row["camera"].startswith("'+") and row["lens"].startswith("'@")
    assert row["score"] == "-0.01" and row["path"] == "/case/a.jpg"


# -- paths and atomic writes --------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["report.pdf", "report", "report.html.txt"])
def test_an_unknown_extension_is_one_sentence_and_writes_nothing(tmp_path, name):
    with pytest.raises(InvalidInputError, match=r"name it \.csv, \.json or \.html"):
        write_report(tmp_path / name, search_report([], dataset="d", model="m", text="q"))
    assert list(tmp_path.iterdir()) == []


def test_paths_that_cannot_take_a_report_are_refused_before_any_work(tmp_path):
    with pytest.raises(InvalidInputError, match="does not exist"):
        check_report_path(tmp_path / "missing" / "r.csv")
    (tmp_path / "r.html").mkdir()
    with pytest.raises(InvalidInputError, match="is a folder"):
        check_report_path(tmp_path / "r.html")
    assert check_report_path(tmp_path / "R.HTM") == str(tmp_path / "R.HTM")


def test_a_failed_write_leaves_the_old_report_and_no_temporary_file(tmp_path):
    target = tmp_path / "r.json"
    target.write_text("the earlier report")
    unserialisable = search_report([{"path": "/a.jpg", "score": object()}], dataset="d", model="m", text="q")
    with pytest.raises(TypeError):
        write_report(target, unserialisable)
    assert target.read_text() == "the earlier report" and [p.name for p in tmp_path.iterdir()] == ["r.json"]
    with pytest.raises(InvalidInputError, match="Cannot write the report /proc/r.csv"):
        write_report("/proc/r.csv", search_report([], dataset="d", model="m", text="q"))  # even root cannot


def test_report_files_go_beside_each_other_and_never_replace_an_earlier_report(tmp_path):
    report = search_report([], dataset="case", model="m", text="q", searched_at="2025-03-02T10:14:07+01:00")
    first = write_report_files(tmp_path, report)
    second = write_report_files(tmp_path, report)
    assert [Path(p).name for p in first] == ["search-case-20250302-101407.html", "search-case-20250302-101407.csv"]
    assert [Path(p).name for p in second] == ["search-case-20250302-101407-2.html",
                                              "search-case-20250302-101407-2.csv"]
    with pytest.raises(InvalidInputError, match="does not exist"):
        write_report_files(tmp_path / "nowhere", report)
    assert isinstance(InvalidInputError("x"), ImageSearchError)


# -- the command line ---------------------------------------------------------------------------------------------
def test_cli_search_exports_each_format(cli_env, case, tmp_path):
    done = run_tool("cli.cli_preprocess", "-i", case, "-n", "exported", env=cli_env)
    assert done.returncode == 0, done.stderr
    out = tmp_path / "out"
    out.mkdir()
    done = run_tool("cli.cli_search", "-q", "a photo", "-n", "exported", "-k", "3", "--no-server",
                    "--export", out / "text.html", env=cli_env)
    assert done.returncode == 0, done.stderr
    assert f"Wrote the report {out / 'text.html'}" in done.stdout
    page = (out / "text.html").read_text()
    assert "&ldquo;a photo&rdquo; (text)" in page and page.count("data:image/jpeg;base64,") == 3
    done = run_tool("cli.cli_search", "-i", case / HOSTILE_NAME, "-n", "exported", "-k", "2", "--no-server",
                    "--json", "--export", out / "image.csv", env=cli_env)
    assert done.returncode == 0, done.stderr
    results = json.loads(done.stdout)  # stdout holds only the JSON; the note went to stderr
    assert "Wrote the report" in done.stderr
    with open(out / "image.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [row["path"] for row in rows] == [r["path"] for r in results] and rows[0]["sha256"] == results[0]["sha256"]
    done = run_tool("cli.cli_search", "-q", "a photo", "-n", "exported", "--no-server", "--export",
                    out / "all.json", env=cli_env)
    assert done.returncode == 0 and json.loads((out / "all.json").read_text())["query"] == {"text": "a photo"}


def test_cli_search_refuses_a_bad_export_path_in_one_line_before_searching(cli_env, tmp_path):
    for target, words in ((tmp_path / "results.pdf", "name it .csv, .json or .html"),
                          (tmp_path / "missing" / "r.html", "does not exist")):
        done = run_tool("cli.cli_search", "-q", "a photo", "-n", "no-such-dataset", "--export", target, env=cli_env)
        assert done.returncode == 2 and done.stdout == ""
        assert len(done.stderr.strip().splitlines()) == 1 and done.stderr.startswith("error: argument --export:")
        assert words in done.stderr and "no-such-dataset" not in done.stderr  # refused before it searched
    assert not (tmp_path / "results.pdf").exists() and not (tmp_path / "missing").exists()
