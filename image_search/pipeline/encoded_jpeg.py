"""JPEGs read but not decoded, for the GPU decoder (gpu_decode): the CPU reader's workers read them, the main
process decodes them on the device.

A file qualifies only when the device decodes it well (8-bit baseline YCbCr/RGB, complete); anything else is
decoded on the CPU as usual, so this path costs speed at worst, never correctness.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass
from typing import Sequence

import numpy as np
from PIL import Image

from ..store.records import ImageFacts
from .facts import facts_from_bytes
from .safe_open import open_scanned_file

JPEG_SIGNATURE = b"\xff\xd8\xff"
JPEG_END = b"\xff\xd9"
_EXIF_ORIENTATION = 0x0112


@dataclass
class EncodedJpeg:
    data: np.ndarray  # the file's bytes, uint8
    orientation: int  # EXIF orientation, 1 (upright) to 8
    pixels: int  # width x height, to bound device memory
    facts: ImageFacts | None = None  # what facts.py captured from the same bytes and header (with capture)


def read_encoded_jpeg(path: str, *, capture: bool = False) -> EncodedJpeg | None:
    """The bytes of a JPEG the GPU decoder handles well (8-bit baseline YCbCr/RGB), or None: decode it on the CPU.
    path: one an ingest's scan found (pipeline/safe_open.py: open_scanned_file).

    Never raises: anything unusual (progressive, CMYK, greyscale, truncated, too many pixels, no longer a regular
    file) goes to the CPU reader, which decodes it or gives the reason it cannot.
    """
    try:
        with open_scanned_file(path) as handle:
            data = handle.read()
    except Exception:  # noqa: BLE001 - the CPU path reports the real reason
        return None
    return encoded_jpeg_from_bytes(data, capture=capture)


def encoded_jpeg_from_bytes(data: bytes, *, capture: bool = False) -> EncodedJpeg | None:
    """read_encoded_jpeg for bytes already read (the reader reads each file once); with capture, the file's facts
    from the same bytes and the header parsed here."""
    try:
        if not data.startswith(JPEG_SIGNATURE) or not data.endswith(JPEG_END):
            return None  # not a JPEG, or truncated (or trailing data) which nvJPEG might decode into garbage
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with Image.open(io.BytesIO(data), formats=["JPEG"]) as image:  # parses the header only
                if image.mode != "RGB" or image.info.get("progressive") or image.info.get("progression"):
                    return None
                orientation = int(image.getexif().get(_EXIF_ORIENTATION, 1) or 1)
                pixels = image.width * image.height
                facts = facts_from_bytes(data, image) if capture else None
    except Exception:  # noqa: BLE001 - the CPU path reports the real reason
        return None
    return EncodedJpeg(np.frombuffer(data, dtype=np.uint8), orientation if 1 <= orientation <= 8 else 1, pixels,
                       facts)


@dataclass
class EncodedBatch:
    """The JPEGs of one reader batch, packed into one buffer so the batch crosses processes as one tensor."""

    positions: list[int]
    data: object  # torch.uint8 tensor: all files' bytes, back to back
    offsets: list[int]  # file i is data[offsets[i]:offsets[i + 1]]
    orientations: list[int]
    pixel_counts: list[int]
    facts: list  # ImageFacts or None per file

    def __len__(self) -> int:
        return len(self.positions)

    def file_bytes(self, i: int):
        return self.data[self.offsets[i]:self.offsets[i + 1]]


def pack(items: Sequence[tuple[int, EncodedJpeg]]) -> EncodedBatch | None:
    import torch  # imported here for start-up time (see pipeline/__init__.py)

    if not items:
        return None
    offsets = [0]
    for _, encoded in items:
        offsets.append(offsets[-1] + len(encoded.data))
    data = torch.from_numpy(np.concatenate([encoded.data for _, encoded in items]))
    return EncodedBatch([p for p, _ in items], data, offsets, [e.orientation for _, e in items],
                        [e.pixels for _, e in items], [e.facts for _, e in items])
