"""The metadata store: datasets and the image path behind every vector id.

One schema and one set of SQL statements serve both backends: PostgreSQL when DB_HOST is configured, else an
embedded SQLite file in the data directory. Other modules import from here, never from the modules below:

- records.py: what the store hands out and takes in (DatasetRecord, ImageRecord, ImageFacts, NewDataset); paths as
  raw bytes
- sql.py: the backend-neutral MetadataStore, every statement written once with '?' placeholders
- schema.py: the tables, the schema version and the ordered migrations that bring an older store up to it
- sqlite.py, postgres.py: each backend's connections and dialect
"""

from __future__ import annotations

from pathlib import Path

from ..config import DatabaseSettings
from .postgres import PostgresStore
from .records import FACT_COLUMNS, DatasetRecord, ImageFacts, ImageRecord, NewDataset, decode_path, encode_path
from .sql import MetadataStore
from .sqlite import SQLiteStore

__all__ = ["FACT_COLUMNS", "DatasetRecord", "ImageFacts", "ImageRecord", "MetadataStore", "NewDataset",
           "PostgresStore", "SQLiteStore", "decode_path", "encode_path", "open_store"]


def open_store(database: DatabaseSettings | None, data_home: Path) -> MetadataStore:
    if database is None:
        return SQLiteStore(Path(data_home) / "metadata.sqlite3")
    return PostgresStore(database)
