"""What the metadata store hands out and takes in, and how paths are kept.

Paths are stored as the file system's raw bytes (os.fsencode) so that names which are not valid UTF-8 survive the
round trip; os.fsdecode gives back the same str, surrogate escapes included.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Sequence


def encode_path(path: str) -> bytes:
    return os.fsencode(path)


def decode_path(raw: bytes | memoryview) -> str:
    return os.fsdecode(bytes(raw))


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
    ctime_ns: int | None = None  # None in rows written before schema version 2 filled them
    inode: int | None = None


@dataclass(frozen=True)
class NewDataset:
    """What an ingest of a new name commits together with its first generation."""
    name: str
    uid: str
    model: str
    dim: int
    root: str
    index_kind: str
