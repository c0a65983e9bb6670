"""The metadata store: datasets and the image path behind every vector id.

One schema and one set of SQL statements serve both backends: PostgreSQL when DB_HOST is configured, else an
embedded SQLite file in the data directory. Statements are written with '?' placeholders and every value is
passed as a parameter. Paths are stored as the file system's raw bytes so that names which are not valid UTF-8
survive the round trip.

A dataset's vectors live in a FAISS index file whose generation number is recorded here; an ingest commits its
new rows, its removals and the new generation in one transaction, which is what keeps the index file and the
metadata in step (see image_search.index).
"""

from __future__ import annotations

import os
import sqlite3
import threading
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterable, Iterator, Sequence

from .config import DatabaseSettings
from .errors import DatasetExistsError, DatasetNotFoundError, ImageSearchError, StoreUnavailableError

_SCHEMA = """
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

_DATASET_COLUMNS = ("id, name, uid, model, dim, root, image_count, generation, next_vector_id, index_kind, "
                    "created_at, updated_at")

_BATCH = 1000


def encode_path(path: str) -> bytes:
    return os.fsencode(path)


def decode_path(raw: bytes | memoryview) -> str:
    return os.fsdecode(bytes(raw))


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


@dataclass(frozen=True)
class DatasetRecord:
    id: int
    name: str
    uid: str
    model: str
    dim: int
    root: str
    image_count: int
    generation: int
    next_vector_id: int
    index_kind: str
    created_at: str
    updated_at: str

    @classmethod
    def from_row(cls, row: Sequence) -> "DatasetRecord":
        values = list(row)
        values[5] = decode_path(values[5])
        return cls(*values)


@dataclass(frozen=True)
class ImageRecord:
    vector_id: int
    path: str
    size: int
    mtime_ns: int


@dataclass(frozen=True)
class NewDataset:
    """What an ingest of a new name commits together with its first generation."""
    name: str
    uid: str
    model: str
    dim: int
    root: str
    index_kind: str


class MetadataStore:
    """Backend-neutral operations; subclasses supply connections and the dialect."""

    placeholder = "?"
    serial_pk = "INTEGER PRIMARY KEY"
    blob = "BLOB"
    description = ""

    def __init__(self) -> None:
        self._schema_ready = False

    # -- connection handling (backend specific) -------------------------------------------------------------
    @contextmanager
    def _connection(self):  # pragma: no cover - abstract
        raise NotImplementedError
        yield

    def close(self) -> None:
        pass

    def _sql(self, statement: str) -> str:
        return statement if self.placeholder == "?" else statement.replace("?", self.placeholder)

    @contextmanager
    def _cursor(self, *, write: bool = False):
        with self._connection() as connection:
            cursor = connection.cursor()
            try:
                yield cursor
                connection.commit()
            except BaseException:
                connection.rollback()
                raise
            finally:
                cursor.close()

    def _execute(self, cursor, statement: str, params: Sequence = ()) -> None:
        cursor.execute(self._sql(statement), tuple(params))

    def _execute_many(self, cursor, statement: str, rows: Iterable[Sequence]) -> None:
        batch: list[tuple] = []
        sql = self._sql(statement)
        for row in rows:
            batch.append(tuple(row))
            if len(batch) >= _BATCH:
                cursor.executemany(sql, batch)
                batch.clear()
        if batch:
            cursor.executemany(sql, batch)

    def ensure_schema(self) -> None:
        if self._schema_ready:
            return
        ddl = _SCHEMA.format(serial_pk=self.serial_pk, blob=self.blob)
        with self._cursor(write=True) as cursor:
            self._create_schema(cursor, ddl)
        self._schema_ready = True

    def _create_schema(self, cursor, ddl: str) -> None:
        for statement in ddl.split(";"):
            if statement.strip():
                cursor.execute(statement)

    # -- datasets ---------------------------------------------------------------------------------------------
    def get_dataset(self, name: str) -> DatasetRecord | None:
        self.ensure_schema()
        with self._cursor() as cursor:
            self._execute(cursor, f"SELECT {_DATASET_COLUMNS} FROM datasets WHERE name = ?", (name,))
            row = cursor.fetchone()
        return DatasetRecord.from_row(row) if row else None

    def require_dataset(self, name: str) -> DatasetRecord:
        record = self.get_dataset(name)
        if record is None:
            known = [d.name for d in self.list_datasets()]
            hint = f"known datasets: {', '.join(known)}" if known else "there are no datasets yet; ingest a folder first"
            raise DatasetNotFoundError(f"There is no dataset named '{name}' ({hint}).")
        return record

    def list_datasets(self) -> list[DatasetRecord]:
        self.ensure_schema()
        with self._cursor() as cursor:
            self._execute(cursor, f"SELECT {_DATASET_COLUMNS} FROM datasets ORDER BY name")
            rows = cursor.fetchall()
        return [DatasetRecord.from_row(row) for row in rows]

    def delete_dataset(self, name: str) -> DatasetRecord:
        record = self.require_dataset(name)
        with self._cursor(write=True) as cursor:
            self._execute(cursor, "DELETE FROM images WHERE dataset_id = ?", (record.id,))
            self._execute(cursor, "DELETE FROM datasets WHERE id = ?", (record.id,))
        return record

    # -- images -----------------------------------------------------------------------------------------------
    def image_records(self, dataset_id: int) -> list[ImageRecord]:
        with self._cursor() as cursor:
            self._execute(cursor, "SELECT vector_id, path, size, mtime_ns FROM images WHERE dataset_id = ?",
                          (dataset_id,))
            rows = cursor.fetchall()
        return [ImageRecord(int(v), decode_path(p), int(s), int(m)) for v, p, s, m in rows]

    def vector_ids(self, dataset_id: int) -> list[int]:
        with self._cursor() as cursor:
            self._execute(cursor, "SELECT vector_id FROM images WHERE dataset_id = ?", (dataset_id,))
            return [int(row[0]) for row in cursor.fetchall()]

    def lookup_paths(self, dataset_id: int, vector_ids: Sequence[int],
                     uid: str | None = None) -> tuple[dict[int, str], int | None]:
        """Paths of the given vector ids plus the dataset's current generation, in one query.

        The generation is None when the dataset is gone (or, given its uid, was replaced by another dataset that
        reuses the id), so a caller holding an index in memory learns in the same query whether it is current.
        """
        ids = [int(v) for v in vector_ids]
        marks = ", ".join("?" for _ in ids)
        join = f"LEFT JOIN images i ON i.dataset_id = d.id AND i.vector_id IN ({marks})" if ids else ""
        columns = "d.generation, i.vector_id, i.path" if ids else "d.generation, NULL, NULL"
        same_uid = " AND d.uid = ?" if uid is not None else ""
        statement = f"SELECT {columns} FROM datasets d {join} WHERE d.id = ?{same_uid}"
        with self._cursor() as cursor:
            self._execute(cursor, statement, (*ids, dataset_id, *([uid] if uid is not None else [])))
            rows = cursor.fetchall()
        if not rows:
            return {}, None
        generation = int(rows[0][0])
        return {int(v): decode_path(p) for _, v, p in rows if v is not None}, generation

    def commit_generation(self, *, dataset: DatasetRecord | NewDataset, base_generation: int, new_generation: int,
                          added: Iterable[ImageRecord], removed_ids: Sequence[int], image_count: int,
                          next_vector_id: int) -> DatasetRecord:
        """Atomically apply one ingest: insert added rows, drop removed ones, move the dataset to new_generation.

        For an existing dataset the update only happens if it is still at base_generation, so two writers can
        never both believe they committed on top of the same state.
        """
        self.ensure_schema()
        now = _now()
        with self._cursor(write=True) as cursor:
            if isinstance(dataset, NewDataset):
                self._execute(cursor, "SELECT 1 FROM datasets WHERE name = ?", (dataset.name,))
                if cursor.fetchone():
                    raise DatasetExistsError(f"A dataset named '{dataset.name}' was created meanwhile; "
                                             "ingest again to update it.")
                self._execute(
                    cursor,
                    "INSERT INTO datasets (name, uid, model, dim, root, image_count, generation, next_vector_id, "
                    "index_kind, created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (dataset.name, dataset.uid, dataset.model, dataset.dim, encode_path(dataset.root), image_count,
                     new_generation, next_vector_id, dataset.index_kind, now, now))
                self._execute(cursor, "SELECT id FROM datasets WHERE uid = ?", (dataset.uid,))
                dataset_id = int(cursor.fetchone()[0])
                name = dataset.name
            else:
                dataset_id, name = dataset.id, dataset.name
                self._execute(
                    cursor,
                    "UPDATE datasets SET generation = ?, image_count = ?, next_vector_id = ?, model = ?, dim = ?, "
                    "root = ?, index_kind = ?, updated_at = ? WHERE id = ? AND generation = ?",
                    (new_generation, image_count, next_vector_id, dataset.model, dataset.dim,
                     encode_path(dataset.root), dataset.index_kind, now, dataset_id, base_generation))
                if cursor.rowcount != 1:
                    raise ImageSearchError(f"Dataset '{name}' was changed by another process during this ingest; "
                                           "nothing was written, run the ingest again.")
            self._execute_many(cursor, "DELETE FROM images WHERE dataset_id = ? AND vector_id = ?",
                               ((dataset_id, vid) for vid in removed_ids))
            self._execute_many(
                cursor, "INSERT INTO images (dataset_id, vector_id, path, size, mtime_ns) VALUES (?, ?, ?, ?, ?)",
                ((dataset_id, r.vector_id, encode_path(r.path), r.size, r.mtime_ns) for r in added))
        record = self.get_dataset(name)
        assert record is not None
        return record


class SQLiteStore(MetadataStore):
    placeholder = "?"
    serial_pk = "INTEGER PRIMARY KEY"
    blob = "BLOB"

    def __init__(self, path: Path) -> None:
        super().__init__()
        self.path = Path(path)
        self.description = f"SQLite database {self.path}"
        self._local = threading.local()

    @contextmanager
    def _connection(self):
        connection = getattr(self._local, "connection", None)
        if connection is None:
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                connection = sqlite3.connect(self.path, timeout=60, check_same_thread=False)
                connection.execute("PRAGMA journal_mode=WAL")
                connection.execute("PRAGMA foreign_keys=ON")
                connection.execute("PRAGMA synchronous=FULL")
            except (sqlite3.Error, OSError) as error:
                raise StoreUnavailableError(f"Cannot open the SQLite database {self.path} ({error}); check that "
                                            "the data folder is writable or set IMAGE_SEARCH_HOME.") from None
            self._local.connection = connection
        yield connection

    def close(self) -> None:
        connection = getattr(self._local, "connection", None)
        if connection is not None:
            connection.close()
            self._local.connection = None


class PostgresStore(MetadataStore):
    placeholder = "%s"
    serial_pk = "SERIAL PRIMARY KEY"
    blob = "BYTEA"

    def __init__(self, settings: DatabaseSettings) -> None:
        super().__init__()
        import psycopg2  # noqa: F401  (imported here so SQLite users never pay for it)

        self.settings = settings
        self.description = f"PostgreSQL database '{settings.name}' at {settings.describe()}"
        self._local = threading.local()
        self._database_checked = False

    def _connect(self, database: str):
        import psycopg2

        return psycopg2.connect(host=self.settings.host, port=self.settings.port, user=self.settings.user,
                                password=self.settings.password, dbname=database, connect_timeout=10,
                                application_name="image-search")

    def _open(self):
        import psycopg2

        try:
            return self._connect(self.settings.name)
        except psycopg2.OperationalError as error:
            if "does not exist" in str(error) and not self._database_checked:
                self._create_database()
                return self._open()
            raise self._unavailable(error) from None

    def _create_database(self) -> None:
        import psycopg2
        from psycopg2 import sql

        self._database_checked = True
        try:
            admin = self._connect("postgres")
        except psycopg2.OperationalError as error:
            raise self._unavailable(error) from None
        try:
            admin.autocommit = True
            with admin.cursor() as cursor:
                cursor.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(self.settings.name)))
        except psycopg2.errors.DuplicateDatabase:
            pass
        except psycopg2.Error as error:
            raise StoreUnavailableError(f"Cannot create the PostgreSQL database '{self.settings.name}' at "
                                        f"{self.settings.describe()} ({str(error).strip()}); create it by hand or "
                                        "give DB_USER the right to create databases.") from None
        finally:
            admin.close()

    def _unavailable(self, error: Exception) -> StoreUnavailableError:
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        return StoreUnavailableError(
            f"Cannot reach the PostgreSQL database at {self.settings.describe()} ({reason}); start PostgreSQL or "
            "fix DB_HOST/DB_PORT/DB_USER/DB_PASSWORD in .env (or unset DB_HOST to use the built-in SQLite store).")

    @contextmanager
    def _connection(self):
        import psycopg2

        connection = getattr(self._local, "connection", None)
        if connection is not None and connection.closed:
            connection = None
        if connection is None:
            connection = self._open()
            self._local.connection = connection
        try:
            yield connection
        except (psycopg2.OperationalError, psycopg2.InterfaceError) as error:
            # The server went away mid-operation; drop the connection so the next call reconnects.
            try:
                connection.close()
            finally:
                self._local.connection = None
            raise self._unavailable(error) from None

    def _create_schema(self, cursor, ddl: str) -> None:
        # Serialise concurrent first runs: CREATE TABLE IF NOT EXISTS can race in PostgreSQL.
        cursor.execute("SELECT pg_advisory_xact_lock(7461726)")
        super()._create_schema(cursor, ddl)

    def _execute_many(self, cursor, statement: str, rows: Iterable[Sequence]) -> None:
        from psycopg2.extras import execute_batch

        execute_batch(cursor, self._sql(statement), [tuple(r) for r in rows], page_size=_BATCH)

    def close(self) -> None:
        connection = getattr(self._local, "connection", None)
        if connection is not None:
            connection.close()
            self._local.connection = None


def open_store(database: DatabaseSettings | None, data_home: Path) -> MetadataStore:
    if database is None:
        return SQLiteStore(Path(data_home) / "metadata.sqlite3")
    return PostgresStore(database)
