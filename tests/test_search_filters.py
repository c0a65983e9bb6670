"""Search filters and collapsed copies, on hand-made images whose EXIF the tests write with Pillow: through the core
on both stores, the command line's flags in real processes, and the server's parameters over real HTTP."""

from __future__ import annotations

import json
import os
import shutil
from datetime import date, datetime
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.conftest import run_tool, tool_env

# name: (seed, format, EXIF date taken, make, model, modification time)
EVIDENCE = {
    "DCIM/canon.jpg": (1, "JPEG", "2023:03:05 10:00:00", "Canon", "Canon EOS 5D", "2020-01-01T09:00:00"),
    "DCIM/iphone.jpg": (2, "JPEG", "2023:03:20 18:30:00", "Apple", "iPhone 12", "2020-01-01T09:00:00"),
    "DCIM/sub/nikon.jpg": (3, "JPEG", "2022:12:31 23:59:59", "NIKON CORPORATION", "NIKON D750", "2020-01-01T09:00:00"),
    "DCIM/acme.jpg": (4, "JPEG", None, "ACME 100%", "Zoom_Cam", "2019-05-05T12:00:00"),
    "DCIM2/other.jpg": (5, "JPEG", None, None, None, "2018-02-02T12:00:00"),  # 'DCIM' must not match 'DCIM2'
    "Screens/screen.png": (6, "PNG", None, None, None, "2023-03-10T12:00:00"),
    "Screens/old.png": (7, "PNG", None, None, None, "2021-06-01T12:00:00"),
}
COPIES = ["Downloads/canon copy.jpg", "Downloads/again/canon.jpg"]  # the bytes of DCIM/canon.jpg, modified in 2024
CANON = ["DCIM/canon.jpg", *COPIES]


def write_image(path: Path, seed: int, image_format: str, taken: str | None, make: str | None, model: str | None,
                modified: str) -> None:
    rng = np.random.default_rng(seed)
    # smooth colour fields, different for every seed: distinct pictures, distinct vectors
    y, x = np.mgrid[0:72, 0:96]
    channels = [np.sin(x / (5 + 3 * rng.random()) + rng.random() * 6) + np.cos(y / (4 + 3 * rng.random()))
                for _ in range(3)]
    pixels = ((np.stack(channels, axis=-1) + 2) * 63).clip(0, 255).astype(np.uint8)
    exif = Image.Exif()
    if make:
        exif[0x010F] = make
    if model:
        exif[0x0110] = model
    if taken:
        exif.get_ifd(0x8769)[0x9003] = taken  # DateTimeOriginal, in the Exif IFD
    path.parent.mkdir(parents=True, exist_ok=True)
    if make or model or taken:
        Image.fromarray(pixels).save(path, image_format, exif=exif)
    else:
        Image.fromarray(pixels).save(path, image_format)
    stamp = datetime.fromisoformat(modified).timestamp()
    os.utime(path, (stamp, stamp))


@pytest.fixture
def evidence(tmp_path) -> Path:
    folder = tmp_path / "evidence"
    for name, facts in EVIDENCE.items():
        write_image(folder / name, *facts)
    for copy in COPIES:
        (folder / copy).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(folder / "DCIM/canon.jpg", folder / copy)
        stamp = datetime(2024, 1, 1, 12).timestamp()
        os.utime(folder / copy, (stamp, stamp))
    return Path(os.path.realpath(folder))


@pytest.fixture
def case(engine, evidence):
    """(engine, folder): the evidence folder ingested as dataset 'case'."""
    report = engine.ingest(evidence, "case", progress=False)
    assert report.total == len(EVIDENCE) + len(COPIES)
    return engine, evidence


def titles(results) -> list[str]:
    return sorted(result.title for result in results)


def text_search(engine, k=20, **conditions):
    from image_search import SearchFilter

    return engine.search_text("case", "a photo", k, filters=SearchFilter(**conditions))


# -- every filter through the core, on both stores ---------------------------------------------------------------
def test_the_folder_filter_keeps_the_images_under_it(case):
    engine, folder = case
    dcim = ["DCIM/acme.jpg", "DCIM/canon.jpg", "DCIM/iphone.jpg", "DCIM/sub/nikon.jpg"]
    assert titles(text_search(engine, folder="DCIM")) == dcim
    assert titles(text_search(engine, folder=folder / "DCIM")) == dcim  # in full, as a Path
    assert titles(text_search(engine, folder="DCIM/sub/")) == ["DCIM/sub/nikon.jpg"]
    assert titles(text_search(engine, folder="./Screens/../DCIM/sub")) == ["DCIM/sub/nikon.jpg"]
    assert len(text_search(engine, folder=str(folder))) == len(EVIDENCE) + len(COPIES)  # the dataset's own folder


def test_a_folder_outside_the_dataset_or_not_in_it_is_refused_in_one_sentence(case, tmp_path):
    from image_search import Fix, InvalidInputError

    engine, folder = case
    (tmp_path / "elsewhere").mkdir()
    for outside, fragment in [("../elsewhere", "is not inside dataset 'case'"),
                              (tmp_path / "elsewhere", "is not inside dataset 'case'"),
                              ("/", "is not inside dataset 'case'"),
                              ("DCMI", "There is no folder 'DCMI' in dataset 'case'"),
                              ("DCIM/canon.jpg", "is a file, not a folder")]:
        with pytest.raises(InvalidInputError) as refused:
            text_search(engine, folder=str(outside))
        assert fragment in str(refused.value) and refused.value.fix == Fix.FILTER_FOLDER
        assert str(folder) in str(refused.value) and "\n" not in str(refused.value)


def test_dates_taken_come_from_exif_else_the_modification_time(case):
    engine, _ = case
    march = text_search(engine, taken_from=date(2023, 3, 1), taken_to=date(2023, 3, 31))
    assert titles(march) == sorted(["DCIM/canon.jpg", "DCIM/iphone.jpg", "Screens/screen.png", *COPIES])
    sources = {result.title: result.date_source for result in march}
    assert sources["DCIM/canon.jpg"] == "exif" and sources["Screens/screen.png"] == "modified"
    assert {r.date_taken for r in march if r.title in CANON} == {"2023-03-05T10:00:00"}  # not the copies' 2024
    # the last day is included, to its last second; a datetime bound is exact to the second
    assert titles(text_search(engine, taken_to="2022-12-31")) == [
        "DCIM/acme.jpg", "DCIM/sub/nikon.jpg", "DCIM2/other.jpg", "Screens/old.png"]
    assert "DCIM/sub/nikon.jpg" not in titles(text_search(engine, taken_to=datetime(2022, 12, 31, 23, 59, 58)))
    assert titles(text_search(engine, taken_from="2022-12-31T23:59:59", taken_to="2023-03-05")) == sorted(
        ["DCIM/sub/nikon.jpg", *CANON])
    # an EXIF date wins over a later modification time: the copies were modified in 2024 but taken in 2023
    later = text_search(engine, taken_from="2024-01-01")
    assert later == [] and "No image of dataset 'case' passes the filters (taken from 2024-01-01 on)" in later.note


def test_the_camera_filter_is_a_part_of_make_or_model_in_any_case(case):
    engine, _ = case
    assert titles(text_search(engine, camera="canon")) == sorted(CANON)
    assert titles(text_search(engine, camera="IPHONE 12")) == ["DCIM/iphone.jpg"]
    assert titles(text_search(engine, camera="apple iphone")) == ["DCIM/iphone.jpg"]  # make and model together
    assert titles(text_search(engine, camera="nikon d750")) == ["DCIM/sub/nikon.jpg"]
    # LIKE's wildcards are matched as they are: 'n_e' would otherwise match 'caNoN Eos', '%' everything
    assert titles(text_search(engine, camera="100%")) == ["DCIM/acme.jpg"]
    assert titles(text_search(engine, camera="%")) == ["DCIM/acme.jpg"]
    assert titles(text_search(engine, camera="m_c")) == ["DCIM/acme.jpg"]
    assert text_search(engine, camera="n_e") == []


def test_the_format_filter_takes_names_and_extensions_in_any_case(case):
    engine, _ = case
    pngs = ["Screens/old.png", "Screens/screen.png"]
    assert titles(text_search(engine, format="png")) == titles(text_search(engine, format=".PNG")) == pngs
    jpegs = titles(text_search(engine, format="jpg"))
    assert jpegs == titles(text_search(engine, format="JPEG")) and len(jpegs) == 7
    nothing = text_search(engine, format="GIF")
    assert nothing == [] and nothing.note == ("No image of dataset 'case' passes the filters (format GIF); widen or "
                                              "remove one.")


def test_filters_combine_and_the_minimum_score_drops_results_below_it(case):
    from image_search import SearchFilter

    engine, folder = case
    assert titles(text_search(engine, folder="DCIM", camera="canon", format="jpeg")) == ["DCIM/canon.jpg"]
    query = folder / "DCIM/canon.jpg"
    close = engine.search_image("case", query, 10, filters=SearchFilter(min_score=0.999))
    assert titles(close) == sorted(CANON) and all(result.score >= 0.999 for result in close)
    everything = engine.search_image("case", query, 10)
    cut = (everything[-2].score + everything[-1].score) / 2
    assert titles(engine.search_image("case", query, 10, filters=SearchFilter(min_score=cut))) == titles(
        everything[:-1])
    none = engine.search_image("case", query, 10, filters=SearchFilter(min_score=1.0, folder="Screens"))
    assert none == [] and "No result scores at least 1" in none.note and "lower the minimum score" in none.note


def test_k_results_that_all_pass_not_the_top_k_filtered_down(engine, evidence):
    from evaluation.sample_images import write_photos
    from image_search import SearchFilter

    write_photos(evidence / "bulk", 40, megapixels=0.01, seed=5)
    engine.ingest(evidence, "case", progress=False)
    query = evidence / "bulk" / "photo_00003.jpg"
    unfiltered = engine.search_image("case", query, 4)
    assert unfiltered[0].path == str(query)  # so the top 4 are not all under DCIM
    for k in (1, 3, 4):
        found = engine.search_image("case", query, k, filters=SearchFilter(folder="DCIM"))
        assert len(found) == k and all(result.title.startswith("DCIM/") for result in found)
        assert found.note is None
    five = engine.search_image("case", query, 5, filters=SearchFilter(folder="DCIM"))
    assert len(five) == 4 and five.note.startswith("Only 4 images of dataset 'case' pass the filters (under DCIM)")
    # a filter used again is answered from the selection cached with the loaded index
    selections = engine.cached_index("case").selections
    assert len(selections._entries) == 1


def test_collapsed_copies_appear_once_with_the_paths_of_the_others(case):
    from image_search import SearchFilter

    engine, folder = case
    query = folder / "DCIM/canon.jpg"
    plain = engine.search_image("case", query, 3)
    assert titles(plain) == sorted(CANON) and all(result.duplicates == () for result in plain)
    collapsed = engine.search_image("case", query, 3, collapse_duplicates=True)
    assert len(collapsed) == 3  # three distinct files, although the three best were one file's copies
    assert len({result.facts.sha256 for result in collapsed}) == 3
    best = collapsed[0]
    assert best.title in CANON and best.to_dict()["duplicate_count"] == 2
    assert sorted(best.duplicates) == sorted(str(folder / name) for name in CANON if name != best.title)
    assert all(result.duplicates == () for result in collapsed[1:])
    # every distinct file when more are asked for than there are: 9 files, 7 distinct
    assert len(engine.search_image("case", query, 20, collapse_duplicates=True)) == len(EVIDENCE)
    # only the copies the filter allows are listed: the others would not have been results either
    inside = engine.search_image("case", query, 2, filters=SearchFilter(folder="DCIM"), collapse_duplicates=True)
    assert inside[0].title == "DCIM/canon.jpg" and inside[0].duplicates == ()
    downloads = engine.search_text("case", "a photo", 5, filters=SearchFilter(folder="Downloads"),
                                   collapse_duplicates=True)
    assert len(downloads) == 1 and len(downloads[0].duplicates) == 1


def test_bad_filter_values_are_refused_when_the_filter_is_made():
    from image_search import Fix, InvalidInputError, SearchFilter

    cases = [({"taken_from": "2023-13-01"}, Fix.FILTER_DATE, "The start date '2023-13-01' is not a date"),
             ({"taken_to": "last week"}, Fix.FILTER_DATE, "The end date 'last week' is not a date"),
             ({"taken_from": 20230301}, Fix.FILTER_DATE, "is not a date"),
             ({"min_score": "high"}, Fix.FILTER_SCORE, "The minimum score 'high' is not a number"),
             ({"min_score": 2}, Fix.FILTER_SCORE, "is not from -1 to 1"),
             ({"min_score": float("nan")}, Fix.FILTER_SCORE, "is not from -1 to 1"),
             ({"min_score": True}, Fix.FILTER_SCORE, "is not a number"),
             ({"taken_from": "2023-04-01", "taken_to": "2023-03-01"}, None, "is after the end date"),
             ({"camera": 5}, None, "The camera filter 5 is not text")]
    for conditions, fix, fragment in cases:
        with pytest.raises(InvalidInputError) as refused:
            SearchFilter(**conditions)
        assert refused.value.fix == fix and fragment in str(refused.value), conditions
    empty = SearchFilter(folder=" ", camera="", format="", taken_from="", min_score="")
    assert empty.is_empty and empty == SearchFilter()
    with_offset = "2023-03-01T14:30:00+02:00"  # in this machine's local time
    assert SearchFilter(taken_from=with_offset).taken_from == \
        datetime.fromisoformat(with_offset).astimezone().replace(tzinfo=None)


# -- the command line ----------------------------------------------------------------------------------------------
def test_the_command_line_flags(evidence, tmp_path):
    env = tool_env(tmp_path / "home", None)
    ingest = run_tool("cli.cli_preprocess", "-i", evidence, "-n", "case", "--no-progress", env=env)
    assert ingest.returncode == 0, ingest.stderr

    def search(*flags):
        return run_tool("cli.cli_search", "-q", "a photo", "-n", "case", "-k", "20", "--no-server", *flags, env=env)

    def found(*flags) -> list[dict]:
        result = search(*flags, "--json")
        assert result.returncode == 0, result.stderr
        return json.loads(result.stdout)

    assert sorted(r["title"] for r in found("--folder", "DCIM", "--camera", "CANON", "--format", "jpg")) == [
        "DCIM/canon.jpg"]
    march = found("--taken-from", "2023-03-01", "--taken-to", "2023-03-31T23:59:59")
    assert {r["title"]: r["date_source"] for r in march}["Screens/screen.png"] == "modified" and len(march) == 5
    collapsed = run_tool("cli.cli_search", "-i", evidence / "DCIM/canon.jpg", "-n", "case", "--no-server",
                         "--min-score", "0.999", "--collapse-duplicates", "--json", env=env)
    [best] = json.loads(collapsed.stdout)
    assert best["duplicate_count"] == 2 and len(best["duplicates"]) == 2

    nothing = search("--format", "GIF")
    assert nothing.returncode == 0 and nothing.stdout.strip() == (
        "No image of dataset 'case' passes the filters (format GIF); widen or remove one.")
    for flags, fragment in [(["--taken-from", "2023-13-01"], "give --taken-from and --taken-to as YYYY-MM-DD"),
                            (["--taken-to", "yesterday"], "The end date 'yesterday' is not a date"),
                            (["--folder", "/etc"], "give --folder a folder inside"),
                            (["--min-score", "high"], "give --min-score a number from -1 to 1")]:
        refused = search(*flags)
        lines = refused.stderr.strip().splitlines()
        assert refused.returncode == 2 and len(lines) == 1 and fragment in lines[0], refused.stderr
        assert lines[0].startswith("error: ") and refused.stdout == ""


# -- the server ----------------------------------------------------------------------------------------------------
def test_the_server_takes_the_filters_as_task_parameters(evidence, tmp_path):
    from tests.test_server import assert_readable_400, start_server, stop_server

    env = tool_env(tmp_path / "home", None)
    server = start_server(env, tmp_path / "server.log")
    try:
        answer = server.run("/dataset_processing", {"input_dir": {"path": str(evidence)}}, {"dataset_name": "case"})
        assert answer.status_code == 200, answer.text

        def search(rule="/search_by_text", query=None, **parameters):
            inputs = query or {"text_query": {"text": "a photo"}}
            return server.run(rule, inputs, {"dataset_name": "case", "num_results": 20, **parameters})

        by_text = search(folder="DCIM", taken_from="2023-03-01", taken_to="2023-03-31", camera="", format="jpeg",
                         min_score="", collapse_duplicates="no")
        assert by_text.status_code == 200, by_text.text
        assert sorted(item["title"] for item in by_text.json()["files"]) == ["DCIM/canon.jpg", "DCIM/iphone.jpg"]
        by_image = search("/search_by_image", {"image_path": {"path": str(evidence / "DCIM/canon.jpg")}},
                          min_score="0.999", collapse_duplicates="yes")
        assert by_image.status_code == 200 and len(by_image.json()["files"]) == 1, by_image.text
        assert by_image.json()["files"][0]["subtitle"].endswith(" · 2 other copies")
        nothing = search(camera="hasselblad").json()
        assert nothing["output_type"] == "text" and nothing["title"] == "No results"
        assert "No image of dataset 'case' passes the filters (camera 'hasselblad')" in nothing["value"]
        for parameters, fragment in [({"taken_from": "2023-13-01"}, "fill 'Taken from' and 'Taken to'"),
                                     ({"folder": "/etc"}, "fill 'Folder' with a folder inside"),
                                     ({"min_score": "high"}, "fill 'Minimum score'"),
                                     ({"collapse_duplicates": "maybe"}, "'Exact copies'"),
                                     ({"camera": 5}, "The camera filter 5 is not text")]:
            assert_readable_400(search(**parameters), fragment)

        # the command line's search goes to this server, filters and all
        answered = run_tool("cli.cli_search", "-q", "a photo", "-n", "case", "-k", "20", "--folder", "Screens",
                            "--json", env=env)
        assert answered.returncode == 0 and "answered by the server" in answered.stderr, answered.stderr
        assert sorted(r["title"] for r in json.loads(answered.stdout)) == ["Screens/old.png", "Screens/screen.png"]
        refused = run_tool("cli.cli_search", "-q", "a photo", "-n", "case", "--taken-from", "soon", env=env)
        assert refused.returncode == 2 and "give --taken-from and --taken-to" in refused.stderr
    finally:
        stop_server(server.process)
