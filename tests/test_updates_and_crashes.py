"""Incremental re-ingest, crash safety (real kill -9), locking between processes, and a database that is down."""

from __future__ import annotations

import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from PIL import Image

from image_search.config import Settings
from image_search.service import ImageSearch
from image_search.errors import DatasetBusyError, IndexCorruptError, InvalidInputError, ModelMismatchError
from image_search.ingest import ingest_folder
from image_search.search import search_by_text
from tests.conftest import REPO, TEST_MODEL, assert_spelled_by_each_face, run_tool


def dataset_paths(engine: ImageSearch, name: str) -> set[str]:
    return {r.path for r in search_by_text(engine, name, "anything", 10_000)}


@pytest.fixture
def case_folder(tmp_path, photos) -> Path:
    folder = tmp_path / "case"
    folder.mkdir()
    for photo in sorted(photos.iterdir())[:6]:
        shutil.copy(photo, folder / photo.name)
    return folder


def evolve(folder: Path, photos: Path) -> None:
    """New evidence arrives, one file is removed, one is replaced by a different picture."""
    extra = sorted(photos.iterdir())[6:9]
    for photo in extra:
        shutil.copy(photo, folder / photo.name)
    (folder / "photo_00000.jpg").unlink()
    changed = folder / "photo_00001.jpg"
    Image.open(extra[0]).rotate(90).save(changed)
    later = time.time() + 5
    os.utime(changed, (later, later))


def test_reingest_is_incremental(engine, case_folder, photos):
    first = ingest_folder(engine, case_folder, "case", progress=False)
    before = {r.path: r.vector_id for r in engine.store.image_records(engine.dataset("case").id)}
    evolve(case_folder, photos)
    second = ingest_folder(engine, case_folder, "case", progress=False)
    assert (first.indexed, first.total) == (6, 6)
    assert second.indexed == 4  # 3 new + 1 changed
    assert second.reused == 4  # the 4 untouched files were not embedded again
    assert second.removed == 2  # the deleted file and the old version of the changed one
    assert second.total == 8 and engine.dataset("case").image_count == 8
    after = {r.path: r.vector_id for r in engine.store.image_records(engine.dataset("case").id)}
    for name in ["photo_00002.jpg", "photo_00003.jpg", "photo_00004.jpg", "photo_00005.jpg"]:
        path = str(case_folder / name)
        assert after[path] == before[path]  # same vector: reused, not re-embedded
    assert after[str(case_folder / "photo_00001.jpg")] != before[str(case_folder / "photo_00001.jpg")]
    assert dataset_paths(engine, "case") == {str(p) for p in case_folder.iterdir()}
    assert "reused 4 unchanged; removed 2" in "\n".join(second.lines())


def test_an_ingest_reads_the_dataset_row_once(engine, case_folder, photos, monkeypatch):
    ingest_folder(engine, case_folder, "case", progress=False)
    statements = []
    execute = engine.store._execute
    monkeypatch.setattr(engine.store, "_execute", lambda cursor, statement, params=(): statements.append(statement)
                        or execute(cursor, statement, params))

    def row_reads() -> int:
        return sum("FROM datasets WHERE name = ?" in statement for statement in statements)

    ingest_folder(engine, case_folder, "case", progress=False)  # unchanged: nothing to commit
    assert row_reads() == 1  # the plan's (it was two, the load of the working index read it again)
    statements.clear()
    evolve(case_folder, photos)
    ingest_folder(engine, case_folder, "case", progress=False)
    assert row_reads() == 2  # the plan's, and the store's own when its commit returns the new record


def test_rebuild_and_refusals(engine, case_folder, tmp_path, photos):
    ingest_folder(engine, case_folder, "case", progress=False)
    rebuilt = ingest_folder(engine, case_folder, "case", progress=False, rebuild=True)
    assert rebuilt.indexed == 6 and rebuilt.reused == 0 and rebuilt.total == 6
    assert len(engine.store.image_records(engine.dataset("case").id)) == 6
    other = tmp_path / "other"
    other.mkdir()
    shutil.copy(sorted(photos.iterdir())[9], other / "x.jpg")
    with pytest.raises(InvalidInputError, match="was built from .*rebuild=True") as other_folder:
        ingest_folder(engine, other, "case", progress=False)
    assert_spelled_by_each_face(other_folder.value, "use --rebuild to replace it with this folder",
                                "delete that dataset first")
    with pytest.raises(ModelMismatchError, match="rebuild=True") as other_model:
        ingest_folder(engine, case_folder, "case", progress=False, model_name="ViT-B-32:random")
    assert_spelled_by_each_face(other_model.value, "use --rebuild to re-embed it with the new model, or leave out "
                                "--model.", "delete the dataset and ingest its folder again")
    assert engine.dataset("case").image_count == 6  # refusals changed nothing
    replaced = ingest_folder(engine, other, "case", progress=False, rebuild=True)
    assert replaced.total == 1 and dataset_paths(engine, "case") == {str(other / "x.jpg")}


def test_index_and_metadata_disagreeing_is_reported_with_the_repair_command(engine, case_folder):
    import faiss

    ingest_folder(engine, case_folder, "case", progress=False)
    record = engine.dataset("case")
    index_path = engine.data_home / "indexes" / record.uid / f"{record.generation:010d}.faiss"
    damaged = faiss.read_index(str(index_path))
    damaged.remove_ids(faiss.IDSelectorRange(1, 3))
    faiss.write_index(damaged, str(index_path))
    index_path.with_name(f"{record.generation:010d}.seal.json").unlink()  # as a file from before seals
    fresh = ImageSearch(engine.settings)
    repair = f"repair it with: python -m cli.cli_preprocess -i '{record.root}' -n case --rebuild"
    with pytest.raises(IndexCorruptError, match="does not match its metadata .*rebuild=True") as mismatch:
        search_by_text(fresh, "case", "x")
    assert_spelled_by_each_face(mismatch.value, f"); {repair}", "repair it by deleting the dataset")
    index_path.unlink()
    fresh = ImageSearch(engine.settings)
    with pytest.raises(IndexCorruptError, match="is missing; repair it by ingesting") as missing:
        search_by_text(fresh, "case", "x")
    assert_spelled_by_each_face(missing.value, f"is missing; {repair}", f"ingesting its folder ({record.root}) again")
    repaired = ingest_folder(fresh, case_folder, "case", progress=False, rebuild=True)
    assert repaired.total == 6 and len(dataset_paths(fresh, "case")) == 6


def test_the_pause_point_is_set_by_tests_only(monkeypatch):
    from image_search import config

    monkeypatch.delenv("IMAGE_SEARCH_TEST_PAUSE_AT", raising=False)
    assert config.test_pause_point() is None
    monkeypatch.setenv("IMAGE_SEARCH_TEST_PAUSE_AT", "before-commit")
    assert config.test_pause_point() == "before-commit"


def _start_paused_ingest(cli_env, folder, name, point, *extra):
    env = {**cli_env, "IMAGE_SEARCH_TEST_PAUSE_AT": point}
    process = subprocess.Popen([sys.executable, "-m", "cli.cli_preprocess", "-i", str(folder), "-n", name,
                                "--no-progress", *extra], cwd=REPO, env=env, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    for line in process.stderr:
        if line.strip() == f"PAUSED AT {point}":
            return process
        if time.time() > deadline:
            break
    process.kill()
    raise AssertionError(f"ingest never reached {point}: {process.stderr.read()}")


def _engine_for(cli_env) -> ImageSearch:
    from image_search.config import DatabaseSettings

    database = None
    if cli_env.get("DB_HOST"):
        database = DatabaseSettings(cli_env["DB_HOST"], int(cli_env["DB_PORT"]), cli_env["DB_USER"],
                                    cli_env["DB_PASSWORD"], cli_env["DB_NAME"])
    return ImageSearch(Settings(Path(cli_env["IMAGE_SEARCH_HOME"]), TEST_MODEL, "cpu", database))


@pytest.mark.parametrize("point,committed", [("before-index-write", False), ("before-commit", False),
                                             ("after-commit", True)])
def test_kill_9_leaves_the_old_or_the_new_state(cli_env, case_folder, photos, point, committed):
    engine = _engine_for(cli_env)
    ingest_folder(engine, case_folder, "case", progress=False)
    old = dataset_paths(engine, "case")
    evolve(case_folder, photos)
    new = {str(p) for p in case_folder.iterdir()}

    process = _start_paused_ingest(cli_env, case_folder, "case", point)
    try:
        # While the ingest is in flight: searches see the state as of its last commit; a second ingest is refused.
        assert dataset_paths(_engine_for(cli_env), "case") == (new if committed else old)
        with pytest.raises(DatasetBusyError, match=r"'case' is busy: an ingest \(process \d+\)"):
            ingest_folder(_engine_for(cli_env), case_folder, "case", progress=False)
        second = run_tool("cli.cli_preprocess", "-i", case_folder, "-n", "case", env=cli_env)
        assert second.returncode == 2 and "is busy" in second.stderr
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait()

    observer = _engine_for(cli_env)
    assert dataset_paths(observer, "case") == (new if committed else old)
    recovery = run_tool("cli.cli_preprocess", "-i", case_folder, "-n", "case", "--no-progress", env=cli_env)
    assert recovery.returncode == 0, recovery.stderr  # the dead process's lock did not block
    expected_word = "finished its clean-up" if committed else "rolled it back"
    assert "was interrupted" in recovery.stdout and expected_word in recovery.stdout
    assert dataset_paths(_engine_for(cli_env), "case") == new
    leftovers = sorted(p.name for p in (Path(cli_env["IMAGE_SEARCH_HOME"]) / "indexes").glob("*/*"))
    generation = _engine_for(cli_env).dataset("case").generation
    assert leftovers == [f"{generation:010d}.faiss", f"{generation:010d}.seal.json"]  # only the committed ones


def test_kill_9_at_random_moments(cli_env, tmp_path, photos):
    """Kill real ingests at random times; every time the dataset is either the old or the new one."""
    from evaluation.sample_images import write_photos

    folder = tmp_path / "big"
    write_photos(folder, 150, megapixels=0.1, seed=3)
    engine = _engine_for(cli_env)
    ingest_folder(engine, folder, "big", progress=False)
    old = dataset_paths(engine, "big")
    write_photos(folder, 300, megapixels=0.1, seed=3)  # 150 more files
    new = {str(p) for p in folder.iterdir()}
    rng = random.Random(11)
    outcomes = []
    for attempt in range(4):
        process = subprocess.Popen([sys.executable, "-m", "cli.cli_preprocess", "-i", str(folder), "-n", "big",
                                    "--no-progress", "--batch-size", "8"], cwd=REPO, env=cli_env,
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(rng.uniform(1.0, 6.0))
        process.send_signal(signal.SIGKILL)
        process.wait()
        state = dataset_paths(_engine_for(cli_env), "big")
        assert state in (old, new), f"attempt {attempt}: a mixture of {len(state)} images"
        outcomes.append(state == new)
        if state == new:
            break
    final = run_tool("cli.cli_preprocess", "-i", folder, "-n", "big", "--no-progress", env=cli_env)
    assert final.returncode == 0, final.stderr
    assert dataset_paths(_engine_for(cli_env), "big") == new


def test_database_down_is_one_clear_sentence(cli_env, case_folder, tmp_path):
    env = {**cli_env, "DB_HOST": "127.0.0.1", "DB_PORT": "1", "DB_USER": "postgres", "DB_PASSWORD": "x"}
    home = tmp_path / "untouched-home"
    env["IMAGE_SEARCH_HOME"] = str(home)
    for args in (["cli.cli_preprocess", "-i", case_folder, "-n", "case"], ["cli.cli_search", "-q", "x", "-n", "c"],
                 ["cli.cli_datasets", "list"]):
        result = run_tool(*args, env=env)
        lines = [line for line in result.stderr.splitlines() if line.strip()]
        assert result.returncode == 2 and len(lines) == 1, result.stderr
        assert "Cannot reach the PostgreSQL database at 127.0.0.1:1" in lines[0]
    assert not (home / "indexes").exists()  # nothing half-written
