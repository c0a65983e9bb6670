"""The schema of the metadata store, its version, and the ordered migrations that bring an older store up to it.

The schema is the same for SQLite and PostgreSQL up to the dialect's column types. Version 1 is what every store
had before versions were recorded (image-search up to commit 775b8ca): its tables, without a schema_info table.
A store is always built the same way, whether it is new or old: the version 1 tables (CREATE ... IF NOT EXISTS, as
the unversioned code did on every open), then every migration from the store's version on, then the version
recorded in schema_info; all of it in one transaction, so a failure leaves the store exactly as it was. A new
store therefore has exactly the tables a migrated one has.

To change the schema, append one (from_version, step) entry to MIGRATIONS: a step is a sequence of statements
(with {serial_pk} and {blob} for the dialect's types) or a function called with the store and the open cursor.
"""

from __future__ import annotations

from typing import Callable, Sequence, Union

from ..errors import StoreUnavailableError

BASELINE_VERSION = 1
BASELINE = """
CREATE TABLE IF NOT EXISTS datasets (
    id {serial_pk},
    name TEXT NOT NULL UNIQUE,
    uid TEXT NOT NULL UNIQUE,
    model TEXT NOT NULL,
    dim INTEGER NOT NULL,
    root {blob} NOT NULL,
    image_count BIGINT NOT NULL,
    generation BIGINT NOT NULL,
    next_vector_id BIGINT NOT NULL,
    index_kind TEXT NOT NULL,
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS images (
    dataset_id INTEGER NOT NULL REFERENCES datasets(id) ON DELETE CASCADE,
    vector_id BIGINT NOT NULL,
    path {blob} NOT NULL,
    size BIGINT NOT NULL,
    mtime_ns BIGINT NOT NULL,
    PRIMARY KEY (dataset_id, vector_id)
);
CREATE UNIQUE INDEX IF NOT EXISTS images_by_path ON images (dataset_id, path);
"""

Step = Union[Sequence[str], Callable[..., None]]

MIGRATIONS: list[tuple[int, Step]] = [
    # 1 -> 2: the inode and change time of each file, for telling a file whose content changed from an unchanged
    # one when size and modification time are the same. Nullable, so old rows need no value; nothing reads them yet.
    (1, ("ALTER TABLE images ADD COLUMN ctime_ns BIGINT",
         "ALTER TABLE images ADD COLUMN inode BIGINT")),
    # 2 -> 3: what an investigator needs around a hit, captured when the file is read for embedding (records.py's
    # ImageFacts, filled by pipeline/facts.py): hashes, pixel size, format and EXIF. Nullable: rows written before
    # have NULL sha256 until their dataset's next ingest fills them in without embedding again.
    (2, ("ALTER TABLE images ADD COLUMN sha256 TEXT",
         "ALTER TABLE images ADD COLUMN md5 TEXT",
         "ALTER TABLE images ADD COLUMN width INTEGER",
         "ALTER TABLE images ADD COLUMN height INTEGER",
         "ALTER TABLE images ADD COLUMN format TEXT",
         "ALTER TABLE images ADD COLUMN taken_at TEXT",
         "ALTER TABLE images ADD COLUMN taken_offset TEXT",
         "ALTER TABLE images ADD COLUMN camera_make TEXT",
         "ALTER TABLE images ADD COLUMN camera_model TEXT",
         "ALTER TABLE images ADD COLUMN lens TEXT",
         "ALTER TABLE images ADD COLUMN gps_lat DOUBLE PRECISION",
         "ALTER TABLE images ADD COLUMN gps_lon DOUBLE PRECISION",
         "ALTER TABLE images ADD COLUMN orientation INTEGER",
         "CREATE INDEX images_by_sha256 ON images (dataset_id, sha256)")),
]

VERSION_TABLE = "schema_info"


def latest_version() -> int:
    """The version this code builds: one past the last migration's starting version."""
    return MIGRATIONS[-1][0] + 1 if MIGRATIONS else BASELINE_VERSION


def stored_version(store, cursor) -> int | None:
    """The version recorded in the store; None when none is (a new store, or one made before versions)."""
    if not store._has_table(cursor, VERSION_TABLE):
        return None
    store._execute(cursor, f"SELECT MAX(version) FROM {VERSION_TABLE}")
    row = cursor.fetchone()
    return int(row[0]) if row and row[0] is not None else None


def refuse_newer(store, version: int | None) -> None:
    latest = latest_version()
    if version is not None and version > latest:
        raise StoreUnavailableError(
            f"The {store.description} was made by a newer version of image-search (schema version {version}; "
            f"this one knows up to {latest}); upgrade image-search.")


def bring_up_to_date(store, cursor) -> None:
    """Create or migrate the store to latest_version() inside the caller's transaction, which holds the store's
    schema lock, so that of two processes opening an old store at once one migrates and the other sees the result."""
    version = stored_version(store, cursor)
    refuse_newer(store, version)
    latest = latest_version()
    if version == latest:
        return
    start = BASELINE_VERSION if version is None else version
    if version is None and not store._has_table(cursor, "datasets"):
        action = f"Creating the tables of the {store.description}"
    else:
        action = f"Upgrading the {store.description} from schema version {start} to {latest}"
    try:
        if version is None:
            _apply(store, cursor, BASELINE.split(";"))
        for from_version, step in MIGRATIONS:
            if from_version >= start:
                _apply(store, cursor, step)
        store._execute(cursor, f"CREATE TABLE IF NOT EXISTS {VERSION_TABLE} (version INTEGER NOT NULL)")
        store._execute(cursor, f"DELETE FROM {VERSION_TABLE}")
        store._execute(cursor, f"INSERT INTO {VERSION_TABLE} (version) VALUES (?)", (latest,))
    except Exception as error:
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise StoreUnavailableError(
            f"{action} failed ({reason}); it was rolled back and nothing was changed, so fix the cause and run "
            "image-search again.") from error


def _apply(store, cursor, step: Step) -> None:
    if callable(step):
        step(store, cursor)
        return
    for statement in step:
        if statement.strip():
            cursor.execute(statement.format(serial_pk=store.serial_pk, blob=store.blob))
