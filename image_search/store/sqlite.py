"""The embedded SQLite store: one file in the data folder, one connection per thread."""

from __future__ import annotations

import sqlite3
import threading
from contextlib import contextmanager
from pathlib import Path

from ..errors import StoreUnavailableError
from .failures import sqlite_failure
from .sql import MetadataStore

# How long a statement waits for another connection's write lock before giving up (sqlite3's busy timeout).
LOCK_TIMEOUT_S = 60


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
                connection = sqlite3.connect(self.path, timeout=LOCK_TIMEOUT_S, check_same_thread=False)
                connection.execute("PRAGMA journal_mode=WAL")
                connection.execute("PRAGMA foreign_keys=ON")
                connection.execute("PRAGMA synchronous=FULL")
            except (sqlite3.Error, OSError) as error:
                failure = (sqlite_failure(error, self.path, waited_s=LOCK_TIMEOUT_S)
                           if isinstance(error, sqlite3.Error) else None)
                if failure is not None:  # damaged, locked, read-only: said as such
                    raise failure from None
                raise StoreUnavailableError(f"Cannot open the SQLite database {self.path} ({error}); check that "
                                            "the data folder is writable or set IMAGE_SEARCH_HOME.") from None
            self._local.connection = connection
        yield connection

    @contextmanager
    def _cursor(self, *, write: bool = False):
        try:
            with super()._cursor(write=write) as cursor:
                yield cursor
        except sqlite3.Error as error:
            failure = sqlite_failure(error, self.path, waited_s=LOCK_TIMEOUT_S)
            if failure is None:
                raise
            raise failure from None

    def close(self) -> None:
        connection = getattr(self._local, "connection", None)
        if connection is not None:
            connection.close()
            self._local.connection = None

    def _lock_schema(self, cursor) -> None:
        # Take the write lock now rather than at the first write, so a second process opening the same new or old
        # store waits here (up to the connection's timeout) and then finds it up to date.
        cursor.execute("BEGIN IMMEDIATE")

    def _has_table(self, cursor, name: str) -> bool:
        self._execute(cursor, "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (name,))
        return cursor.fetchone() is not None
