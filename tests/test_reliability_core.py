"""What an adversarial round broke in the core (issue 17), each against real components: far-future and pre-1970
times, a FIFO or a symbolic link put in a file's place after the scan, swapped, damaged and restored index files,
a PostgreSQL server restarted under the store (our own temporary server, restarted for real), a full disk (a 2 MB
tmpfs), content changed under the same size and time, and SQLite locked, read-only or damaged."""

from __future__ import annotations

import errno
import json
import os
import pwd
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from image_search.config import DatabaseSettings, Settings
from image_search.errors import (DataFolderError, IndexCorruptError, StoreUnavailableError,
                                 StoreUnreachableError)
from image_search.ingest import embed_locally, ingest_folder
from image_search.models import shared_models
from image_search.search import search_by_image, search_by_text
from image_search.service import ImageSearch
from tests.conftest import TEST_MODEL, ingest_with_release, release_code, run_tool, tool_env

# The last commit of main that wrote index files without seals and rows without inode and change time: data it
# writes must keep working (tests/test_store_migrations.py does the same for the store's version 1).
UNSEALED_COMMIT = "28ccfca"


def paths_of(engine: ImageSearch, name: str) -> set[str]:
    return {r.path for r in search_by_text(engine, name, "anything", 10_000)}


def fresh(engine: ImageSearch) -> ImageSearch:
    """Another process's view: a service with nothing cached."""
    return ImageSearch(engine.settings, models=shared_models)


@pytest.fixture
def case(tmp_path, photos) -> Path:
    folder = tmp_path / "case"
    folder.mkdir()
    for photo in sorted(photos.iterdir())[:6]:
        shutil.copy(photo, folder / photo.name)
    return folder


def index_path(engine: ImageSearch, name: str) -> Path:
    record = engine.dataset(name)
    return engine.data_home / "indexes" / record.uid / f"{record.generation:010d}.faiss"


def seal_of(index: Path) -> Path:
    return index.with_name(index.stem + ".seal.json")


# -- 1. times the store's 64-bit integers cannot hold -------------------------------------------------------------
def test_far_future_and_pre_1970_times_do_not_stop_an_ingest(engine, case):
    year_2300 = 10_413_792_000 * 10 ** 9  # more nanoseconds than int64 holds (9.22e18)
    os.utime(case / "photo_00000.jpg", ns=(year_2300, year_2300))
    os.utime(case / "photo_00001.jpg", ns=(-2_208_988_800 * 10 ** 9,) * 2)  # 1900 (ext4 keeps it as 1901)
    if os.stat(case / "photo_00000.jpg").st_mtime_ns < 2 ** 63:
        pytest.skip("this file system cannot hold a time in the year 2300")
    first = ingest_folder(engine, case, "times", progress=False)
    assert first.total == 6 and not first.skipped
    assert paths_of(fresh(engine), "times") == {str(p) for p in case.iterdir()}
    again = ingest_folder(engine, case, "times", progress=False)
    assert (again.reused, again.indexed) == (6, 0)  # the clamped time compares equal: no endless re-embedding
    later = 12_000_000_000 * 10 ** 9  # 2350: clamped to the same value, but the kernel gives it a new change time
    os.utime(case / "photo_00000.jpg", ns=(later, later))
    touched = ingest_folder(engine, case, "times", progress=False)
    assert (touched.reused, touched.indexed) == (5, 1)


# -- 2/3. what replaced a file after the scan -------------------------------------------------------------------
def _swapping(swap):
    """An embedding step that first changes the folder (after the plan's scan), then embeds as usual."""
    def embed(embedder, paths, **options):
        swap()
        return embed_locally(embedder, paths, **options)
    return embed


def test_a_file_replaced_by_a_fifo_after_the_scan_does_not_hang_the_ingest(sqlite_engine, case):
    victim = case / "photo_00002.jpg"

    def to_fifo():
        victim.unlink()
        os.mkfifo(victim)

    outcome = {}
    worker = threading.Thread(daemon=True, target=lambda: outcome.update(report=ingest_folder(
        sqlite_engine, case, "fifo", progress=False, workers=0, embed=_swapping(to_fifo))))
    worker.start()
    worker.join(120)
    if worker.is_alive():
        os.close(os.open(victim, os.O_WRONLY | os.O_NONBLOCK))  # lets the blocked open() go, then fail
        pytest.fail("the ingest hung on opening the FIFO")
    skipped = dict(outcome["report"].skipped)
    assert outcome["report"].total == 5
    assert "FIFO" in skipped[str(victim)] and "not a regular file" in skipped[str(victim)]


def test_the_gpu_readers_file_read_does_not_block_on_a_fifo(tmp_path):
    from image_search.pipeline.encoded_jpeg import read_encoded_jpeg

    fifo = tmp_path / "pipe.jpg"
    os.mkfifo(fifo)
    result = {}
    worker = threading.Thread(daemon=True, target=lambda: result.update(value=read_encoded_jpeg(str(fifo))))
    worker.start()
    worker.join(30)
    if worker.is_alive():
        os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
        pytest.fail("reading the FIFO blocked")
    assert result["value"] is None  # left to the CPU reader, which says why it cannot be used


def test_a_link_put_in_a_files_place_after_the_scan_is_not_followed(sqlite_engine, tmp_path, case, photos):
    outside = tmp_path / "outside"
    (outside / "sub").mkdir(parents=True)
    secret = outside / "secret.jpg"
    shutil.copy(sorted(photos.iterdir())[10], secret)
    shutil.copy(sorted(photos.iterdir())[11], outside / "sub" / "photo_00009.jpg")
    (case / "sub").mkdir()
    shutil.copy(sorted(photos.iterdir())[9], case / "sub" / "photo_00009.jpg")

    def to_links():
        (case / "photo_00003.jpg").unlink()
        os.symlink(secret, case / "photo_00003.jpg")
        shutil.rmtree(case / "sub")
        os.symlink(outside / "sub", case / "sub")  # a folder on the path swapped, too

    report = ingest_folder(sqlite_engine, case, "links", progress=False, workers=0, embed=_swapping(to_links))
    skipped = dict(report.skipped)
    assert report.total == 5  # of 7 scanned, the two swapped ones were refused
    assert "symbolic link" in skipped[str(case / "photo_00003.jpg")]
    assert "replaced by a symbolic link" in skipped[str(case / "sub" / "photo_00009.jpg")]
    found = {r.path for r in search_by_image(sqlite_engine, "links", secret, 10)}
    assert str(case / "photo_00003.jpg") not in found and str(case / "sub" / "photo_00009.jpg") not in found


def test_followed_links_are_read_where_the_scan_resolved_them(sqlite_engine, tmp_path, case, photos):
    (case / "real").mkdir()
    shutil.copy(sorted(photos.iterdir())[9], case / "real" / "inside.jpg")
    os.symlink(case / "real" / "inside.jpg", case / "link.jpg")
    outside = tmp_path / "elsewhere.jpg"
    shutil.copy(sorted(photos.iterdir())[10], outside)

    def retarget():  # the followed link, checked to stay inside at the scan, now points outside
        (case / "link.jpg").unlink()
        os.symlink(outside, case / "link.jpg")

    report = ingest_folder(sqlite_engine, case, "followed", progress=False, workers=0, follow_symlinks=True,
                           embed=_swapping(retarget))
    assert report.total == 8 and not report.skipped  # the link's path, read from the file it named at the scan
    best = search_by_image(sqlite_engine, "followed", case / "real" / "inside.jpg", 2)
    assert {r.path for r in best} == {str(case / "link.jpg"), str(case / "real" / "inside.jpg")}
    assert best[0].score > 0.999 and best[1].score > 0.999


# -- 4. index files that are not what was written -----------------------------------------------------------------
def test_a_swapped_index_of_another_dataset_with_equal_count_is_detected_and_repaired(engine, case, tmp_path, photos):
    other = tmp_path / "other"
    other.mkdir()
    for photo in sorted(photos.iterdir())[6:12]:
        shutil.copy(photo, other / photo.name)
    ingest_folder(engine, case, "case", progress=False)
    ingest_folder(engine, other, "other", progress=False)
    mine, theirs = index_path(engine, "case"), index_path(engine, "other")
    shutil.copy(theirs, mine)  # the file alone: its content is not what this dataset wrote
    with pytest.raises(IndexCorruptError, match=r"is damaged: .*SHA-256 differs.*rebuild=True"):
        search_by_text(fresh(engine), "case", "x")
    shutil.copy(seal_of(theirs), seal_of(mine))  # with its seal: a file of another dataset
    with pytest.raises(IndexCorruptError, match="belongs to another dataset"):
        search_by_text(fresh(engine), "case", "x")
    repaired = ingest_folder(fresh(engine), case, "case", progress=False)  # a plain ingest, no --rebuild
    assert repaired.indexed == 6 and repaired.total == 6
    assert any("repaired it by embedding all 6 files again" in line for line in repaired.lines())
    assert paths_of(fresh(engine), "case") == {str(p) for p in case.iterdir()}


def test_zeroed_bytes_inside_an_index_file_are_detected(engine, case):
    ingest_folder(engine, case, "case", progress=False)
    path = index_path(engine, "case")
    data = bytearray(path.read_bytes())
    data[len(data) // 2:len(data) // 2 + 256] = bytes(256)  # vectors, not the header: FAISS reads it happily
    path.write_bytes(bytes(data))
    for mapped in (False, True):  # the server's read and the command-line search's map
        service = ImageSearch(engine.settings, map_indexes=mapped, models=shared_models)
        with pytest.raises(IndexCorruptError, match="is damaged"):
            search_by_text(service, "case", "x")
    assert ingest_folder(fresh(engine), case, "case", progress=False).indexed == 6


def test_an_old_generation_restored_is_detected_not_retried_for_ever(engine, case, tmp_path, photos):
    ingest_folder(engine, case, "case", progress=False)
    backup = tmp_path / "backup"
    backup.mkdir()
    shutil.copy(index_path(engine, "case"), backup / "index.faiss")
    shutil.copy(seal_of(index_path(engine, "case")), backup / "seal.json")
    (case / "photo_00005.jpg").unlink()  # same count, other ids: the restored file's ids are not in the store
    shutil.copy(sorted(photos.iterdir())[7], case / "new.jpg")
    ingest_folder(engine, case, "case", progress=False)
    current = index_path(engine, "case")
    shutil.copy(backup / "index.faiss", current)
    shutil.copy(backup / "seal.json", seal_of(current))
    with pytest.raises(IndexCorruptError, match=r"from an older state of this dataset \(generation 1; the metadata "
                                                 r"is at generation 2\)"):
        search_by_text(fresh(engine), "case", "x")
    # an index file without a seal (as older releases wrote them) is trusted on loading; when its ids are not
    # the store's, the search says so at once instead of "kept changing during the search" five times
    seal_of(current).unlink()
    with pytest.raises(IndexCorruptError, match="vector ids that its metadata does not list"):
        search_by_text(fresh(engine), "case", "anything", 6)
    repaired = ingest_folder(fresh(engine), case, "case", progress=False)  # ...and the ingest checks the ids
    assert repaired.indexed == 6 and "vector ids" in "\n".join(repaired.lines())
    assert paths_of(fresh(engine), "case") == {str(p) for p in case.iterdir()}


def _write_with_unsealed_code(tmp_path: Path, folder: Path, name: str, env: dict) -> None:
    """Ingest with the code of UNSEALED_COMMIT (today's main when seals came), as a user's old data."""
    ingest_with_release(release_code(tmp_path / "old-code", UNSEALED_COMMIT), folder, name, env, "--no-progress")


@pytest.fixture
def own_database(backend):
    """For a test that needs a PostgreSQL database of its own (None on SQLite), dropped at the end."""
    if backend[1] is None:
        yield None
        return
    import psycopg2

    settings = replace(backend[1], name=f"i17_core_{uuid.uuid4().hex[:10]}")
    yield settings
    admin = psycopg2.connect(host=settings.host, port=settings.port, user=settings.user, password=settings.password,
                             dbname="postgres")
    admin.autocommit = True
    with admin.cursor() as cursor:
        cursor.execute(f'DROP DATABASE IF EXISTS "{settings.name}" WITH (FORCE)')
    admin.close()


def test_data_written_before_seals_keeps_working_and_is_sealed(own_database, data_home, case, tmp_path):
    database = own_database  # not the session's: the old code refuses a store that newer tests have upgraded
    engine = ImageSearch(Settings(data_home, TEST_MODEL, "cpu", database), models=shared_models)
    _write_with_unsealed_code(tmp_path, case, "old", tool_env(data_home, database))
    path = index_path(engine, "old")
    assert not seal_of(path).exists()
    rows = engine.store.image_records(engine.dataset("old").id)
    assert {(r.inode, r.ctime_ns) for r in rows} == {(None, None)}
    assert paths_of(fresh(engine), "old") == {str(p) for p in case.iterdir()}  # trusted on the first load...
    assert seal_of(path).exists()  # ...and sealed then
    again = ingest_folder(fresh(engine), case, "old", progress=False)
    assert (again.reused, again.indexed) == (6, 0)  # the old rows match on size and time: nothing re-embedded
    filled = engine.store.image_records(engine.dataset("old").id)
    assert all(r.inode == os.stat(r.path).st_ino and r.ctime_ns == os.stat(r.path).st_ctime_ns for r in filled)
    data = bytearray(path.read_bytes())
    data[len(data) // 2:len(data) // 2 + 64] = bytes(64)
    path.write_bytes(bytes(data))  # from now on it is checked
    with pytest.raises(IndexCorruptError, match="is damaged"):
        search_by_text(fresh(engine), "old", "x")


# -- 5. a PostgreSQL server restarted under the store ---------------------------------------------------------
PG_BIN = Path("/usr/lib/postgresql/15/bin")


class OwnPostgres:
    """A temporary PostgreSQL server of this test module's own (other tests share the machine's one)."""

    def __init__(self, folder: Path, port: int) -> None:
        self.folder, self.port = folder, port

    def _pg_ctl(self, *args: str) -> None:
        subprocess.run(["runuser", "-u", "postgres", "--", str(PG_BIN / "pg_ctl"), "-D", str(self.folder / "data"),
                        "-l", str(self.folder / "log"), "-o",
                        f"-p {self.port} -k {self.folder} -c listen_addresses=127.0.0.1", "-w", *args],
                       check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=60)

    def start(self) -> None:
        self._pg_ctl("start")

    def stop(self) -> None:
        self._pg_ctl("-m", "fast", "stop")

    def restart(self) -> None:
        self._pg_ctl("-m", "fast", "restart")

    def settings(self) -> DatabaseSettings:
        return DatabaseSettings(host="127.0.0.1", port=self.port, user="postgres", password=None,
                                name=f"i17_{uuid.uuid4().hex[:8]}")


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def own_postgres():
    if not (PG_BIN / "initdb").exists() or os.geteuid() != 0 or not shutil.which("runuser"):
        pytest.skip(f"needs root, runuser and PostgreSQL 15's {PG_BIN} to run a server of its own")
    folder = Path(tempfile.mkdtemp(prefix="image-search-pg-"))
    os.chown(folder, pwd.getpwnam("postgres").pw_uid, -1)
    subprocess.run(["runuser", "-u", "postgres", "--", str(PG_BIN / "initdb"), "-D", str(folder / "data"), "-A",
                    "trust", "-U", "postgres"], check=True, stdout=subprocess.DEVNULL, timeout=120)
    server = OwnPostgres(folder, _free_port())
    server.start()
    try:
        yield server
    finally:
        try:
            server.stop()
        finally:
            shutil.rmtree(folder, ignore_errors=True)


def _engine_on(database: DatabaseSettings, data_home: Path) -> ImageSearch:
    return ImageSearch(Settings(data_home, TEST_MODEL, "cpu", database), models=shared_models)


def test_after_a_postgres_restart_each_kept_connection_reconnects(own_postgres, case, data_home):
    engine = _engine_on(own_postgres.settings(), data_home)
    ingest_folder(engine, case, "case", progress=False)
    expected = {str(p) for p in case.iterdir()}
    threads = 3
    with ThreadPoolExecutor(threads) as pool:  # like the server's request threads, each with its connection
        def on_every_thread():
            barrier = threading.Barrier(threads)
            return list(pool.map(lambda _: barrier.wait(30) is not None and paths_of(engine, "case"),
                                 range(threads)))

        assert on_every_thread() == [expected] * threads
        own_postgres.restart()
        assert on_every_thread() == [expected] * threads  # each thread's first request after the restart
        own_postgres.restart()
        assert [d.name for d in engine.datasets()] == ["case"]
    engine.close()


def test_a_postgres_restart_during_the_commit_waits_for_it(own_postgres, case, data_home, photos):
    engine = _engine_on(own_postgres.settings(), data_home)
    ingest_folder(engine, case, "case", progress=False)
    shutil.copy(sorted(photos.iterdir())[8], case / "new.jpg")

    def down_for_a_while():  # the embedding is done and the commit comes next
        own_postgres.stop()
        threading.Timer(4, own_postgres.start).start()

    def embed(embedder, paths, **options):
        yield from embed_locally(embedder, paths, **options)
        down_for_a_while()

    report = ingest_folder(engine, case, "case", progress=False, embed=embed)
    assert report.indexed == 1 and report.total == 7
    assert any("could not be reached for" in line and "committed once it was back" in line for line in report.lines())
    assert paths_of(_engine_on(engine.settings.database, data_home), "case") == {str(p) for p in case.iterdir()}
    engine.close()


def test_a_database_down_for_longer_keeps_the_embeddings_for_the_next_ingest(own_postgres, case, data_home,
                                                                            monkeypatch):
    from image_search.ingest import commit

    monkeypatch.setattr(commit, "COMMIT_WAIT_SECONDS", 3.0)
    monkeypatch.setattr(commit, "COMMIT_RETRY_SECONDS", 0.5)
    database = own_postgres.settings()
    engine = _engine_on(database, data_home)
    engine.datasets()  # the database exists

    def embed(embedder, paths, **options):
        yield from embed_locally(embedder, paths, **options)
        own_postgres.stop()

    try:
        with pytest.raises(StoreUnreachableError, match="kept its work .*6 newly embedded images.* run the same "
                                                        "ingest again once the database is back"):
            ingest_folder(engine, case, "case", progress=False, embed=embed)
    finally:
        own_postgres.start()
    again = ingest_folder(_engine_on(database, data_home), case, "case", progress=False)
    assert again.recovered and "committed its 6 embedded images now" in again.recovered
    assert (again.indexed, again.total) == (0, 6)  # nothing embedded twice
    assert paths_of(_engine_on(database, data_home), "case") == {str(p) for p in case.iterdir()}
    assert not list((data_home / "journal").iterdir())


# -- 6. a full disk ---------------------------------------------------------------------------------------------
@pytest.fixture
def small_disk(tmp_path):
    """A 2 MB file system of its own (tmpfs), to fill."""
    mount = tmp_path / "small-disk"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mount)], capture_output=True,
                          text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({done.stderr.strip() or done.returncode})")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def fill(folder: Path, leave: int = 0) -> Path:
    """Fill the disk of folder, then free `leave` bytes again."""
    filler = folder / "filler"
    with open(filler, "ab", buffering=0) as handle:
        try:
            while True:
                handle.write(b"\0" * 65536)
        except OSError as error:
            assert error.errno == errno.ENOSPC
    os.truncate(filler, max(0, filler.stat().st_size - leave))
    return filler


def leftovers(home: Path) -> list[str]:
    return sorted(str(p.relative_to(home)) for p in home.rglob("*")
                  if ".tmp" in p.name or p.parent.name == "journal")


def test_a_full_disk_is_one_sentence_and_the_old_datasets_stay(own_database, small_disk, case, tmp_path, photos):
    settings = own_database
    engine = ImageSearch(Settings(small_disk, TEST_MODEL, "cpu", settings), models=shared_models)
    ingest_folder(engine, case, "kept", progress=False)
    more = tmp_path / "more"
    more.mkdir()
    for photo in sorted(photos.iterdir()):
        for copy in range(13):  # 156 files: an index of 41 kB
            shutil.copy(photo, more / f"{copy}-{photo.name}")
    env = tool_env(small_disk, settings)
    filler = fill(small_disk)
    result = run_tool("cli.cli_preprocess", "-i", case, "-n", "second", "--no-progress", env=env)
    assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert f"The disk of the data folder {small_disk} is full" in result.stderr and "Traceback" not in result.stderr
    assert "needs about" in result.stderr or "failed" in result.stderr

    filler.unlink()
    fill(small_disk, leave=28 * 1024)  # room for the lock, the journal and the start, not for the index
    with pytest.raises(DataFolderError, match=r"is full \(\d+ kB free\): writing the index of dataset 'second' "
                                              r"needs about \d+ kB; free some space"):
        ingest_folder(fresh(engine), more, "second", progress=False)
    assert leftovers(small_disk) == []  # no temporary index file, no journal left
    assert not list((small_disk / "indexes").glob("*/*.tmp-*"))
    assert paths_of(fresh(engine), "kept") == {str(p) for p in case.iterdir()}
    assert [d.name for d in fresh(engine).datasets()] == ["kept"]

    fill(small_disk)  # completely full: delete still works, and frees the space
    deleted = run_tool("cli.cli_datasets", "delete", "kept", env=env)
    assert deleted.returncode == 0, deleted.stderr
    assert "Deleted dataset 'kept'" in deleted.stdout
    assert fresh(engine).datasets() == [] and not list((small_disk / "indexes").iterdir())
    engine.close()


def test_the_faiss_writer_on_a_full_disk_raises_the_os_error_and_leaves_nothing(small_disk):
    from image_search.vectors import FaissIndex

    index = FaissIndex.empty(64)
    vectors = np.random.default_rng(0).standard_normal((5000, 64)).astype(np.float32)
    index.add(vectors, np.arange(5000))
    with pytest.raises(OSError) as full:
        index.save(small_disk / "indexes" / "x" / "0000000001.faiss")  # 1.3 MB into 2 MB, twice
        index.save(small_disk / "indexes" / "x" / "0000000002.faiss")
    assert full.value.errno == errno.ENOSPC
    assert sorted(p.name for p in (small_disk / "indexes" / "x").iterdir()) == ["0000000001.faiss"]


# -- 7. same size and time, other content ------------------------------------------------------------------------
def test_new_content_with_the_old_size_and_time_is_embedded_again(engine, tmp_path):
    folder = tmp_path / "bmp"
    folder.mkdir()
    rng = np.random.default_rng(1)
    for i in range(3):
        Image.fromarray(rng.integers(0, 255, (48, 64, 3), dtype=np.uint8)).save(folder / f"{i}.bmp")
    ingest_folder(engine, folder, "bmp", progress=False)
    before = {r.path: r.vector_id for r in engine.store.image_records(engine.dataset("bmp").id)}
    target = folder / "0.bmp"
    stat = os.stat(target)
    replacement = tmp_path / "other.bmp"
    Image.fromarray(rng.integers(0, 255, (48, 64, 3), dtype=np.uint8)).save(replacement)
    assert replacement.stat().st_size == stat.st_size  # a BMP's size depends on its width and height only
    with open(target, "r+b") as handle:  # the same file, rewritten in place: same inode
        handle.write(replacement.read_bytes())
    os.utime(target, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # and its old modification time put back
    again = ingest_folder(engine, folder, "bmp", progress=False)
    assert (again.reused, again.indexed) == (2, 1)
    after = {r.path: r.vector_id for r in engine.store.image_records(engine.dataset("bmp").id)}
    assert after[str(target)] != before[str(target)]
    best = search_by_image(engine, "bmp", replacement, 1)[0]
    assert best.path == str(target) and best.score > 0.999


# -- SQLite locked, read-only, damaged ---------------------------------------------------------------------------
def test_sqlite_locked_by_another_process_is_one_sentence(sqlite_engine, case, monkeypatch):
    from image_search.store import sqlite

    sqlite_engine.datasets()  # the file exists
    monkeypatch.setattr(sqlite, "LOCK_WAIT_SECONDS", 1.0)
    holder = subprocess.Popen([sys.executable, "-c", "import sqlite3, sys, time; c = sqlite3.connect(sys.argv[1]); "
                               "c.execute('BEGIN IMMEDIATE'); print('held', flush=True); time.sleep(60)",
                               str(sqlite_engine.data_home / "metadata.sqlite3")], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        engine = ImageSearch(sqlite_engine.settings, models=shared_models)
        with pytest.raises(StoreUnavailableError, match=r"is locked by another process, which kept it for more than "
                                                        r"1 s; wait for that process to finish"):
            ingest_folder(engine, case, "locked", progress=False)
    finally:
        holder.kill()
        holder.wait()
    assert ingest_folder(ImageSearch(sqlite_engine.settings, models=shared_models), case, "locked",
                         progress=False).total == 6


def test_a_read_only_data_folder_is_one_sentence(tmp_path, case):
    home = tmp_path / "read-only"
    home.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(home)], capture_output=True,
                          text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a read-only tmpfs here ({done.stderr.strip()})")
    try:
        result = run_tool("cli.cli_preprocess", "-i", case, "-n", "ro", "--no-progress", env=tool_env(home, None))
    finally:
        subprocess.run(["umount", "-l", str(home)], check=False)
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1, result.stderr
    assert f"The data folder {home} cannot be written (read-only file system)" in lines[0]


def test_a_damaged_sqlite_page_is_one_sentence(sqlite_engine, case):
    ingest_folder(sqlite_engine, case, "case", progress=False)
    sqlite_engine.close()
    database = sqlite_engine.data_home / "metadata.sqlite3"
    data = bytearray(database.read_bytes())
    page = 4096
    for start in range(page, len(data), page):  # every page but the first (the header and the schema)
        data[start:start + page] = bytes(range(256)) * (page // 256)
    database.write_bytes(bytes(data))
    env = tool_env(sqlite_engine.data_home, None)
    for args in (["cli.cli_search", "-q", "x", "-n", "case"], ["cli.cli_datasets", "list"]):
        result = run_tool(*args, env=env)
        lines = result.stderr.strip().splitlines()
        assert result.returncode == 2 and len(lines) == 1, result.stderr
        assert f"The SQLite database {database} is damaged" in lines[0] and "restore it from a backup" in lines[0]


@pytest.fixture
def ext4_image(tmp_path):
    """A small ext4 file system in a file, mounted, that a test can edit offline (as a disk image is)."""
    image, mount = tmp_path / "disk.img", tmp_path / "disk"
    mount.mkdir()
    with open(image, "wb") as handle:
        handle.truncate(16 * 1024 * 1024)
    made = subprocess.run(["mkfs.ext4", "-q", "-F", "-b", "1024", str(image)], capture_output=True, text=True)
    mounted = made.returncode == 0 and subprocess.run(["mount", "-o", "loop", str(image), str(mount)],
                                                      capture_output=True).returncode == 0
    if not mounted:
        pytest.skip(f"cannot make and loop-mount an ext4 image here ({made.stderr.strip()})")
    try:
        yield image, mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def edit_offline(image: Path, mount: Path, name: str, data: bytes) -> None:
    """Overwrite bytes inside a file's data blocks with the file system unmounted: size, times and inode stay."""
    subprocess.run(["umount", str(mount)], check=True)
    blocks = subprocess.run(["debugfs", "-R", f"blocks /{name}", str(image)], capture_output=True, text=True,
                            check=True).stdout.split()
    with open(image, "r+b") as handle:
        handle.seek(int(blocks[len(blocks) // 2]) * 1024)
        handle.write(data)
    subprocess.run(["mount", "-o", "loop", str(image), str(mount)], check=True)


def test_verify_finds_content_changed_under_identical_size_times_and_inode(engine, ext4_image, cli_env):
    image, mount = ext4_image
    rng = np.random.default_rng(2)
    for i in range(4):
        Image.fromarray(rng.integers(0, 255, (48, 64, 3), dtype=np.uint8)).save(mount / f"{i}.bmp")
    ingest_folder(engine, mount, "disk", progress=False)
    target = mount / "2.bmp"
    before = os.stat(target)
    edit_offline(image, mount, "2.bmp", rng.integers(0, 255, 1024, dtype=np.uint8).tobytes())
    after = os.stat(target)
    assert (after.st_size, after.st_mtime_ns, after.st_ctime_ns, after.st_ino) == (
        before.st_size, before.st_mtime_ns, before.st_ctime_ns, before.st_ino)
    plain = ingest_folder(fresh(engine), mount, "disk", progress=False)
    assert (plain.reused, plain.indexed) == (4, 0)  # nothing but the bytes tells it
    result = run_tool("cli.cli_preprocess", "-i", mount, "-n", "disk", "--verify", "--no-progress", "--json",
                      env=cli_env)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["content_changed"] == [str(target)] and (report["reused"], report["indexed"]) == (3, 1)
    assert any("Verified 4 unchanged files against their recorded SHA-256: 1 had new content" in note
               for note in report["notes"])
    best = search_by_image(fresh(engine), "disk", target, 1)[0]
    assert best.path == str(target) and best.score > 0.999  # the vector is the new content's
    again = ingest_folder(fresh(engine), mount, "disk", progress=False, verify=True)
    assert again.content_changed == [] and again.indexed == 0
