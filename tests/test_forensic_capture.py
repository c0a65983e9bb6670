"""What an ingest captures about each image (hashes, pixels, format, EXIF) and what a search result carries of it.

The pictures are made here with Pillow, with EXIF written field by field, so every value a result shows is known
exactly. A dataset built by the code before schema version 3 (today's main, commit MAIN_COMMIT, run as it was)
gains the facts on its next ingest without embedding anything again; that is tested on both stores.
"""

from __future__ import annotations

import builtins
import hashlib
import io
import json
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from image_search import ImageFacts
from image_search.ingest import ingest_folder
from image_search.pipeline.batches import embed_files
from image_search.pipeline.cpu_reader import _FileDataset
from image_search.pipeline.facts import facts_from_bytes
from image_search.search import search_by_image
from image_search.store import open_store, schema
from tests.conftest import TEST_MODEL, ingest_with_release, release_code, run_tool, tool_env
from tests.test_store_migrations import make_place, new_engine  # noqa: F401 - make_place is a fixture

MAIN_COMMIT = "28ccfca"  # the last commit before schema version 3: what users' datasets were built with

MTIME = 1_650_000_000  # 2022-04-15 05:20:00 UTC: the modification time of the picture without an EXIF date


# -- pictures with known EXIF ---------------------------------------------------------------------------------------
def exif_of(*, make=None, model=None, orientation=None, taken=None, offset=None, lens=None, gps=None) -> Image.Exif:
    exif = Image.Exif()
    if make is not None:
        exif[0x010F] = make
    if model is not None:
        exif[0x0110] = model
    if orientation is not None:
        exif[0x0112] = orientation
    details = exif.get_ifd(0x8769)
    if taken is not None:
        details[0x9003] = taken
    if offset is not None:
        details[0x9011] = offset
    if lens is not None:
        details[0xA434] = lens
    if gps is not None:
        position = exif.get_ifd(0x8825)
        (lat_ref, lat), (lon_ref, lon) = gps
        position[1], position[2], position[3], position[4] = lat_ref, lat, lon_ref, lon
    return exif


def picture(seed: int, size=(96, 64)) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))


# what the pictures below must give, field by field
EXPECTED = {
    "canon.jpg": dict(format="JPEG", width=96, height=64, taken_at="2023-03-14T15:09:26", taken_offset="+02:00",
                      camera_make="Canon", camera_model="Canon EOS 5D Mark IV", lens="EF24-70mm f/2.8L II USM",
                      gps_lat=-33.865, gps_lon=-151.21, orientation=1),
    "phone.jpg": dict(format="JPEG", width=80, height=60, taken_at="2021-12-31T23:59:59", taken_offset=None,
                      camera_make="Apple", camera_model="iPhone 12", lens=None, gps_lat=48.858222,
                      gps_lon=2.2945, orientation=6),
    "plain.png": dict(format="PNG", width=50, height=40, taken_at=None, taken_offset=None, camera_make=None,
                      camera_model=None, lens=None, gps_lat=None, gps_lon=None, orientation=None),
}


def write_pictures(folder: Path) -> dict[str, Path]:
    """Three pictures: a camera JPEG with full EXIF (south and west), a phone JPEG turned by orientation 6 (north
    and east), a PNG without EXIF whose modification time is MTIME."""
    folder.mkdir(parents=True, exist_ok=True)
    picture(1).save(folder / "canon.jpg", quality=90, exif=exif_of(
        make="Canon", model="Canon EOS 5D Mark IV", orientation=1, taken="2023:03:14 15:09:26", offset="+02:00",
        lens="EF24-70mm f/2.8L II USM", gps=(("S", (33.0, 51.0, 54.0)), ("W", (151.0, 12.0, 36.0)))))
    picture(2, (80, 60)).save(folder / "phone.jpg", quality=90, exif=exif_of(
        make="Apple", model="iPhone 12", orientation=6, taken="2021:12:31 23:59:59",
        gps=(("N", (48.0, 51.0, 29.6)), ("E", (2.0, 17.0, 40.2)))))
    picture(3, (50, 40)).save(folder / "plain.png")
    os.utime(folder / "plain.png", (MTIME, MTIME))
    return {name: folder / name for name in EXPECTED}


def expected_facts(path: Path) -> ImageFacts:
    data = path.read_bytes()
    return ImageFacts(sha256=hashlib.sha256(data).hexdigest(), md5=hashlib.md5(data).hexdigest(),
                      **EXPECTED[path.name])


def assert_facts(facts: ImageFacts | None, path: Path) -> None:
    assert facts is not None, path.name
    want = expected_facts(path)
    for name in ("gps_lat", "gps_lon"):
        assert getattr(facts, name) == pytest.approx(getattr(want, name), abs=1e-6), (path.name, name)
    assert {**facts.__dict__, "gps_lat": None, "gps_lon": None} == {**want.__dict__, "gps_lat": None,
                                                                     "gps_lon": None}, path.name


# -- the facts of one file ------------------------------------------------------------------------------------------
def test_facts_from_bytes_gives_every_field_exactly(tmp_path):
    for name, path in write_pictures(tmp_path).items():
        assert_facts(facts_from_bytes(path.read_bytes()), path)
        with Image.open(path) as opened:  # the reader passes the image it opened: the same facts
            assert_facts(facts_from_bytes(path.read_bytes(), opened), path)


def garbage_exif_jpeg(payload: bytes) -> bytes:
    """A valid little JPEG whose APP1 segment says 'Exif' and then holds `payload`."""
    buffer = io.BytesIO()
    picture(9, (32, 24)).save(buffer, "JPEG")
    data = buffer.getvalue()
    segment = b"Exif\x00\x00" + payload
    return data[:2] + b"\xff\xe1" + (len(segment) + 2).to_bytes(2, "big") + segment + data[2:]


def test_missing_or_malformed_exif_is_never_an_error(tmp_path, sqlite_engine):
    folder = tmp_path / "garbage"
    folder.mkdir()
    rng = np.random.default_rng(0)
    payloads = {
        "random.jpg": rng.integers(0, 256, 300, dtype=np.uint8).tobytes(),
        "bad_offset.jpg": b"II*\x00\xff\xff\xff\x7f",  # the first IFD far past the end
        "truncated_ifd.jpg": b"MM\x00*\x00\x00\x00\x08\x00\x05\x01\x0f\x00\x02",
        "empty.jpg": b"",
    }
    for name, payload in payloads.items():
        (folder / name).write_bytes(garbage_exif_jpeg(payload))
    nonsense = exif_of(make="\x00\x00", model="X" * 5000, orientation=42, taken="0000:00:00 00:00:00",
                       offset="+99:99", gps=(("S", (91.0, 0.0, 0.0)), ("W", (1.0, 2.0, 3.0))))
    picture(4, (40, 30)).save(folder / "nonsense.jpg", exif=nonsense)
    from PIL.TiffImagePlugin import IFDRational

    zero_gps = exif_of(taken="2020:02:30 10:00:00",  # no 30 February; a longitude of 1/0 degrees
                       gps=(("N", (1.0, 0.0, 0.0)), ("E", (IFDRational(1, 0), 0.0, 0.0))))
    picture(5, (40, 30)).save(folder / "impossible.jpg", exif=zero_gps)

    for path in sorted(folder.iterdir()):
        data = path.read_bytes()
        facts = facts_from_bytes(data)
        assert facts.sha256 == hashlib.sha256(data).hexdigest() and facts.format == "JPEG", path.name
        assert (facts.taken_at, facts.taken_offset, facts.gps_lat, facts.gps_lon) == (None,) * 4, path.name
        assert facts.orientation in (None, 1), path.name
    nonsense_facts = facts_from_bytes((folder / "nonsense.jpg").read_bytes())
    assert nonsense_facts.camera_make is None and len(nonsense_facts.camera_model) == 200
    assert facts_from_bytes(b"not an image at all").sha256 == hashlib.sha256(b"not an image at all").hexdigest()

    report = ingest_folder(sqlite_engine, folder, "garbage-exif", progress=False)
    assert report.indexed == len(payloads) + 2 and report.skipped == []


def test_the_reader_reads_each_file_once_and_records_its_facts(tmp_path, monkeypatch):
    """On the CPU path and on the path that leaves JPEGs for the GPU: one open() per file, facts from those bytes."""
    from image_search.models import load_model

    paths = write_pictures(tmp_path / "pictures")
    embedder = load_model(TEST_MODEL, "cpu")
    opened = []
    real_open, real_os_open = builtins.open, os.open

    def counting_open(file, *args, **kwargs):
        opened.append(os.fspath(file))
        return real_open(file, *args, **kwargs)

    def counting_os_open(file, *args, **kwargs):  # the readers open files through safe_open's os.open
        opened.append(os.fspath(file))
        return real_os_open(file, *args, **kwargs)

    wanted = sorted(str(p) for p in paths.values())
    for encoded_jpegs in (False, True):
        dataset = _FileDataset([str(p) for p in paths.values()], embedder.geometry, embedder.input_size,
                               encoded_jpegs=encoded_jpegs)
        monkeypatch.setattr(builtins, "open", counting_open)
        monkeypatch.setattr(os, "open", counting_os_open)
        items = [dataset[i] for i in range(len(paths))]
        monkeypatch.setattr(builtins, "open", real_open)
        monkeypatch.setattr(os, "open", real_os_open)
        assert sorted(path for path in opened if path in wanted) == wanted, (encoded_jpegs, opened)
        opened.clear()
        for (position, status, payload), path in zip(items, paths.values()):
            facts = payload.facts if status == "encoded" else payload[1]
            assert_facts(facts, path)
        assert [status for _, status, _ in items] == (["encoded", "encoded", "ok"] if encoded_jpegs else ["ok"] * 3)


@pytest.mark.parametrize("decode_on_device", [False, True], ids=["cpu-decode", "device-decode"])
def test_embedded_batches_carry_the_facts_aligned_with_positions(tmp_path, decode_on_device):
    """Through the reader processes, the joining of batches and (device-decode) the GPU decoder's path, here with
    the model's device the CPU, which decodes with the same code."""
    from image_search.models import load_model

    paths = list(write_pictures(tmp_path / "pictures").values())
    (tmp_path / "pictures" / "broken.jpg").write_bytes(b"\xff\xd8\xff broken")
    files = [str(p) for p in paths] + [str(tmp_path / "pictures" / "broken.jpg")] + [str(p) for p in paths]
    embedder = load_model(TEST_MODEL, "cpu")
    batches = list(embed_files(embedder, files, batch_size=2, workers=2, decode_on_device=decode_on_device))
    seen = {}
    for batch in batches:
        assert len(batch.facts) == len(batch.positions) == len(batch.vectors)
        seen.update(zip(batch.positions, batch.facts))
    assert sorted(seen) == [0, 1, 2, 4, 5, 6]
    for position, facts in seen.items():
        assert_facts(facts, Path(files[position]))


def test_capture_can_be_turned_off_for_measuring(tmp_path, monkeypatch):
    from image_search.models import load_model

    paths = [str(p) for p in write_pictures(tmp_path / "pictures").values()]
    monkeypatch.setenv("IMAGE_SEARCH_CAPTURE_FACTS", "0")
    batches = list(embed_files(load_model(TEST_MODEL, "cpu"), paths, workers=0))
    assert [f for batch in batches for f in batch.facts] == [None, None, None]


# -- end to end: ingest, then search ------------------------------------------------------------------------------
def check_results(results, paths: dict[str, Path]) -> None:
    by_name = {Path(r.path).name: r for r in results}
    assert set(by_name) == set(paths)
    for name, path in paths.items():
        result = by_name[name]
        assert_facts(result.facts, path)
        assert result.size == path.stat().st_size and result.mtime_ns == path.stat().st_mtime_ns
        row = result.to_dict()
        want = expected_facts(path)
        assert row["sha256"] == want.sha256 and row["md5"] == want.md5 and row["size"] == path.stat().st_size
        assert (row["width"], row["height"], row["format"]) == (want.width, want.height, want.format)
        assert row["lens"] == want.lens and row["orientation"] == want.orientation
        assert row["duplicates"] == [] and row["duplicate_count"] == 0
    canon, phone, plain = (by_name[n].to_dict() for n in ("canon.jpg", "phone.jpg", "plain.png"))
    assert (canon["date_taken"], canon["date_source"]) == ("2023-03-14T15:09:26", "exif")
    assert canon["camera"] == "Canon EOS 5D Mark IV"  # the make once, though the model repeats it
    assert canon["gps"] == {"lat": pytest.approx(-33.865), "lon": pytest.approx(-151.21)}
    assert phone["camera"] == "Apple iPhone 12" and phone["date_taken"] == "2021-12-31T23:59:59"
    assert phone["gps"] == {"lat": pytest.approx(48.858222, abs=1e-6), "lon": pytest.approx(2.2945, abs=1e-6)}
    from datetime import datetime

    assert plain["date_source"] == "modified" and plain["camera"] is None and plain["gps"] is None
    assert plain["date_taken"] == datetime.fromtimestamp(MTIME).isoformat(timespec="seconds")


def test_search_results_carry_what_the_ingest_captured(engine, tmp_path):
    paths = write_pictures(tmp_path / "pictures")
    report = ingest_folder(engine, tmp_path / "pictures", "facts-e2e", progress=False)
    assert report.indexed == 3 and report.facts_updated == 0
    results = search_by_image(engine, "facts-e2e", paths["canon.jpg"], 3)
    assert Path(results[0].path).name == "canon.jpg"
    check_results(results, paths)
    again = ingest_folder(engine, tmp_path / "pictures", "facts-e2e", progress=False)
    assert again.facts_updated == 0 and not again.changed  # captured once: nothing to fill in


# -- a dataset built before schema 3 --------------------------------------------------------------------------------
@pytest.fixture(scope="session")
def main_release(tmp_path_factory) -> Path:
    """The image_search and cli folders of MAIN_COMMIT, the code that built users' datasets before schema 3."""
    return release_code(tmp_path_factory.mktemp(f"release-{MAIN_COMMIT}"), MAIN_COMMIT)


def ingest_with_main(main_release: Path, folder: Path, name: str, home: Path, database) -> None:
    ingest_with_release(main_release, folder, name, tool_env(home, database), "--no-progress")


def stored_facts(engine, name: str) -> dict[str, tuple]:
    """Each image's name -> (sha256, md5, width, camera_model) as the images table holds them."""
    record = engine.dataset(name)
    with engine.store._cursor() as cursor:
        engine.store._execute(cursor, "SELECT path, sha256, md5, width, camera_model FROM images "
                                      "WHERE dataset_id = ?", (record.id,))
        return {os.path.basename(os.fsdecode(bytes(row[0]))): tuple(row[1:]) for row in cursor.fetchall()}


@pytest.fixture
def old_store(make_place, main_release):
    """ingest(folder, name): the folder ingested by MAIN_COMMIT's tool into a store of its own (schema 2), then
    (engine, data_home) of today's code on that store."""
    place = make_place()
    engines = []

    def ingest(folder: Path, name: str):
        ingest_with_main(main_release, folder, name, *place)
        untouched = open_store(place[1], place[0])  # not opened for use: not migrated
        with untouched._cursor() as cursor:
            assert schema.stored_version(untouched, cursor) == 2  # written by the code before schema 3
        untouched.close()
        engines.append(new_engine(place))
        return engines[-1], place[0]

    yield ingest
    for engine in engines:
        engine.close()


def test_a_dataset_built_before_schema_3_gains_its_facts_on_the_next_ingest(old_store, tmp_path):
    folder = Path(os.path.realpath(tmp_path)) / "case"
    paths = write_pictures(folder)
    engine, data_home = old_store(folder, "old-facts")
    record = engine.dataset("old-facts")  # opening the store migrates it to schema 3
    with engine.store._cursor() as cursor:
        assert schema.stored_version(engine.store, cursor) == schema.latest_version() == 3
    assert set(stored_facts(engine, "old-facts").values()) == {(None, None, None, None)}
    old_results = search_by_image(engine, "old-facts", paths["canon.jpg"], 3)
    assert all(r.facts is None and r.to_dict()["sha256"] is None for r in old_results)
    assert {r.to_dict()["date_source"] for r in old_results} == {"modified"}  # still dated by the file
    index_files = sorted((data_home / "indexes" / record.uid).iterdir())

    report = ingest_folder(engine, folder, "old-facts", progress=False)
    assert (report.reused, report.indexed, report.removed, report.facts_updated) == (3, 0, 0, 3)
    assert report.changed and report.to_dict()["facts_updated"] == 3
    assert any("hashes and EXIF of 3 unchanged images" in line for line in report.lines())
    # nothing was embedded again: the same generation and the very same index file
    assert engine.dataset("old-facts").generation == record.generation
    assert sorted((data_home / "indexes" / record.uid).iterdir()) == index_files
    check_results(search_by_image(engine, "old-facts", paths["canon.jpg"], 3), paths)

    again = ingest_folder(engine, folder, "old-facts", progress=False)
    assert again.facts_updated == 0 and not again.changed


def test_facts_are_filled_in_the_same_commit_as_new_images(old_store, tmp_path):
    folder = Path(os.path.realpath(tmp_path)) / "case"
    paths = write_pictures(folder)
    engine, _ = old_store(folder, "old-mixed")
    generation = engine.dataset("old-mixed").generation
    picture(8).save(folder / "added.jpg", exif=exif_of(make="Nikon", model="D850"))
    os.remove(folder / "plain.png")

    report = ingest_folder(engine, folder, "old-mixed", progress=False)
    assert (report.reused, report.indexed, report.removed, report.facts_updated) == (2, 1, 1, 2)
    assert engine.dataset("old-mixed").generation == generation + 1  # one commit for all of it
    stored = stored_facts(engine, "old-mixed")
    assert set(stored) == {"canon.jpg", "phone.jpg", "added.jpg"}
    assert stored["added.jpg"][3] == "D850"
    for name in ("canon.jpg", "phone.jpg"):
        want = expected_facts(paths[name])
        assert stored[name] == (want.sha256, want.md5, want.width, want.camera_model)


def test_images_ingested_without_capture_get_their_facts_next_time(engine, tmp_path, monkeypatch):
    paths = write_pictures(tmp_path / "pictures")
    monkeypatch.setenv("IMAGE_SEARCH_CAPTURE_FACTS", "0")
    first = ingest_folder(engine, tmp_path / "pictures", "capture-off", progress=False)
    assert first.indexed == 3 and set(stored_facts(engine, "capture-off").values()) == {(None,) * 4}
    skipped = ingest_folder(engine, tmp_path / "pictures", "capture-off", progress=False)
    assert skipped.facts_updated == 0 and not skipped.changed  # capture off: nothing read
    monkeypatch.delenv("IMAGE_SEARCH_CAPTURE_FACTS")
    second = ingest_folder(engine, tmp_path / "pictures", "capture-off", progress=False)
    assert second.facts_updated == 3 and second.indexed == 0
    check_results(search_by_image(engine, "capture-off", paths["phone.jpg"], 3), paths)


# -- the faces: command line and server -----------------------------------------------------------------------------
def test_cli_search_shows_the_metadata(cli_env, tmp_path):
    paths = write_pictures(tmp_path / "pictures")
    done = run_tool("cli.cli_preprocess", "-i", tmp_path / "pictures", "-n", "cli-facts", "--no-progress",
                    env=cli_env)
    assert done.returncode == 0, done.stderr
    as_json = run_tool("cli.cli_search", "-i", paths["canon.jpg"], "-n", "cli-facts", "-k", "3", "--json",
                       "--no-server", env=cli_env)
    assert as_json.returncode == 0, as_json.stderr
    rows = json.loads(as_json.stdout)
    assert list(rows[0]) == ["path", "title", "score", "sha256", "md5", "size", "width", "height", "format",
                             "date_taken", "date_source", "camera", "lens", "gps", "orientation", "duplicates",
                             "duplicate_count"]
    assert rows[0]["path"] == str(paths["canon.jpg"]) and rows[0]["sha256"] == expected_facts(paths["canon.jpg"]).sha256
    assert rows[0]["gps"] == {"lat": pytest.approx(-33.865), "lon": pytest.approx(-151.21)}

    table = run_tool("cli.cli_search", "-i", paths["canon.jpg"], "-n", "cli-facts", "-k", "3", "--no-server",
                     env=cli_env)
    assert table.returncode == 0, table.stderr
    lines = table.stdout.splitlines()
    assert lines[0].split() == ["#", "score", "date", "camera", "path"]
    canon = next(line for line in lines if line.endswith("canon.jpg"))
    assert "2023-03-14 15:09" in canon and "Canon EOS 5D Mark IV" in canon
    plain = next(line for line in lines if line.endswith("plain.png"))
    from datetime import datetime

    assert datetime.fromtimestamp(MTIME).strftime("%Y-%m-%d %H:%M") + "*" in plain  # * : the file's date
    assert any("modification time" in line for line in lines[len(rows) + 1:])


def test_the_server_shows_score_date_and_camera_in_its_result_subtitles(sqlite_engine, tmp_path):
    from datetime import datetime

    from server.server import image_grid

    paths = write_pictures(tmp_path / "pictures")
    ingest_folder(sqlite_engine, tmp_path / "pictures", "server-facts", progress=False)
    results = search_by_image(sqlite_engine, "server-facts", paths["canon.jpg"], 3)
    subtitles = {Path(item.path).name: item.subtitle for item in image_grid(results).root.files}
    score = {Path(r.path).name: f"score {r.score:.4f}" for r in results}
    assert subtitles["canon.jpg"] == f"{score['canon.jpg']} · taken 2023-03-14 15:09 · Canon EOS 5D Mark IV"
    assert subtitles["phone.jpg"] == f"{score['phone.jpg']} · taken 2021-12-31 23:59 · Apple iPhone 12"
    modified = datetime.fromtimestamp(MTIME).strftime("%Y-%m-%d %H:%M")
    assert subtitles["plain.png"] == f"{score['plain.png']} · modified {modified}"
