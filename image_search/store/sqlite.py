"""The embedded SQLite store: one file in the data folder, one connection per thread.

SQLite's failures become one sentence each: the file held by another process for longer than LOCK_WAIT_SECONDS,
a full disk or a read-only data folder (data_folder.py), a damaged file.
"""

from __future__ import annotations

import os
import sqlite3
import threading
from contextlib import contextmanager
from pathlib import Path

from ..data_folder import no_room, unwritable
from ..errors import ImageSearchError, StoreUnavailableError
from .sql import MetadataStore

# How long a statement waits for another process's write to end (SQLite's busy timeout) before giving up.
LOCK_WAIT_SECONDS = 60.0

# Room set aside beside the database (metadata.sqlite3-room) for the one write a full disk must still allow:
# deleting a dataset, to free space. SQLite needs room in its write-ahead log even to delete rows, and on a full
# disk the dataset's own index files, deleted first, may free less than that when the dataset is small (measured
# on a full tmpfs: deleting a 6-image dataset grew the log by 24 kB, its index files freed 8 kB). 256 kB covers the
# rows of ~600 images; a larger dataset's index frees more than its rows take (2 kB an image at 512-d, ~0.3 kB).
ROOM_BYTES = 256 * 1024


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
                connection = sqlite3.connect(self.path, timeout=LOCK_WAIT_SECONDS, check_same_thread=False)
                connection.execute("PRAGMA journal_mode=WAL")
                connection.execute("PRAGMA foreign_keys=ON")
                connection.execute("PRAGMA synchronous=FULL")
            except (sqlite3.Error, OSError) as error:
                known = self._failure(error) if isinstance(error, sqlite3.Error) else None
                if known is not None:
                    raise known from None
                raise StoreUnavailableError(f"Cannot open the SQLite database {self.path} ({error}); check that "
                                            "the data folder is writable or set IMAGE_SEARCH_HOME.") from None
            self._local.connection = connection
            self.keep_room()
        try:
            yield connection
        except sqlite3.Error as error:
            known = self._failure(error)
            if known is None:
                raise
            raise known from None

    def _failure(self, error: sqlite3.Error) -> ImageSearchError | None:
        """SQLite's error as a sentence, or None for one that is a bug here."""
        text = str(error).strip()
        lowered = text.lower()
        folder = self.path.parent
        if "locked" in lowered or "busy" in lowered:
            return StoreUnavailableError(
                f"The SQLite database {self.path} is locked by another process, which kept it for more than "
                f"{LOCK_WAIT_SECONDS:.0f} s; wait for that process to finish (another ingest, or a program that has "
                "the file open) and try again.")
        if "full" in lowered:
            return no_room(folder, f"writing to the SQLite database {self.path.name}")
        if "readonly" in lowered or "read-only" in lowered or "unable to open" in lowered:
            return unwritable(folder, f"writing to the SQLite database {self.path.name}", text)
        if "malformed" in lowered or "not a database" in lowered or "disk i/o" in lowered or "corrupt" in lowered:
            return StoreUnavailableError(
                f"The SQLite database {self.path} is damaged or cannot be read ({text}); restore it from a "
                "backup, or move it away and ingest the folders again (the images themselves are not touched).")
        return None

    def close(self) -> None:
        connection = getattr(self._local, "connection", None)
        if connection is not None:
            connection.close()
            self._local.connection = None

    def _room(self) -> Path:
        return self.path.with_name(self.path.name + "-room")

    def free_room(self) -> None:
        self._room().unlink(missing_ok=True)

    def keep_room(self) -> None:
        room = self._room()
        if room.exists():
            return
        try:
            with open(room, "wb") as handle:
                handle.write(bytes(ROOM_BYTES))
                handle.flush()
                os.fsync(handle.fileno())
        except OSError:
            room.unlink(missing_ok=True)  # a full disk: set aside another time

    def _lock_schema(self, cursor) -> None:
        # Take the write lock now rather than at the first write, so a second process opening the same new or old
        # store waits here (up to the connection's timeout) and then finds it up to date.
        cursor.execute("BEGIN IMMEDIATE")

    def _has_table(self, cursor, name: str) -> bool:
        self._execute(cursor, "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (name,))
        return cursor.fetchone() is not None
