"""Distributed ingest (--ray) on a real local Ray of 2 CPUs and no GPU: the dataset it makes is the local ingest's,
a worker killed mid-run costs nothing, a re-ingest reuses unchanged files, a file that crashes its reader is
reported as skipped, and the command line joins a running cluster.

Ray starts once for the module (it takes 5 to 15 s on a busy machine) and every ingest here joins it; each ingest
still starts its own embedding actor (a process that loads the model), so the module keeps to few of them.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import TEST_MODEL, run_tool, tool_env

try:
    import ray
    import ray.data  # noqa: F401
except ImportError:
    if os.environ.get("CI"):
        raise  # CI installs the ray category: a missing Ray must not pass as skipped tests
    pytest.skip('Ray is not installed (pipenv sync --categories="packages dev-packages ray")',
                allow_module_level=True)

PHOTOS = 40
CRASHING = "photo_00005.jpg"


@pytest.fixture(scope="module")
def cluster():
    """The address of a local Ray that this module's ingests join (as ray.init from the tests' process)."""
    ray.init(num_cpus=2, num_gpus=0, include_dashboard=False, object_store_memory=100 * 1024 * 1024,
             logging_level="warning")
    yield ray.get_runtime_context().gcs_address
    ray.shutdown()


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    """Photos (some in a subfolder, one with a name that is not UTF-8), a broken JPEG and a text file."""
    from evaluation.sample_images import write_photos

    root = tmp_path_factory.mktemp("ray-photos")
    write_photos(root, PHOTOS, megapixels=0.03, seed=11)
    (root / "sub").mkdir()
    for photo in sorted(root.glob("photo_0003*.jpg")):
        photo.rename(root / "sub" / photo.name)
    os.rename(root / "photo_00007.jpg", os.path.join(os.fsencode(root), b"caf\xe9.jpg"))
    (root / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a JPEG")
    (root / "notes.txt").write_text("case notes")
    return root


def service(home: Path, database=None):
    from image_search.config import Settings
    from image_search.models import shared_models
    from image_search.service import ImageSearch

    return ImageSearch(Settings(data_home=home, model_name=TEST_MODEL, device="cpu", database=database),
                       models=shared_models)


def dataset_vectors(engine, name: str) -> dict[str, tuple[np.ndarray, object]]:
    """Each image's (vector, facts) by path."""
    loaded = engine.load_index(name)
    vectors = {int(i): vector for ids, chunk in loaded.index.export() for i, vector in zip(ids, chunk)}
    records, _ = engine.store.lookup_images(loaded.record.id, sorted(vectors))
    return {record.path: (vectors[vector_id], record.facts) for vector_id, record in records.items()}


def assert_same_dataset(got: dict, expected: dict) -> None:
    """The same paths, vectors within 1e-5 and the same facts (hashes, EXIF: read on the workers)."""
    assert sorted(got) == sorted(expected)
    for path, (vector, facts) in expected.items():
        np.testing.assert_allclose(got[path][0], vector, atol=1e-5, err_msg=path)
        assert got[path][1] == facts and facts is not None and facts.sha256, path


@pytest.fixture(scope="module")
def local(folder, tmp_path_factory):
    """The local ingest of the folder: (its report, its vectors by path)."""
    engine = service(tmp_path_factory.mktemp("local-home"))
    try:
        report = engine.ingest(folder, "photos", progress=False)
        return report, dataset_vectors(engine, "photos")
    finally:
        engine.close()


def test_a_ray_ingest_makes_the_dataset_a_local_ingest_makes(cluster, folder, local, tmp_path):
    local_report, local_vectors = local
    engine = service(tmp_path / "home")
    try:
        report = engine.ingest(folder, "photos", progress=False, ray=True)
        assert report.indexed == report.total == PHOTOS and report.ignored == 1
        assert report.skipped == local_report.skipped and len(report.skipped) == 1  # broken.jpg, same reason
        assert_same_dataset(dataset_vectors(engine, "photos"), local_vectors)
        assert os.fsdecode(os.path.join(os.fsencode(folder), b"caf\xe9.jpg")) in local_vectors
    finally:
        engine.close()


def test_a_worker_killed_mid_run_is_replaced_and_the_ingest_completes(cluster, folder, local, tmp_path,
                                                                       monkeypatch):
    marker = tmp_path / "killed"
    monkeypatch.setenv("IMAGE_SEARCH_TEST_RAY_KILL_MARKER", str(marker))  # the first actor dies in its 2nd batch
    engine = service(tmp_path / "home")
    try:
        report = engine.ingest(folder, "photos", progress=False, batch_size=8, ray=True)
        killed = int(marker.read_text())
        with pytest.raises(ProcessLookupError):
            os.kill(killed, 0)  # that worker process is gone: its batches were embedded by the one Ray started
        assert report.indexed == PHOTOS and [path for path, _ in report.skipped] == [str(folder / "broken.jpg")]
        assert_same_dataset(dataset_vectors(engine, "photos"), local[1])
    finally:
        engine.close()


def test_a_file_that_crashes_its_reader_every_time_is_skipped(cluster, folder, local, tmp_path, monkeypatch):
    from image_search.ingest.ray_embed import CRASH_REASON

    monkeypatch.setenv("IMAGE_SEARCH_TEST_RAY_CRASH_ON", CRASHING)  # reading it kills the reading process
    engine = service(tmp_path / "home")
    try:
        report = engine.ingest(folder, "photos", progress=False, ray=True)
        crashing = str(folder / CRASHING)
        assert sorted(report.skipped) == sorted([(str(folder / "broken.jpg"), local[0].skipped[0][1]),
                                                 (crashing, CRASH_REASON)])
        assert report.indexed == report.total == PHOTOS - 1
        expected = {path: vector for path, vector in local[1].items() if path != crashing}
        assert_same_dataset(dataset_vectors(engine, "photos"), expected)  # its batch-mates were read one by one
    finally:
        engine.close()


def test_the_command_line_joins_a_running_cluster_and_reingests_only_new_and_changed_files(cluster, folder,
                                                                                          tmp_path, request):
    from evaluation.sample_images import write_photos

    # a cluster keeps its metadata in PostgreSQL: this test does too, where the machine has it
    database = request.getfixturevalue("postgres_database") if os.environ.get("DB_HOST") else None
    name = f"ray-cli-{os.getpid()}"
    case = tmp_path / "case"
    shutil.copytree(folder, case)
    engine = service(tmp_path / "home", database)
    try:
        engine.ingest(case, name, progress=False)  # a local ingest first: Ray updates what it made
        before = {record.path: record.vector_id for record in engine.store.image_records(engine.dataset(name).id)}
        (case / "photo_00001.jpg").unlink()
        shutil.copy(case / "photo_00003.jpg", case / "photo_00002.jpg")  # changed content (and size)
        write_photos(case / "new", 2, megapixels=0.03, seed=99)

        result = run_tool("cli.cli_preprocess", "-i", case, "-n", name, "--ray", cluster, "--json",
                          env=tool_env(tmp_path / "home", database))
        assert result.returncode == 0, result.stderr
        report = json.loads(result.stdout)
        assert (report["to_embed"], report["indexed"]) == (5, 3)  # 2 new, 1 changed; broken.jpg, notes.txt again
        assert (report["reused"], report["removed"], report["total"]) == (PHOTOS - 2, 2, PHOTOS + 1)
        after = {record.path: record.vector_id for record in engine.store.image_records(engine.dataset(name).id)}
        unchanged = set(before) - {str(case / "photo_00001.jpg"), str(case / "photo_00002.jpg")}
        assert {path: after[path] for path in unchanged} == {path: before[path] for path in unchanged}
        reference = service(tmp_path / "reference")
        try:
            reference.ingest(case, "case", progress=False)
            assert_same_dataset(dataset_vectors(engine, name), dataset_vectors(reference, "case"))
        finally:
            reference.close()
        engine.delete(name)
    finally:
        engine.close()


def test_a_cluster_that_does_not_answer_is_one_line(tmp_path):
    env = tool_env(tmp_path / "home", None)
    env["IMAGE_SEARCH_RAY_ADDRESS"] = "127.0.0.1:9"  # --ray without an address joins this one
    result = run_tool("cli.cli_preprocess", "-i", tmp_path, "-n", "nowhere", "--ray", env=env, timeout=120)
    assert result.returncode == 2
    assert result.stderr.startswith("error: Cannot reach the Ray cluster at 127.0.0.1:9 (")
    assert len(result.stderr.strip().splitlines()) == 1


def test_without_ray_installed_the_flag_names_the_install_command(tmp_path, monkeypatch, folder):
    from cli import cli_preprocess
    from cli.common import cli_message
    from image_search import MissingPackageError

    monkeypatch.setitem(sys.modules, "ray", None)  # what `import ray` meets where Ray is not installed
    monkeypatch.setenv("IMAGE_SEARCH_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("DB_HOST", raising=False)
    with pytest.raises(MissingPackageError) as raised:
        cli_preprocess.main(["-i", str(folder), "-n", "photos", "--model", TEST_MODEL, "--ray"])
    message = cli_message(raised.value)
    assert 'pipenv sync --categories="packages ray"' in message and "\n" not in message


def test_two_blocks_at_once_on_one_actor_make_the_same_dataset(cluster, folder, local, tmp_path):
    """What a GPU actor does by default (two readers at once in one actor), here on the CPU: each file once."""
    from image_search.ingest import ingest_folder
    from image_search.ingest.ray_embed import RayEmbedding

    engine = service(tmp_path / "home")
    on_ray = RayEmbedding(cluster, device="cpu", block_files=7, blocks_at_once=2)
    try:
        report = ingest_folder(engine, folder, "photos", model_name=TEST_MODEL, progress=False, embed=on_ray)
        assert report.indexed == PHOTOS and report.skipped == local[0].skipped
        assert_same_dataset(dataset_vectors(engine, "photos"), local[1])
    finally:
        on_ray.close()
        engine.close()


def test_an_actor_starts_a_blocks_reader_once_the_block_before_has_taken_its_last_file(cluster, folder):
    """Two blocks at once on one actor read one after the other, so the two readers never share the cores."""
    import threading

    import torch

    from image_search.ingest.ray_workers import EmbeddingActor

    threads = torch.get_num_threads()
    try:  # built here, in the tests' process, the actor sets PyTorch's thread count for the whole process
        actor = EmbeddingActor(TEST_MODEL, "cpu", {}, batch_size=2, workers=0)  # read in the calling thread
    finally:
        torch.set_num_threads(threads)
    photos = sorted(folder.glob("photo_*.jpg"))[:8]

    def block(start: int, count: int) -> dict:
        return {"position": [np.arange(start, start + count)],
                "path": [[os.fsencode(p) for p in photos[start:start + count]]]}

    first, second = actor(block(0, 4)), actor(block(4, 4))
    assert list(next(first)["position"]) == [0, 1]
    arrived = []
    waiting = threading.Thread(target=lambda: arrived.append(next(second)))
    waiting.start()
    waiting.join(1.0)
    assert waiting.is_alive() and not arrived  # its turn comes when the first block's files are all taken
    assert [list(rows["position"]) for rows in first] == [[2, 3]]
    waiting.join(60)
    assert list(arrived[0]["position"]) == [4, 5] and [list(rows["position"]) for rows in second] == [[6, 7]]
