"""What the metadata store hands out and takes in, and how paths are kept.

Paths are stored as the file system's raw bytes (os.fsencode) so that names which are not valid UTF-8 survive the
round trip; os.fsdecode gives back the same str, surrogate escapes included.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, fields
from typing import Optional, Sequence


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
class ImageFacts:
    """What an ingest captures about one image file besides its vector (pipeline/facts.py), stored in the images
    table's columns of the same names. Every field may be None: not captured (a row written before schema 3, until
    its next ingest), or not in the file (most EXIF fields)."""
    sha256: Optional[str] = None  # of the file's bytes, lower-case hex
    md5: Optional[str] = None  # lower-case hex
    width: Optional[int] = None  # pixels as stored, before the EXIF orientation turns the picture
    height: Optional[int] = None
    format: Optional[str] = None  # Pillow's name: JPEG, PNG, WEBP, GIF, BMP, TIFF
    taken_at: Optional[str] = None  # EXIF DateTimeOriginal as 'YYYY-MM-DDTHH:MM:SS', the photo's local time
    taken_offset: Optional[str] = None  # EXIF OffsetTimeOriginal such as '+02:00'
    camera_make: Optional[str] = None
    camera_model: Optional[str] = None
    lens: Optional[str] = None
    gps_lat: Optional[float] = None  # decimal degrees, south negative
    gps_lon: Optional[float] = None  # decimal degrees, west negative
    orientation: Optional[int] = None  # EXIF orientation, 1 (upright) to 8

    @classmethod
    def from_row(cls, values: Sequence) -> "ImageFacts | None":
        """The facts from the FACT_COLUMNS of a row; None when none was captured (sha256 is NULL)."""
        if values[0] is None:
            return None
        return cls(*(None if v is None else kind(v) for v, kind in zip(values, _FACT_TYPES)))

    def as_row(self) -> tuple:
        return tuple(getattr(self, name) for name in FACT_COLUMNS)


FACT_COLUMNS = tuple(f.name for f in fields(ImageFacts))
_FACT_TYPES = tuple({"Optional[str]": str, "Optional[int]": int, "Optional[float]": float}[f.type]
                    for f in fields(ImageFacts))


@dataclass(frozen=True)
class ImageRecord:
    vector_id: int
    path: str
    size: int
    mtime_ns: int
    ctime_ns: int | None = None  # None in rows written before schema version 2 filled them
    inode: int | None = None
    facts: Optional[ImageFacts] = None


@dataclass(frozen=True)
class NewDataset:
    """What an ingest of a new name commits together with its first generation."""
    name: str
    uid: str
    model: str
    dim: int
    root: str
    index_kind: str


@dataclass(frozen=True)
class ImageCriteria:
    """Conditions on a dataset's images, as MetadataStore.select_vector_ids applies them (search/filters.py makes
    them from a SearchFilter); a condition left as None does not filter.

    The date conditions go in pairs: an image taken (EXIF) from taken_from and before taken_before, or, for an
    image without an EXIF date, modified from modified_from_ns and before modified_before_ns (the same moments
    as nanoseconds since the epoch)."""
    folder: str | None = None  # absolute: the images under it, at any depth
    taken_from: str | None = None  # 'YYYY-MM-DDTHH:MM:SS', as taken_at holds it
    taken_before: str | None = None
    modified_from_ns: int | None = None
    modified_before_ns: int | None = None
    camera: str | None = None  # lower case: a part of 'make model'
    formats: tuple[str, ...] = ()  # Pillow's names; empty: any

    @property
    def is_empty(self) -> bool:
        return self == ImageCriteria()
