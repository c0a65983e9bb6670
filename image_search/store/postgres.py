"""The PostgreSQL store, used when DB_HOST is configured.

psycopg2 is imported inside the methods, so that importing the store package (and every SQLite user) never pays
for it.
"""

from __future__ import annotations

import threading
from contextlib import contextmanager
from typing import Iterable, Sequence

from ..config import DatabaseSettings
from ..errors import StoreUnavailableError, StoreUnreachableError
from .sql import BATCH, ConnectionLost, MetadataStore


class PostgresStore(MetadataStore):
    placeholder = "%s"
    serial_pk = "SERIAL PRIMARY KEY"
    blob = "BYTEA"

    def __init__(self, settings: DatabaseSettings) -> None:
        super().__init__()
        # psycopg2 is imported on the first connection, so that SQLite users never pay for it, nor a command-line
        # search that a server answers (it compares this store's description with the server's)
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

    def _unavailable(self, error: Exception, kind: type = StoreUnreachableError) -> StoreUnavailableError:
        reason = _first_line(error)
        return kind(
            f"Cannot reach the PostgreSQL database at {self.settings.describe()} ({reason}); start PostgreSQL or "
            "fix DB_HOST/DB_PORT/DB_USER/DB_PASSWORD in .env (or unset DB_HOST to use the built-in SQLite store).")

    @contextmanager
    def _connection(self):
        import psycopg2

        connection = getattr(self._local, "connection", None)
        if connection is not None and connection.closed:
            connection = None
        kept = connection is not None  # opened by an earlier operation: the server may have restarted since
        if connection is None:
            connection = self._open()
            self._local.connection = connection
        try:
            yield connection
        except (psycopg2.OperationalError, psycopg2.InterfaceError) as error:
            if not connection.closed:  # the server answered, with an error of its own (out of disk, say)
                raise StoreUnavailableError(
                    f"The PostgreSQL database '{self.settings.name}' at {self.settings.describe()} refused the "
                    f"operation ({_first_line(error)}); see the PostgreSQL server's log.") from None
            # The connection is gone; drop it so the next operation connects again. A kept one died while idle
            # (a PostgreSQL restart closes every connection): the operation is run again (sql.reconnecting).
            self._local.connection = None
            raise self._unavailable(error, ConnectionLost if kept else StoreUnreachableError) from None

    def _lock_schema(self, cursor) -> None:
        # Serialise concurrent first opens: CREATE TABLE IF NOT EXISTS and the migrations can race in PostgreSQL.
        # The lock is the transaction's, so it is released by the commit or the rollback.
        cursor.execute("SELECT pg_advisory_xact_lock(7461726)")

    def _has_table(self, cursor, name: str) -> bool:
        # A query on the catalog, not to_regclass(): that reads the backend's catalog cache, which after waiting for
        # the schema lock can still miss the table another process has just created and committed (with it, 3 of 3
        # runs of test_concurrent_first_opens_migrate_once[postgres] failed: the second open migrated again).
        self._execute(cursor, "SELECT 1 FROM pg_catalog.pg_tables WHERE schemaname = current_schema() AND "
                              "tablename = ?", (name,))
        return cursor.fetchone() is not None

    def _execute_many(self, cursor, statement: str, rows: Iterable[Sequence]) -> None:
        from psycopg2.extras import execute_batch

        execute_batch(cursor, self._sql(statement), [tuple(r) for r in rows], page_size=BATCH)

    def close(self) -> None:
        connection = getattr(self._local, "connection", None)
        if connection is not None:
            connection.close()
            self._local.connection = None


def _first_line(error: Exception) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__
