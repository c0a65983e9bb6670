"""The backend-neutral metadata store: every statement, written once with '?' placeholders.

Every value is passed as a parameter; a backend only supplies connections and its dialect (placeholder, the
serial primary key and the binary column type). An ingest commits its new rows, its removals and the new
generation in one transaction, which is what keeps the index file and the metadata in step (see
image_search.vectors).

A backend that keeps connections between operations (PostgreSQL) raises ConnectionLost when a kept one turns out
dead: the server restarted since it was last used. Every operation then runs once more on a new connection
(@reconnecting); the writes first check whether their transaction went through before the connection died.
"""

from __future__ import annotations

import functools
import os
from contextlib import contextmanager
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Callable, Iterable, Sequence

from ..errors import DatasetExistsError, DatasetNotFoundError, ImageSearchError, StoreUnreachableError
from . import schema
from .records import (FACT_COLUMNS, DatasetRecord, ImageCriteria, ImageFacts, ImageRecord, NewDataset, decode_path,
                      encode_path)

if TYPE_CHECKING:
    import numpy as np

_DATASET_COLUMNS = ("id, name, uid, model, dim, root, image_count, generation, next_vector_id, index_kind, "
                    "created_at, updated_at")

_IMAGE_COLUMNS = ", ".join(("vector_id", "path", "size", "mtime_ns", *FACT_COLUMNS))
_INSERTED_COLUMNS = ", ".join(("vector_id", "path", "size", "mtime_ns", "ctime_ns", "inode", *FACT_COLUMNS))
_SET_FACTS = ", ".join(f"{name} = ?" for name in FACT_COLUMNS)
_NO_FACTS = (None,) * len(FACT_COLUMNS)

BATCH = 1000


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


class ConnectionLost(StoreUnreachableError):
    """A connection kept from an earlier operation was found closed by the server (it restarted meanwhile); it
    has been dropped, so the next use connects again."""


def reconnecting(operation: Callable) -> Callable:
    """Run a store operation once more when it failed on a connection the server had closed meanwhile. Only for
    operations that may simply run again: reads, and writes that are whole transactions and idempotent."""

    @functools.wraps(operation)
    def run(self, *args, **kwargs):
        try:
            return operation(self, *args, **kwargs)
        except ConnectionLost:
            return operation(self, *args, **kwargs)

    return run


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

    def free_room(self) -> None:
        """Give back the room a store that lives in the data folder keeps for deleting on a full disk (SQLite)."""

    def keep_room(self) -> None:
        """Set that room aside again, where there is space for it."""

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
            if len(batch) >= BATCH:
                cursor.executemany(sql, batch)
                batch.clear()
        if batch:
            cursor.executemany(sql, batch)

    @reconnecting
    def ensure_schema(self) -> None:
        """Create the tables, or migrate an older store, on the first use by this process (image_search.store.schema).

        The common case, a store already at the latest version, costs one read and takes no lock."""
        if self._schema_ready:
            return
        with self._cursor() as cursor:
            version = schema.stored_version(self, cursor)
        schema.refuse_newer(self, version)
        if version != schema.latest_version():
            with self._cursor(write=True) as cursor:
                self._lock_schema(cursor)
                schema.bring_up_to_date(self, cursor)
        self._schema_ready = True

    def _lock_schema(self, cursor) -> None:  # pragma: no cover - abstract
        """Start the schema transaction holding a lock that serialises concurrent first opens."""
        raise NotImplementedError

    def _has_table(self, cursor, name: str) -> bool:  # pragma: no cover - abstract
        raise NotImplementedError

    # -- datasets ---------------------------------------------------------------------------------------------
    @reconnecting
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

    @reconnecting
    def list_datasets(self) -> list[DatasetRecord]:
        self.ensure_schema()
        with self._cursor() as cursor:
            self._execute(cursor, f"SELECT {_DATASET_COLUMNS} FROM datasets ORDER BY name")
            rows = cursor.fetchall()
        return [DatasetRecord.from_row(row) for row in rows]

    def delete_dataset(self, name: str) -> DatasetRecord:
        record = self.require_dataset(name)
        try:
            self._delete_rows(record)
        except ConnectionLost:
            if self.get_dataset(name) is not None:  # else the lost connection's transaction did go through
                self._delete_rows(record)
        return record

    def _delete_rows(self, record: DatasetRecord) -> None:
        with self._cursor(write=True) as cursor:
            self._execute(cursor, "DELETE FROM images WHERE dataset_id = ?", (record.id,))
            self._execute(cursor, "DELETE FROM datasets WHERE id = ?", (record.id,))

    # -- images -----------------------------------------------------------------------------------------------
    @reconnecting
    def image_records(self, dataset_id: int) -> list[ImageRecord]:
        with self._cursor() as cursor:
            self._execute(cursor, "SELECT vector_id, path, size, mtime_ns, ctime_ns, inode FROM images "
                                  "WHERE dataset_id = ?", (dataset_id,))
            rows = cursor.fetchall()
        return [ImageRecord(int(v), decode_path(p), int(s), int(m), None if c is None else int(c),
                            None if i is None else int(i)) for v, p, s, m, c, i in rows]

    @reconnecting
    def record_file_identity(self, dataset_id: int, rows: Iterable[tuple[int, int, int]]) -> None:
        """Fill the change time and inode of existing rows ((vector_id, ctime_ns, inode)), for rows written before
        they were recorded. It changes nothing a search sees, so it needs no new generation."""
        with self._cursor(write=True) as cursor:
            self._execute_many(cursor, "UPDATE images SET ctime_ns = ?, inode = ? WHERE dataset_id = ? AND "
                                       "vector_id = ?", ((c, i, dataset_id, v) for v, c, i in rows))

    @reconnecting
    def vector_ids(self, dataset_id: int) -> list[int]:
        with self._cursor() as cursor:
            self._execute(cursor, "SELECT vector_id FROM images WHERE dataset_id = ?", (dataset_id,))
            return [int(row[0]) for row in cursor.fetchall()]

    @reconnecting
    def recorded_sha256(self, dataset_id: int) -> dict[int, str]:
        """vector id -> the SHA-256 recorded when the file was ingested, for the rows that have one (--verify)."""
        with self._cursor() as cursor:
            self._execute(cursor, "SELECT vector_id, sha256 FROM images WHERE dataset_id = ? AND sha256 IS NOT NULL",
                          (dataset_id,))
            return {int(v): str(h) for v, h in cursor.fetchall()}

    @reconnecting
    def vector_ids_without_facts(self, dataset_id: int) -> set[int]:
        """The vector ids whose facts were never captured (rows written before schema 3)."""
        with self._cursor() as cursor:
            self._execute(cursor, "SELECT vector_id FROM images WHERE dataset_id = ? AND sha256 IS NULL",
                          (dataset_id,))
            return {int(row[0]) for row in cursor.fetchall()}

    @reconnecting
    def lookup_images(self, dataset_id: int, vector_ids: Sequence[int],
                      uid: str | None = None) -> tuple[dict[int, ImageRecord], int | None]:
        """The records (facts included) of the given vector ids plus the dataset's current generation, in one query.

        The generation is None when the dataset is gone (or, given its uid, was replaced by another dataset that
        reuses the id), so a caller holding an index in memory learns in the same query whether it is current.
        """
        ids = [int(v) for v in vector_ids]
        marks = ", ".join("?" for _ in ids)
        join = f"LEFT JOIN images i ON i.dataset_id = d.id AND i.vector_id IN ({marks})" if ids else ""
        image_columns = ", ".join(f"i.{name}" for name in _IMAGE_COLUMNS.split(", "))
        columns = f"d.generation, {image_columns}" if ids else "d.generation, NULL"
        same_uid = " AND d.uid = ?" if uid is not None else ""
        statement = f"SELECT {columns} FROM datasets d {join} WHERE d.id = ?{same_uid}"
        with self._cursor() as cursor:
            self._execute(cursor, statement, (*ids, dataset_id, *([uid] if uid is not None else [])))
            rows = cursor.fetchall()
        if not rows:
            return {}, None
        generation = int(rows[0][0])
        records = {}
        for row in rows:
            if row[1] is None:
                continue
            vector_id, path, size, mtime_ns = row[1:5]
            records[int(vector_id)] = ImageRecord(int(vector_id), decode_path(path), int(size), int(mtime_ns),
                                                  facts=ImageFacts.from_row(row[5:]))
        return records, generation

    @reconnecting
    def images_sharing_hashes(self, dataset_id: int,
                              uid: str | None = None) -> tuple[list[tuple[str, int]], int | None]:
        """(sha256, vector_id) of every image of the dataset whose SHA-256 another of its images shares, ordered by
        hash, plus the dataset's current generation, in one query (a consistent view, as lookup_images)."""
        same_uid = " AND d.uid = ?" if uid is not None else ""
        statement = ("SELECT d.generation, i.sha256, i.vector_id FROM datasets d LEFT JOIN images i "
                     "ON i.dataset_id = d.id AND i.sha256 IN (SELECT sha256 FROM images WHERE dataset_id = ? "
                     "AND sha256 IS NOT NULL GROUP BY sha256 HAVING COUNT(*) > 1) "
                     f"WHERE d.id = ?{same_uid} ORDER BY i.sha256, i.vector_id")
        with self._cursor() as cursor:
            self._execute(cursor, statement, (dataset_id, dataset_id, *([uid] if uid is not None else [])))
            rows = cursor.fetchall()
        if not rows:
            return [], None
        return [(str(sha), int(v)) for _, sha, v in rows if v is not None], int(rows[0][0])

    @reconnecting
    def count_without_hashes(self, dataset_id: int) -> int:
        """How many images of the dataset have no SHA-256 (written before schema 3, until their next ingest)."""
        with self._cursor() as cursor:
            self._execute(cursor, "SELECT COUNT(*) FROM images WHERE dataset_id = ? AND sha256 IS NULL",
                          (dataset_id,))
            return int(cursor.fetchone()[0])

    def lookup_paths(self, dataset_id: int, vector_ids: Sequence[int],
                     uid: str | None = None) -> tuple[dict[int, str], int | None]:
        """Paths of the given vector ids plus the dataset's current generation, in one query (lookup_images)."""
        records, generation = self.lookup_images(dataset_id, vector_ids, uid)
        return {vector_id: record.path for vector_id, record in records.items()}, generation

    def select_vector_ids(self, dataset_id: int, criteria: ImageCriteria) -> np.ndarray:
        """The vector ids (sorted, int64) of the dataset's images that meet every condition of `criteria`, in one
        parameterised query that both backends run as it is."""
        import numpy as np

        where, params = _criteria_sql(criteria)
        with self._cursor() as cursor:
            self._execute(cursor, f"SELECT vector_id FROM images WHERE dataset_id = ?{where}", (dataset_id, *params))
            ids = np.fromiter((row[0] for row in cursor.fetchall()), dtype=np.int64)
        ids.sort()
        return ids

    def lookup_copies(self, dataset_id: int, sha256s: Sequence[str],
                      uid: str | None = None) -> tuple[dict[str, list[tuple[int, str]]], int | None]:
        """(vector id, path) of every image of the dataset whose SHA-256 is one of `sha256s`, by SHA-256, plus the
        dataset's current generation (None when it is gone), in one query as lookup_paths does."""
        hashes = sorted(set(sha256s))
        marks = ", ".join("?" for _ in hashes)
        join = f"LEFT JOIN images i ON i.dataset_id = d.id AND i.sha256 IN ({marks})" if hashes else ""
        columns = "d.generation, i.sha256, i.vector_id, i.path" if hashes else "d.generation, NULL, NULL, NULL"
        same_uid = " AND d.uid = ?" if uid is not None else ""
        with self._cursor() as cursor:
            self._execute(cursor, f"SELECT {columns} FROM datasets d {join} WHERE d.id = ?{same_uid}",
                          (*hashes, dataset_id, *([uid] if uid is not None else [])))
            rows = cursor.fetchall()
        if not rows:
            return {}, None
        copies: dict[str, list[tuple[int, str]]] = {}
        for _, sha256, vector_id, path in rows:
            if sha256 is not None:
                copies.setdefault(sha256, []).append((int(vector_id), decode_path(path)))
        return copies, int(rows[0][0])

    def commit_generation(self, *, dataset: DatasetRecord | NewDataset, base_generation: int, new_generation: int,
                          added: Iterable[ImageRecord], removed_ids: Sequence[int], image_count: int,
                          next_vector_id: int,
                          refreshed_facts: Iterable[tuple[int, ImageFacts]] = ()) -> DatasetRecord:
        """Atomically apply one ingest: insert added rows, drop removed ones, fill in the facts of kept rows that had
        none (refreshed_facts: (vector_id, facts)), move the dataset to new_generation.

        For an existing dataset the update only happens if it is still at base_generation, so two writers can
        never both believe they committed on top of the same state.
        """
        self.ensure_schema()
        added = added if isinstance(added, Sequence) else list(added)  # a retry reads them again
        arguments = dict(dataset=dataset, base_generation=base_generation, new_generation=new_generation,
                         added=added, removed_ids=removed_ids, image_count=image_count, next_vector_id=next_vector_id,
                         refreshed_facts=list(refreshed_facts))
        try:
            self._write_generation(**arguments)
        except ConnectionLost:
            current = self.get_dataset(dataset.name)
            if current is None or (current.uid, current.generation) != (dataset.uid, new_generation):
                self._write_generation(**arguments)  # it did not go through: once more
        record = self.get_dataset(dataset.name)
        assert record is not None
        return record

    def _write_generation(self, *, dataset: DatasetRecord | NewDataset, base_generation: int, new_generation: int,
                          added: Sequence[ImageRecord], removed_ids: Sequence[int], image_count: int,
                          next_vector_id: int, refreshed_facts: Sequence[tuple[int, ImageFacts]] = ()) -> None:
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
            marks = ", ".join("?" for _ in _INSERTED_COLUMNS.split(", "))
            self._execute_many(
                cursor, f"INSERT INTO images (dataset_id, {_INSERTED_COLUMNS}) VALUES (?, {marks})",
                ((dataset_id, r.vector_id, encode_path(r.path), r.size, r.mtime_ns, r.ctime_ns, r.inode,
                  *(r.facts.as_row() if r.facts is not None else _NO_FACTS)) for r in added))
            self._update_facts(cursor, dataset_id, refreshed_facts)

    @reconnecting
    def refresh_facts(self, dataset: DatasetRecord, refreshed_facts: Iterable[tuple[int, ImageFacts]]) -> None:
        """Fill in the facts of kept rows (vector_id, facts) in one transaction, when an ingest changes nothing else:
        the index and the generation stay as they are. Refused when the dataset moved on from dataset.generation."""
        with self._cursor(write=True) as cursor:
            # the update of the dataset's own row takes its row lock first, as commit_generation does
            self._execute(cursor, "UPDATE datasets SET updated_at = ? WHERE id = ? AND generation = ?",
                          (_now(), dataset.id, dataset.generation))
            if cursor.rowcount != 1:
                raise ImageSearchError(f"Dataset '{dataset.name}' was changed by another process during this "
                                       "ingest; nothing was written, run the ingest again.")
            self._update_facts(cursor, dataset.id, refreshed_facts)

    def _update_facts(self, cursor, dataset_id: int, refreshed_facts: Iterable[tuple[int, ImageFacts]]) -> None:
        self._execute_many(cursor, f"UPDATE images SET {_SET_FACTS} WHERE dataset_id = ? AND vector_id = ?",
                           ((*facts.as_row(), dataset_id, vector_id) for vector_id, facts in refreshed_facts))


def _criteria_sql(criteria: ImageCriteria) -> tuple[str, list]:
    """The conditions of `criteria` as ' AND ...' with '?' placeholders, and their parameters."""
    conditions: list[str] = []
    params: list = []
    if criteria.folder is not None:
        # paths are raw bytes: the ones under the folder sort from 'folder/' up to (not including) 'folder0',
        # '0' being the byte after '/'; a range on the (dataset_id, path) index, with no pattern to escape
        prefix = encode_path(criteria.folder.rstrip(os.sep) + os.sep)
        conditions.append("path >= ? AND path < ?")
        params += [prefix, prefix[:-1] + bytes([prefix[-1] + 1])]
    taken = [("taken_at >= ?", criteria.taken_from), ("taken_at < ?", criteria.taken_before)]
    modified = [("mtime_ns >= ?", criteria.modified_from_ns), ("mtime_ns < ?", criteria.modified_before_ns)]
    taken, modified = [(c, v) for c, v in taken if v is not None], [(c, v) for c, v in modified if v is not None]
    if taken:  # the EXIF date when the image has one, else its modification time
        conditions.append(f"(({' AND '.join(c for c, _ in taken)}) OR "
                          f"({' AND '.join(['taken_at IS NULL', *(c for c, _ in modified)])}))")
        params += [v for _, v in taken] + [v for _, v in modified]
    if criteria.camera is not None:
        conditions.append("LOWER(COALESCE(camera_make, '') || ' ' || COALESCE(camera_model, '')) LIKE ? ESCAPE '\\'")
        params.append(f"%{_like_literal(criteria.camera)}%")
    if criteria.formats:
        conditions.append(f"format IN ({', '.join('?' for _ in criteria.formats)})")
        params += list(criteria.formats)
    return "".join(f" AND {condition}" for condition in conditions), params


def _like_literal(text: str) -> str:
    """`text` matched as it is by LIKE ... ESCAPE '\\': its wildcards and the escape character escaped."""
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
