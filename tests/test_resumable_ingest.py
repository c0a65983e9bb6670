"""Resumable ingest: an ingest killed part way (kill -9 of the real command-line tool) leaves checkpoints that the
next run of it takes up, embedding only the rest and ending with the dataset a clean run makes; damaged
checkpoints are redone, unsuitable ones discarded, and searches see the last committed state throughout."""

from __future__ import annotations

import hashlib
import io
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from image_search.config import CheckpointSettings, DatabaseSettings, Settings
from image_search.ingest import embed_locally, ingest_folder
from image_search.ingest.checkpoint import CheckpointOwner, CheckpointWriter, checkpoint_folder, read_saved_work
from image_search.models import shared_models
from image_search.search import search_by_text
from image_search.service import ImageSearch
from image_search.store import ImageRecord
from tests.conftest import REPO, TEST_MODEL, release_code, run_tool

BASE = 24  # photos in the dataset before the interrupted ingest
NEW = 200  # photos that ingest adds
BATCH = 8
EVERY = 16  # images per checkpoint in these tests (the default is 10,000, or a minute)
ROWS_COMMIT = "7821bfd"  # the last release whose checkpoints keep image records as rows (.jsonl)


# -- helpers ---------------------------------------------------------------------------------------------------
def engine_for(env: dict, every: int = EVERY) -> ImageSearch:
    database = None
    if env.get("DB_HOST"):
        database = DatabaseSettings(env["DB_HOST"], int(env["DB_PORT"]), env["DB_USER"], env["DB_PASSWORD"],
                                    env["DB_NAME"])
    return ImageSearch(Settings(Path(env["IMAGE_SEARCH_HOME"]), TEST_MODEL, "cpu", database,
                                checkpoints=CheckpointSettings(images=every)), models=shared_models)


def with_every(engine: ImageSearch, every: int = EVERY) -> ImageSearch:
    return ImageSearch(replace(engine.settings, checkpoints=CheckpointSettings(images=every)), models=shared_models)


def searchable_paths(engine: ImageSearch, name: str) -> set[str]:
    return {r.path for r in search_by_text(engine, name, "anything", 10_000)}


def dataset_vectors(engine: ImageSearch, name: str) -> dict[str, np.ndarray]:
    """Path -> vector of the dataset's committed index, read afresh from disk."""
    fresh = ImageSearch(engine.settings, models=shared_models)
    record = fresh.dataset(name)
    paths = {r.vector_id: r.path for r in fresh.store.image_records(record.id)}
    vectors = {}
    for ids, rows in fresh.index_of(record).index.export():
        for vector_id, row in zip(ids.tolist(), rows):
            vectors[paths[vector_id]] = row
    fresh.close()
    return vectors


def assert_same_dataset(engine: ImageSearch, name: str, clean: dict[str, np.ndarray]) -> None:
    got = dataset_vectors(engine, name)
    assert set(got) == set(clean)
    assert max(float(np.abs(got[path] - clean[path]).max()) for path in clean) <= 1e-6


def clean_vectors(tmp_path: Path, folder: Path) -> dict[str, np.ndarray]:
    """What a clean, uninterrupted ingest of the folder makes (in a data folder of its own)."""
    engine = ImageSearch(Settings(tmp_path / "clean-home", TEST_MODEL, "cpu", None), models=shared_models)
    ingest_folder(engine, folder, "clean", batch_size=BATCH, progress=False)
    vectors = dataset_vectors(engine, "clean")
    engine.close()
    return vectors


def sealed_chunks(folder: Path) -> dict[int, int]:
    """Chunk number -> images, for each chunk whose checksum file is written."""
    chunks = {}
    for seal in folder.glob("*.sum"):
        try:
            chunks[int(seal.stem)] = json.loads(seal.read_text())["images"]
        except (OSError, ValueError):  # being renamed into place this instant
            pass
    return chunks


def photo_folder(tmp_path: Path, count: int, name: str = "photos") -> Path:
    from evaluation.sample_images import write_photos

    folder = tmp_path / name
    write_photos(folder, count, megapixels=0.05, seed=5)
    return folder


def interrupting(after_batches: int):
    """An embedding step that fails after this many batches (an ingest that dies, in-process)."""
    def embed(*args, **kwargs):
        for number, batch in enumerate(embed_locally(*args, **kwargs)):
            if number == after_batches:
                raise RuntimeError("the ingest died here")
            yield batch
    return embed


def interrupt(engine: ImageSearch, folder: Path, name: str, after_batches: int) -> None:
    with pytest.raises(RuntimeError, match="the ingest died here"):
        ingest_folder(engine, folder, name, batch_size=BATCH, progress=False, embed=interrupting(after_batches))


# -- kill -9 of the real tool ----------------------------------------------------------------------------------
def test_kill_9_at_random_points_resumes_to_the_clean_result(cli_env, tmp_path):
    folder = photo_folder(tmp_path, BASE + NEW)
    everything = sorted(folder.iterdir())
    later = tmp_path / "later"
    later.mkdir()
    for photo in everything[BASE:]:  # the previous generation has only the first BASE photos
        photo.rename(later / photo.name)
    engine = engine_for(cli_env)
    ingest_folder(engine, folder, "case", batch_size=BATCH, progress=False)
    previous = searchable_paths(engine, "case")
    for photo in later.iterdir():
        photo.rename(folder / photo.name)
    clean = clean_vectors(tmp_path, folder)
    checkpoints = checkpoint_folder(Path(cli_env["IMAGE_SEARCH_HOME"]), "case")

    slow = {**cli_env, "IMAGE_SEARCH_CHECKPOINT_IMAGES": str(EVERY), "IMAGE_SEARCH_TEST_BATCH_DELAY": "0.1"}
    rng = random.Random(int(os.environ.get("RESUME_TEST_SEED", "17")))  # set it to try other moments
    kept: dict[Path, int] = {}  # checkpoint files of earlier runs -> their inode: a resumed run leaves them be
    for attempt in range(3):
        before = sealed_chunks(checkpoints) if checkpoints.is_dir() else {}
        process = subprocess.Popen([sys.executable, "-m", "cli.cli_preprocess", "-i", str(folder), "-n", "case",
                                    "--no-progress", "--batch-size", str(BATCH)], cwd=REPO, env=slow,
                                   stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        try:
            wanted = len(before) + rng.randint(1, 3)  # then a random moment: mid-batch, mid-write, between
            deadline = time.monotonic() + 180
            while len(sealed_chunks(checkpoints) if checkpoints.is_dir() else {}) < wanted:
                assert process.poll() is None, f"attempt {attempt}: the ingest ended early: {process.stderr.read()}"
                assert time.monotonic() < deadline, f"attempt {attempt}: no checkpoint was written"
                time.sleep(0.02)
            time.sleep(rng.uniform(0.0, 0.25))
            if attempt == 0:  # while it runs, searches see the committed state
                assert searchable_paths(engine_for(cli_env), "case") == previous
        finally:
            process.send_signal(signal.SIGKILL)
            process.wait()
            process.stderr.close()
        assert process.returncode == -signal.SIGKILL, f"attempt {attempt}: it finished before the kill"
        after = sealed_chunks(checkpoints)
        assert set(before) < set(after), f"attempt {attempt}: it saved nothing more"
        for path, inode in kept.items():
            assert path.stat().st_ino == inode, f"attempt {attempt}: {path.name} was written again"
        kept.update({path: path.stat().st_ino for path in checkpoints.glob("*.npy")})
        # killed, before any commit: searches see the previous generation
        assert searchable_paths(engine_for(cli_env), "case") == previous

    saved = sum(sealed_chunks(checkpoints).values())
    assert 0 < saved < NEW
    final = run_tool("cli.cli_preprocess", "-i", folder, "-n", "case", "--no-progress", "--batch-size", BATCH,
                     env=cli_env)
    assert final.returncode == 0, final.stderr
    recovered = re.search(r"Recovered (\d+) images that the interrupted ingest had embedded", final.stdout)
    indexed = re.search(r"Indexed (\d+) images", final.stdout)
    assert recovered and int(recovered.group(1)) == saved, final.stdout
    assert int(indexed.group(1)) == NEW - saved, final.stdout  # only what was not checkpointed was embedded
    assert "reused 24 unchanged" in final.stdout
    assert not checkpoints.exists()  # cleaned once committed
    assert_same_dataset(engine_for(cli_env), "case", clean)


def kill_after_a_checkpoint(folder: Path, name: str, env: dict, code: Path = REPO) -> Path:
    """Run the tool (of `code`: this checkout, or an earlier release's) on folder as dataset `name`, and kill -9 it
    once it has sealed a checkpoint chunk; its checkpoint folder."""
    checkpoints = checkpoint_folder(Path(env["IMAGE_SEARCH_HOME"]), name)
    slow = {**env, "IMAGE_SEARCH_CHECKPOINT_IMAGES": str(EVERY), "IMAGE_SEARCH_TEST_BATCH_DELAY": "0.2",
            "PYTHONPATH": str(code)}
    process = subprocess.Popen([sys.executable, "-m", "cli.cli_preprocess", "-i", str(folder), "-n", name,
                                "--no-progress", "--batch-size", str(BATCH)], cwd=code, env=slow,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 180
        while not (checkpoints.is_dir() and sealed_chunks(checkpoints)):
            assert process.poll() is None and time.monotonic() < deadline
            time.sleep(0.02)
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait()
    return checkpoints


def test_a_new_dataset_killed_part_way_keeps_its_uid_and_resumes(cli_env, tmp_path):
    folder = photo_folder(tmp_path, 64)
    clean = clean_vectors(tmp_path, folder)
    checkpoints = kill_after_a_checkpoint(folder, "fresh", cli_env)
    engine = engine_for(cli_env)
    assert engine.find_dataset("fresh") is None  # nothing committed, nothing to search
    owner = json.loads((checkpoints / "owner.json").read_text())
    saved = sum(sealed_chunks(checkpoints).values())
    report = ingest_folder(engine, folder, "fresh", batch_size=BATCH, progress=False)
    assert report.created and report.recovered_images == saved > 0 and report.indexed == 64 - saved
    assert engine.dataset("fresh").uid == owner["uid"]  # the index folder the checkpoints were made for
    assert_same_dataset(engine, "fresh", clean)


def test_checkpoints_of_the_previous_release_resume_after_the_upgrade(cli_env, tmp_path):
    """An ingest of the release that kept checkpoint records as rows (.jsonl), killed: this version takes its
    checkpoints up, and goes on writing its own beside them."""
    folder = photo_folder(tmp_path, 64)
    clean = clean_vectors(tmp_path, folder)
    checkpoints = kill_after_a_checkpoint(folder, "case", cli_env, release_code(tmp_path / "old-code", ROWS_COMMIT))
    rows = sorted(path.name for path in checkpoints.glob("*.jsonl"))
    assert rows and not list(checkpoints.glob("[0-9]*.json")), "the old release did not write rows"
    saved = sum(sealed_chunks(checkpoints).values())
    engine = engine_for(cli_env)
    interrupt(engine, folder, "case", after_batches=(64 - saved) // BATCH - 2)  # then this version's, killed too
    assert sorted(path.name for path in checkpoints.glob("*.jsonl")) == rows and list(checkpoints.glob("[0-9]*.json"))
    mixed = sum(sealed_chunks(checkpoints).values())
    assert mixed > saved
    report = ingest_folder(engine, folder, "case", batch_size=BATCH, progress=False)
    assert report.recovered_images == mixed and report.indexed == 64 - mixed
    assert_same_dataset(engine, "case", clean)


# -- damaged, unsuitable and discarded checkpoints (in-process: an ingest that dies) ---------------------------
def test_a_truncated_and_a_corrupted_chunk_are_each_redone(engine, tmp_path):
    folder = photo_folder(tmp_path, 80)
    shutil.copy(folder / "photo_00000.jpg", os.path.join(os.fsencode(folder), b"caf\xe9.jpg"))  # not UTF-8
    clean = clean_vectors(tmp_path, folder)
    engine = with_every(engine)
    interrupt(engine, folder, "case", after_batches=8)  # 64 images in 4 chunks
    checkpoints = checkpoint_folder(engine.data_home, "case")
    chunks = sealed_chunks(checkpoints)
    assert chunks == {1: 16, 2: 16, 3: 16, 4: 16}
    vectors = checkpoints / "000002.npy"
    vectors.write_bytes(vectors.read_bytes()[:-100])  # truncated (as a power cut on a lying disk might)
    records = checkpoints / "000003.json"
    damaged = bytearray(records.read_bytes())
    damaged[40] ^= 0x01  # one bit
    records.write_bytes(bytes(damaged))

    assert engine.find_dataset("case") is None  # nothing committed: nothing to search
    report = ingest_folder(engine, folder, "case", batch_size=BATCH, progress=False)
    assert report.recovered_images == 32 and report.indexed == 81 - 32  # only the damaged chunks' part redone
    text = "\n".join(report.lines())
    assert "Checkpoint chunk 2 of 'case' is damaged (its vectors do not match their checksum); its 16 images " \
           "are embedded again." in text
    assert "Checkpoint chunk 3 of 'case' is damaged (its image records do not match their checksum)" in text
    assert "Recovered 32 images" in text
    assert report.to_dict()["recovered_images"] == 32
    assert not checkpoints.exists()
    assert_same_dataset(engine, "case", clean)


def test_unchanged_files_only_are_taken_from_checkpoints(engine, tmp_path):
    folder = photo_folder(tmp_path, 40)
    engine = with_every(engine)
    interrupt(engine, folder, "case", after_batches=4)  # 32 images saved
    saved = json.loads((checkpoint_folder(engine.data_home, "case") / "000001.json").read_text())["path"]
    changed, gone = Path(saved[0]), Path(saved[1])
    shutil.copy(folder / "photo_00039.jpg", changed)  # new content, new size and time
    gone.unlink()
    clean = clean_vectors(tmp_path, folder)
    report = ingest_folder(engine, folder, "case", batch_size=BATCH, progress=False)
    assert report.recovered_images == 30 and report.indexed == 39 - 30
    assert "2 of the images in the checkpoints of 'case' have changed or gone since" in "\n".join(report.lines())
    assert_same_dataset(engine, "case", clean)


def test_checkpoints_of_another_folder_or_dataset_state_are_discarded_with_a_note(engine, tmp_path):
    folder, other = photo_folder(tmp_path, 24), photo_folder(tmp_path, 8, "other")
    engine = with_every(engine)
    interrupt(engine, folder, "case", after_batches=2)
    report = ingest_folder(engine, other, "case", batch_size=BATCH, progress=False)
    assert report.recovered_images == 0 and report.indexed == 8
    assert f"Discarded the checkpoints of an interrupted ingest of 'case': it was reading {folder}." in report.notes

    shutil.copytree(folder, other / "more")  # an update of generation 1 that dies, each time after 16 images
    interrupt(engine, other, "case", after_batches=2)
    record = engine.dataset("case")
    same = dict(model=TEST_MODEL, dim=record.dim, root=record.root)
    for changed, asked, reason in (
            (replace(record, generation=2), same, "the dataset has been changed by another ingest since"),
            (replace(record, uid="another"), same, "it was for an earlier dataset of that name, deleted since"),
            (None, same, "the dataset it was updating has been deleted since"),
            (record, {**same, "model": "other"}, f"it was embedding with model {TEST_MODEL}, not other")):
        saved = read_saved_work(engine.data_home, "case", changed, **asked)
        assert saved.records == [] and saved.notes == [
            f"Discarded the checkpoints of an interrupted ingest of 'case': {reason}."]
        assert not checkpoint_folder(engine.data_home, "case").exists()
        interrupt(engine, other, "case", after_batches=2)  # the same state's checkpoints again
    assert len(read_saved_work(engine.data_home, "case", record, **same).records) == 16
    (checkpoint_folder(engine.data_home, "case") / "owner.json").write_text('{"format": 1, "uid": ')
    assert read_saved_work(engine.data_home, "case", record, **same).notes == [
        "The checkpoints of an interrupted ingest of 'case' could not be read (their owner.json is damaged); "
        "discarded them."]


def test_a_rebuild_discards_checkpoints_and_a_commit_cleans_them(engine, tmp_path):
    folder = photo_folder(tmp_path, 24)
    engine = with_every(engine)
    interrupt(engine, folder, "case", after_batches=2)
    rebuilt = ingest_folder(engine, folder, "case", batch_size=BATCH, progress=False, rebuild=True)
    assert rebuilt.recovered_images == 0 and rebuilt.indexed == 24
    assert "a rebuild embeds everything again" in "\n".join(rebuilt.lines())
    assert not checkpoint_folder(engine.data_home, "case").exists()
    shutil.copytree(folder, folder / "copy")
    interrupt(engine, folder, "case", after_batches=2)
    engine.delete("case")  # deleting the dataset deletes an interrupted update's work too
    assert not checkpoint_folder(engine.data_home, "case").exists()


def test_checkpoints_that_cannot_be_written_never_stop_the_ingest(engine, tmp_path):
    folder = photo_folder(tmp_path, 24)
    blocker = checkpoint_folder(engine.data_home, "case")
    blocker.parent.mkdir(parents=True)
    blocker.write_text("a file where the checkpoint folder goes")  # as a folder that cannot be written
    report = ingest_folder(with_every(engine), folder, "case", batch_size=BATCH, progress=False)
    assert report.total == 24 and report.checkpoints_written == 0
    assert any(note.startswith("Could not save checkpoints in ") and "goes on without them" in note
               for note in report.notes), report.notes


def test_a_checkpoint_every_n_images_or_every_interval(tmp_path):
    """The writer's rule, with a clock the test moves: N images, or the interval with fewer."""
    now = [0.0]
    owner = CheckpointOwner("uid", 0, TEST_MODEL, 4, str(tmp_path))
    folder = checkpoint_folder(tmp_path, "case")

    def batch(first: int, count: int):
        records = [ImageRecord(first + i, f"/p/{first + i}\udce9.jpg", 10, 2**62 + i) for i in range(count)]
        return np.full((count, 4), first, dtype=np.float32), records

    with CheckpointWriter(folder, owner, every_images=10, every_seconds=60, clock=lambda: now[0]) as writer:
        writer.add(*batch(1, 6))
        writer.add(*batch(7, 3))  # 9 < 10, 0 s
        now[0] = 30.0
        writer.add(*batch(10, 2))  # 11 images: a chunk
        now[0] = 89.0
        writer.add(*batch(12, 1))  # 59 s since: none yet
        now[0] = 91.0
        writer.add(*batch(13, 1))  # 61 s: a chunk of 2
        writer.add(*batch(14, 1))  # left for the end
    assert sealed_chunks(folder) == {1: 11, 2: 2, 3: 1}  # not 9 + 2, not 11 + 1 + 1 + 1
    saved = read_saved_work(tmp_path, "case", None, model=TEST_MODEL, dim=4, root=str(tmp_path))
    assert [r.vector_id for r in saved.records] == list(range(1, 15)) and saved.highest_id == 14
    assert saved.records[2] == ImageRecord(3, "/p/3\udce9.jpg", 10, 2**62 + 2)  # surrogate escapes, big numbers
    assert saved.vectors[13].tolist() == [14.0] * 4
    written = io.BytesIO()
    np.save(written, np.repeat(np.array([1, 7, 10], dtype=np.float32), [6, 3, 2])[:, None].repeat(4, axis=1))
    assert (folder / "000001.npy").read_bytes() == written.getvalue()  # numpy's own format, byte for byte


def test_the_app_says_how_many_images_were_recovered(sqlite_engine, tmp_path):
    from server.server import create_server

    folder = photo_folder(tmp_path, 24)
    interrupt(with_every(sqlite_engine), folder, "case", after_batches=2)
    client = create_server(with_every(sqlite_engine)).app.test_client()
    response = client.post("/dataset_processing", json={"inputs": {"input_dir": {"path": str(folder)}},
                                                        "parameters": {"dataset_name": "case"}})
    assert response.status_code == 200, response.get_json()
    assert "Recovered 16 images that the interrupted ingest had embedded" in response.get_json()["value"]


def test_the_checkpoint_setting_is_read_and_checked(monkeypatch):
    from image_search.config import CHECKPOINT_IMAGES, load_settings
    from image_search.errors import InvalidInputError

    monkeypatch.delenv("IMAGE_SEARCH_CHECKPOINT_IMAGES", raising=False)
    assert load_settings().checkpoints == CheckpointSettings(images=CHECKPOINT_IMAGES, seconds=60.0)
    monkeypatch.setenv("IMAGE_SEARCH_CHECKPOINT_IMAGES", "500")
    assert load_settings().checkpoints.images == 500
    monkeypatch.setenv("IMAGE_SEARCH_CHECKPOINT_IMAGES", "0")
    with pytest.raises(InvalidInputError, match="IMAGE_SEARCH_CHECKPOINT_IMAGES=0 is not valid"):
        load_settings()


def test_the_benchmark_measures_checkpoints_on_and_off(tmp_path):
    """A smoke run only: the cost itself is measured by the benchmark on a quiet machine."""
    output = tmp_path / "cost.json"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DB_", "IMAGE_SEARCH_"))}
    env.update(PYTHONPATH=str(REPO), HF_HUB_OFFLINE="1", XDG_CACHE_HOME=str(tmp_path / "cache"))
    done = run_tool("evaluation.benchmark_ingest", "--checkpoint-cost", "--count", 6, "--sizes", "0.05", "--model",
                    "test-tiny", "--device", "cpu", "--batch-size", 2, "--checkpoint-images", 2, "--repeat", 2,
                    "--corpus", tmp_path / "corpus", "--json", output, env=env)
    assert done.returncode == 0, done.stderr
    (row,) = json.loads(output.read_text())["results"]
    assert row["images"] == 6 and row["checkpoints_written"] == 3 and row["checkpoint_seconds"] > 0
    assert row["off_images_per_second"] > 0 and row["on_images_per_second"] > 0
    assert len(row["off_seconds"]) == len(row["on_seconds"]) == 2  # every run is listed
    assert row["on_images_per_second"] == pytest.approx(6 / min(row["on_seconds"]), rel=0.01)  # the best of them
    assert "without checkpoints" in done.stdout


def test_what_was_captured_about_each_file_survives_the_checkpoints(engine, tmp_path):
    """Every field of ImageRecord goes through a checkpoint, the facts of issue 13 (ImageFacts) too."""
    from image_search.store import ImageFacts

    def facts_of(path: str) -> ImageFacts:
        data = Path(path).read_bytes()
        return ImageFacts(sha256=hashlib.sha256(data).hexdigest(), md5=hashlib.md5(data).hexdigest(), width=len(data),
                          height=7, format="JPEG", taken_at="2024-05-01T10:00:00", taken_offset="+02:00",
                          camera_make="Canon", camera_model="EOS \u00e9", lens=None, gps_lat=-33.856784,
                          gps_lon=151.215297, orientation=6)

    def capturing(after_batches: int | None):
        """The local embedding step, with the facts a capturing reader would attach to each batch."""
        def embed(embedder, paths, **kwargs):
            for number, batch in enumerate(embed_locally(embedder, paths, **kwargs)):
                if number == after_batches:
                    raise RuntimeError("the ingest died here")
                batch.facts = [facts_of(paths[position]) for position in batch.positions]
                yield batch
        return embed

    folder = photo_folder(tmp_path, 24)
    engine = with_every(engine)
    with pytest.raises(RuntimeError):
        ingest_folder(engine, folder, "case", batch_size=BATCH, progress=False, embed=capturing(2))
    report = ingest_folder(engine, folder, "case", batch_size=BATCH, progress=False, embed=capturing(None))
    assert report.recovered_images == 16
    record = engine.dataset("case")
    ids = [r.vector_id for r in engine.store.image_records(record.id)]
    found, _ = engine.store.lookup_images(record.id, ids)
    assert len(found) == 24
    for image in found.values():
        assert image.facts == facts_of(image.path), image.path


def test_intact_records_in_a_form_this_version_cannot_read_are_redone(tmp_path):
    """A chunk whose checksums match but whose columns do not fit its image count (or lack a nested field's
    flags) is dropped with a note, never misread."""
    owner = CheckpointOwner("uid", 0, TEST_MODEL, 4, str(tmp_path))
    folder = checkpoint_folder(tmp_path, "case")
    records = [ImageRecord(i, f"/p/{i}.jpg", 10, 20) for i in range(1, 4)]
    with CheckpointWriter(folder, owner, every_images=3, every_seconds=60) as writer:
        writer.add(np.ones((3, 4), dtype=np.float32), records)
        writer.add(np.ones((3, 4), dtype=np.float32), [replace(r, vector_id=r.vector_id + 3) for r in records])
    for number, change in ((1, lambda columns: columns["path"].pop()),
                           (2, lambda columns: columns["facts"].pop("present"))):
        path = folder / f"{number:06d}.json"
        columns = json.loads(path.read_text())
        change(columns)
        path.write_text(json.dumps(columns))
        seal = json.loads((folder / f"{number:06d}.sum").read_text())
        seal["json_sha256"] = hashlib.sha256(path.read_bytes()).hexdigest()
        (folder / f"{number:06d}.sum").write_text(json.dumps(seal))
    saved = read_saved_work(tmp_path, "case", None, model=TEST_MODEL, dim=4, root=str(tmp_path))
    assert saved.records == []
    assert saved.notes == [
        "Checkpoint chunk 1 of 'case' is damaged (it was written in another form: 2 values of path for 3 images); "
        "its 3 images are embedded again.",
        "Checkpoint chunk 2 of 'case' is damaged (it was written in another form: 'present'); its 3 images are "
        "embedded again."]
