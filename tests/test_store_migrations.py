"""Opening a store made by an earlier image-search: schema versions and migrations, on SQLite and PostgreSQL.

Version 1 stores are written by the real version 1 code: tests/fixtures/store_v1_775b8ca.py is image_search/store.py
as of commit 775b8ca, the last one before schema versions, kept verbatim and loaded as a module of image_search (its
relative imports name today's config and errors). The end-to-end test goes further and runs that commit's whole
ingest tool, when this checkout has the commit.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import asdict, replace
from pathlib import Path

import pytest

from evaluation.sample_images import write_photos
from image_search.config import Settings
from image_search.service import ImageSearch
from image_search.errors import StoreUnavailableError
from image_search.ingest import ingest_folder
from image_search.search import search_by_text
from image_search.store import open_store, schema
from tests.conftest import REPO, TEST_MODEL, ingest_with_release, release_code, run_tool, tool_env

V1_COMMIT = "775b8ca"
V1_CODE = Path(__file__).parent / "fixtures" / "store_v1_775b8ca.py"

ROOT = os.fsdecode(b"/cases/4711/\xff\xfeevidence")  # not valid UTF-8, like every path below but the last two
PATHS = [ROOT + os.fsdecode(b"/caf\xe9.jpg"), ROOT + os.fsdecode(b"/sub dir/\x80\x81.jpg"), ROOT + "/Ünïcode.jpg",
         ROOT + "/it's; DROP TABLE images.png"]

V1_IMAGE_COLUMNS = ["dataset_id", "vector_id", "path", "size", "mtime_ns"]
DATASET_COLUMNS = ("id, name, uid, model, dim, root, image_count, generation, next_vector_id, index_kind, created_at, "
                   "updated_at")


def load_v1_code():
    name = "image_search._store_v1_775b8ca"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, V1_CODE)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


# -- places for stores: a data folder, and for PostgreSQL a database of the test's own -------------------------------
def drop_database(database) -> None:
    import psycopg2

    admin = psycopg2.connect(host=database.host, port=database.port, user=database.user,
                             password=database.password, dbname="postgres")
    admin.autocommit = True
    with admin.cursor() as cursor:
        cursor.execute(f'DROP DATABASE IF EXISTS "{database.name}" WITH (FORCE)')
    admin.close()


@pytest.fixture
def make_place(backend, tmp_path):
    """make_place() -> (data_home, DatabaseSettings or None) of a store that does not exist yet."""
    kind, session_database = backend
    made = []

    def make():
        home = tmp_path / f"home{len(made)}"
        home.mkdir()
        database = None
        if session_database is not None:
            database = replace(session_database, name=f"{session_database.name}_m{uuid.uuid4().hex[:8]}")
        made.append(database)
        return home, database

    yield make
    for database in made:
        if database is not None:
            drop_database(database)


def v1_store(place):
    home, database = place
    old = load_v1_code()
    return old.SQLiteStore(home / "metadata.sqlite3") if database is None else old.PostgresStore(database)


def new_store(place):
    home, database = place
    return open_store(database, home)


# -- looking inside a store -----------------------------------------------------------------------------------------
def rows(store, statement: str) -> list[tuple]:
    with store._cursor() as cursor:
        cursor.execute(statement)
        return [tuple(bytes(v) if isinstance(v, memoryview) else v for v in row) for row in cursor.fetchall()]


def is_postgres(store) -> bool:
    return store.placeholder != "?"


def tables(store) -> list[str]:
    if is_postgres(store):
        found = rows(store, "SELECT table_name FROM information_schema.tables WHERE table_schema = current_schema()")
    else:
        found = rows(store, "SELECT name FROM sqlite_master WHERE type = 'table'")
    return sorted(name for (name,) in found)


def columns(store, table: str) -> list[tuple]:
    """(name, type, nullable) of each column, in order."""
    if is_postgres(store):
        return [(n, t.upper(), nullable == "YES") for n, t, nullable in rows(
            store, "SELECT column_name, data_type, is_nullable FROM information_schema.columns WHERE table_schema = "
                   f"current_schema() AND table_name = '{table}' ORDER BY ordinal_position")]
    return [(n, t.upper(), not notnull) for _, n, t, notnull, _, _ in rows(store, f"PRAGMA table_info({table})")]


def layout(store) -> dict:
    """Every table's columns and every index's definition."""
    if is_postgres(store):
        indexes = rows(store, "SELECT indexname, indexdef FROM pg_indexes WHERE schemaname = current_schema() "
                              "ORDER BY indexname")
    else:
        indexes = rows(store, "SELECT name, sql FROM sqlite_master WHERE type = 'index' ORDER BY name")
    return {"tables": {table: columns(store, table) for table in tables(store)}, "indexes": indexes}


def version(store) -> int | None:
    with store._cursor() as cursor:
        return schema.stored_version(store, cursor)


def contents(store) -> dict:
    """Every stored value of the version 1 columns, exactly as the database holds it."""
    return {"datasets": rows(store, f"SELECT {DATASET_COLUMNS} FROM datasets ORDER BY id"),
            "images": rows(store, f"SELECT {', '.join(V1_IMAGE_COLUMNS)} FROM images ORDER BY dataset_id, vector_id")}


def v1_fields(image_record) -> dict:
    """An ImageRecord as plain values, without the fields added since version 1 while they are empty (a migrated
    row has no facts, inode or change time until its next ingest fills them in)."""
    return {k: v for k, v in asdict(image_record).items() if not (k in ("ctime_ns", "inode", "facts") and v is None)}


def answers(store) -> dict:
    """What the store's own methods return, as plain values (the records of either version's classes)."""
    datasets = store.list_datasets()
    return {"datasets": [asdict(d) for d in datasets],
            "found": [asdict(store.require_dataset(d.name)) for d in datasets],
            "images": {d.name: sorted((v1_fields(r) for r in store.image_records(d.id)), key=lambda r: r["vector_id"])
                       for d in datasets},
            "vector_ids": {d.name: sorted(store.vector_ids(d.id)) for d in datasets},
            "lookups": {d.name: store.lookup_paths(d.id, range(1, 8), uid=d.uid) for d in datasets}}


def write_v1_store(place) -> dict:
    """A store written by the version 1 code: two datasets, non-UTF-8 paths, one update with a removal.
    Returns what the version 1 code answered about it."""
    old = load_v1_code()
    store = v1_store(place)
    first = store.commit_generation(
        dataset=old.NewDataset("case-a", "uid-a", "test-tiny", 64, ROOT, "flat"), base_generation=0,
        new_generation=1, added=[old.ImageRecord(i + 1, p, 1000 + i, 1_700_000_000_123_456_789 + i)
                                 for i, p in enumerate(PATHS)],
        removed_ids=[], image_count=len(PATHS), next_vector_id=len(PATHS) + 1)
    store.commit_generation(dataset=first, base_generation=1, new_generation=2,
                            added=[old.ImageRecord(5, ROOT + os.fsdecode(b"/new\xfe.jpg"), 7, 8)], removed_ids=[3],
                            image_count=len(PATHS), next_vector_id=6)
    store.commit_generation(
        dataset=old.NewDataset("case-b", "uid-b", "ViT-B-32:random", 512, "/plain/root", "ivf"), base_generation=0,
        new_generation=1, added=[old.ImageRecord(1, "/plain/root/x.jpg", 1, 2)], removed_ids=[], image_count=1,
        next_vector_id=2)
    view = answers(store)
    store.close()
    return view


def new_engine(place) -> ImageSearch:
    home, database = place
    return ImageSearch(Settings(data_home=home, model_name=TEST_MODEL, device="cpu", database=database))


# -- tests --------------------------------------------------------------------------------------------------------
def test_the_version_1_code_is_commit_775b8ca_verbatim():
    shown = subprocess.run(["git", "-C", str(REPO), "show", f"{V1_COMMIT}:image_search/store.py"],
                           capture_output=True)
    if shown.returncode != 0:
        pytest.skip(f"this checkout does not have commit {V1_COMMIT} to compare with")
    assert V1_CODE.read_bytes() == shown.stdout


def test_a_version_1_store_is_migrated_with_every_row_intact(make_place):
    place = make_place()
    v1_answers = write_v1_store(place)
    old = v1_store(place)
    before, v1_layout = contents(old), layout(old)
    old.close()
    assert "schema_info" not in v1_layout["tables"]
    assert [c[0] for c in v1_layout["tables"]["images"]] == V1_IMAGE_COLUMNS

    store = new_store(place)
    try:
        store.ensure_schema()
        assert version(store) == schema.latest_version() == 3
        assert contents(store) == before  # raw bytes of every path, every number and timestamp
        assert answers(store) == v1_answers
        counts = rows(store, "SELECT COUNT(*), COUNT(ctime_ns), COUNT(inode), COUNT(sha256), COUNT(gps_lat) "
                             "FROM images")
        assert counts == [(len(before["images"]), 0, 0, 0, 0)]  # the new columns are there, and NULL in every row
        images = columns(store, "images")
        assert images[:5] == v1_layout["tables"]["images"]
        assert images[5:7] == [("ctime_ns", "BIGINT", True), ("inode", "BIGINT", True)]
        assert [name for name, _, nullable in images[7:] if nullable] == [
            "sha256", "md5", "width", "height", "format", "taken_at", "taken_offset", "camera_make", "camera_model",
            "lens", "gps_lat", "gps_lon", "orientation"]
        assert "images_by_sha256" in [name for name, _ in layout(store)["indexes"]]
        assert rows(store, "SELECT path FROM images WHERE vector_id = 1 AND dataset_id = 1") == [
            (b"/cases/4711/\xff\xfeevidence/caf\xe9.jpg",)]
    finally:
        store.close()


def test_a_new_store_is_laid_out_exactly_like_a_migrated_one(make_place):
    migrated_place, new_place = make_place(), make_place()
    write_v1_store(migrated_place)
    migrated, new = new_store(migrated_place), new_store(new_place)
    try:
        migrated.ensure_schema()
        new.ensure_schema()
        assert version(new) == version(migrated) == schema.latest_version()
        assert layout(new) == layout(migrated)
        assert ("ctime_ns", "BIGINT", True) in layout(new)["tables"]["images"]
        assert rows(new, "SELECT version FROM schema_info") == [(schema.latest_version(),)]
    finally:
        migrated.close()
        new.close()


def test_an_ingest_into_a_migrated_store_works_and_reuses_unchanged_images(make_place, photos):
    place = make_place()
    v1_answers = write_v1_store(place)
    engine = new_engine(place)
    try:
        first = ingest_folder(engine, photos, "fresh", progress=False)
        assert first.created and first.indexed == 12
        again = ingest_folder(engine, photos, "fresh", progress=False)
        assert again.reused == 12 and again.indexed == 0 and again.removed == 0
        results = search_by_text(engine, "fresh", "a photo", 5)
        assert len(results) == 5 and all(os.path.dirname(r.path) == os.path.realpath(photos) for r in results)
        assert [d.name for d in engine.datasets()] == ["case-a", "case-b", "fresh"]
        assert answers(engine.store)["images"]["case-a"] == v1_answers["images"]["case-a"]
    finally:
        engine.close()


def test_concurrent_first_opens_migrate_once(make_place, monkeypatch):
    place = make_place()
    write_v1_store(place)
    applied = []
    real_statements = schema.MIGRATIONS[0][1]

    def counted_migration(store, cursor):
        applied.append(store)
        time.sleep(0.3)  # hold the schema lock while the other opens arrive
        for statement in real_statements:
            cursor.execute(statement)

    monkeypatch.setattr(schema, "MIGRATIONS", [(1, counted_migration)])
    stores = [new_store(place) for _ in range(3)]  # a connection each, as separate processes have
    barrier = threading.Barrier(len(stores))
    failures = []

    def open_store_now(store):
        barrier.wait()
        try:
            store.ensure_schema()
        except Exception as error:  # collected, so the assertion below names it
            failures.append(error)

    threads = [threading.Thread(target=open_store_now, args=(s,)) for s in stores]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    try:
        assert failures == [] and len(applied) == 1
        later = new_store(place)
        later.ensure_schema()  # a later process finds it migrated
        assert len(applied) == 1 and version(later) == 2
        assert rows(later, "SELECT COUNT(*) FROM schema_info") == [(1,)]
        later.close()
    finally:
        for store in stores:
            store.close()


def test_a_store_from_a_newer_version_is_refused_and_left_untouched(make_place):
    place = make_place()
    write_v1_store(place)
    store = new_store(place)
    store.ensure_schema()
    with store._cursor(write=True) as cursor:
        cursor.execute("UPDATE schema_info SET version = 7")
    before = (contents(store), layout(store), version(store))
    description = store.description
    store.close()

    store = new_store(place)
    try:
        with pytest.raises(StoreUnavailableError) as refused:
            store.ensure_schema()
        assert str(refused.value) == (f"The {description} was made by a newer version of image-search (schema "
                                      "version 7; this one knows up to 3); upgrade image-search.")
        with pytest.raises(StoreUnavailableError, match="newer version"):
            store.list_datasets()  # every use is refused, not just the first
        assert (contents(store), layout(store), version(store)) == before
    finally:
        store.close()

    done = run_tool("cli.cli_datasets", "list", env=tool_env(*place))
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr == f"error: The {description} was made by a newer version of image-search (schema version 7; " \
                          "this one knows up to 3); upgrade image-search.\n"


def fails_in_python(store, cursor):
    store._execute(cursor, "DELETE FROM images")  # some work first, which must be rolled back too
    raise RuntimeError("the disk is on fire")


FAILS_IN_SQL = ("DELETE FROM images", "ALTER TABLE no_such_table ADD COLUMN x BIGINT")


@pytest.mark.parametrize("failing_step", [fails_in_python, FAILS_IN_SQL], ids=["python", "sql"])
def test_a_failing_migration_leaves_the_store_at_version_1_with_its_data(make_place, monkeypatch, failing_step):
    place = make_place()
    v1_answers = write_v1_store(place)
    old = v1_store(place)
    before, v1_layout = contents(old), layout(old)
    old.close()
    latest = schema.latest_version()
    monkeypatch.setattr(schema, "MIGRATIONS", [*schema.MIGRATIONS, (latest, failing_step)])

    store = new_store(place)
    try:
        with pytest.raises(StoreUnavailableError) as failed:
            store.ensure_schema()
        message = str(failed.value)
        assert message.startswith(f"Upgrading the {store.description} from schema version 1 to {latest + 1} failed (")
        assert message.endswith("); it was rolled back and nothing was changed, so fix the cause and run "
                                "image-search again.")
        assert "\n" not in message
        if failing_step is fails_in_python:
            assert "(the disk is on fire)" in message
        # not even the successful earlier steps are left: the store is exactly what version 1 wrote
        assert layout(store) == v1_layout and contents(store) == before and version(store) is None
    finally:
        store.close()

    monkeypatch.undo()
    store = new_store(place)
    try:
        store.ensure_schema()
        assert version(store) == latest and answers(store) == v1_answers
    finally:
        store.close()


def test_a_failing_first_open_leaves_a_new_store_empty(make_place, monkeypatch):
    place = make_place()
    monkeypatch.setattr(schema, "MIGRATIONS", [*schema.MIGRATIONS, (schema.latest_version(), fails_in_python)])
    store = new_store(place)
    try:
        with pytest.raises(StoreUnavailableError) as failed:
            store.ensure_schema()
        assert str(failed.value) == (f"Creating the tables of the {store.description} failed (the disk is on fire); "
                                     "it was rolled back and nothing was changed, so fix the cause and run "
                                     "image-search again.")
        assert tables(store) == []  # not even the version 1 tables
    finally:
        store.close()


def test_sqlite_users_never_import_psycopg2(tmp_path):
    check = ("import sys; from image_search.store import open_store; store = open_store(None, sys.argv[1]); "
             "store.ensure_schema(); store.list_datasets(); store.close(); "
             "assert 'psycopg2' not in sys.modules, 'psycopg2 was imported'")
    done = subprocess.run([sys.executable, "-c", check, str(tmp_path)], cwd=REPO, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


# -- end to end: a dataset ingested by the version 1 release --------------------------------------------------
@pytest.fixture(scope="session")
def v1_release(tmp_path_factory) -> Path:
    """The image_search and cli folders of commit 775b8ca."""
    return release_code(tmp_path_factory.mktemp("release-775b8ca"), V1_COMMIT)


def test_a_dataset_ingested_by_the_version_1_release_keeps_working(make_place, v1_release, photos, tmp_path):
    place = make_place()
    folder = Path(os.path.realpath(tmp_path)) / "case"
    shutil.copytree(photos, folder)
    odd_name = os.fsdecode(os.fsencode(folder) + b"/caf\xe9 \xff.jpg")
    os.rename(folder / "photo_00003.jpg", odd_name)
    ingest_with_release(v1_release, folder, "old-case", tool_env(*place))
    old = v1_store(place)
    assert "schema_info" not in tables(old)  # really written by the version 1 code
    old.close()

    engine = new_engine(place)
    try:
        record = engine.dataset("old-case")
        assert version(engine.store) == schema.latest_version()
        assert record.image_count == 12 and record.root == str(folder)
        on_disk = {os.path.join(str(folder), name) for name in os.listdir(str(folder))}
        assert {r.path for r in engine.store.image_records(record.id)} == on_disk and odd_name in on_disk
        results = search_by_text(engine, "old-case", "a photo", 12)
        assert {r.path for r in results} == on_disk

        again = ingest_folder(engine, folder, "old-case", progress=False)
        assert again.reused == 12 and again.indexed == 0 and again.removed == 0
        # the one change: the hashes and EXIF that version 1 did not record (tests/test_forensic_capture.py)
        assert again.facts_updated == 12 and engine.dataset("old-case").generation == record.generation
        os.remove(odd_name)
        write_photos(folder, 1, megapixels=0.1, seed=42, prefix="added")
        updated = ingest_folder(engine, folder, "old-case", progress=False)
        assert updated.reused == 11 and updated.indexed == 1 and updated.removed == 1
        assert len(search_by_text(engine, "old-case", "a photo", 50)) == 12
    finally:
        engine.close()
