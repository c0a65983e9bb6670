"""Turning image files into batches of model-ready pixels, in parallel worker processes.

Workers read each file once, record its facts from those bytes (pipeline/facts.py: hashes, pixel size, EXIF),
decode (at reduced JPEG scale when the model input is small), fix orientation, convert to RGB and apply the model's
own resize and crop. They hand back uint8 pixels, a quarter of the bytes of float tensors, so passing
batches between processes stays cheap; normalisation happens next to the model.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Iterator, Sequence

import numpy as np

from ..runtime.threads import usable_cores
from .decode import NotAnImage, UnreadableImage, pixels_from_bytes, read_image_file
from .encoded_jpeg import encoded_jpeg_from_bytes, pack

# Statuses of one file.
OK, SKIPPED, IGNORED, ENCODED = "ok", "skipped", "ignored", "encoded"


@dataclass
class Batch:
    positions: list[int]  # indices into the list of paths, for the rows of pixels
    pixels: object  # torch.uint8 tensor [len(positions), 3, S, S], or None when no file of the batch was usable
    skipped: list[tuple[int, str]]  # (position, reason)
    ignored: list[int]  # positions of files that are not images
    encoded: object = None  # encoded_jpeg.EncodedBatch: JPEGs left for the GPU to decode, or None
    facts: list = field(default_factory=list)  # ImageFacts (None: not captured) per row of pixels

    def pin_memory(self) -> "Batch":  # called by DataLoader(pin_memory=True) for faster host-to-GPU copies
        if self.pixels is not None:
            self.pixels = self.pixels.pin_memory()
        return self


class _FileDataset:
    """Map-style dataset for torch's DataLoader: item i is the outcome of reading paths[i], a file an ingest's scan
    found (its FileEntry.read_path), which must still be a regular file exactly there (pipeline/safe_open.py)."""

    def __init__(self, paths: Sequence[str], geometry: Callable, min_side: int | None,
                 encoded_jpegs: bool = False, capture: bool = True) -> None:
        self.paths = paths
        self.geometry = geometry
        self.min_side = min_side
        self.encoded_jpegs = encoded_jpegs
        self.capture = capture

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, position: int):
        return (position, *read_file(self.paths[position], self.geometry, self.min_side, self.encoded_jpegs,
                                     self.capture))


def read_file(path: str, geometry: Callable, min_side: int | None, encoded_jpegs: bool = False,
              capture: bool = True) -> tuple[str, object]:
    """The outcome of reading one file, which is read once: (OK, (uint8 pixels [3, S, S], facts)), (ENCODED,
    EncodedJpeg with its facts) for a JPEG left for the GPU to decode, (SKIPPED, reason) or (IGNORED, None); facts
    (pipeline/facts.py) are None without capture. Never raises: every reader (these workers, a Ray cluster's)
    calls it, so a file has the same outcome wherever it is read."""
    try:
        # the one read of the file; a path an ingest's scan found (FileEntry.read_path), opened safely (safe_open.py)
        data, fmt = read_image_file(path, scanned=True)
        if encoded_jpegs and fmt == "JPEG":
            encoded = encoded_jpeg_from_bytes(data, capture=capture)
            if encoded is not None:
                return ENCODED, encoded
        return OK, pixels_from_bytes(data, fmt, geometry, min_side, capture=capture)
    except NotAnImage:
        return IGNORED, None
    except UnreadableImage as error:
        return SKIPPED, str(error)
    except Exception as error:  # noqa: BLE001 - a reader must never take the whole ingest down
        return SKIPPED, f"unexpected error: {type(error).__name__}: {error}"[:300]


def collate(items) -> Batch:
    """(position, status, payload) outcomes -> one Batch."""
    import torch  # imported here for start-up time (see pipeline/__init__.py)

    positions, arrays, facts, skipped, ignored, encoded = [], [], [], [], [], []
    for position, status, payload in items:
        if status == OK:
            positions.append(position)
            arrays.append(payload[0])
            facts.append(payload[1])
        elif status == ENCODED:
            encoded.append((position, payload))
        elif status == SKIPPED:
            skipped.append((position, payload))
        else:
            ignored.append(position)
    pixels = torch.from_numpy(np.stack(arrays)) if arrays else None
    packed = pack(encoded) if encoded else None
    return Batch(positions, pixels, skipped, ignored, packed, facts)


def _init_worker(_worker_id: int) -> None:
    import torch  # imported here for start-up time (see pipeline/__init__.py)

    # Each worker decodes one image at a time; extra intra-op threads would only fight the model for cores.
    torch.set_num_threads(1)


def default_workers(device: str) -> int:
    # One reader per core, on the CPU too: measured on 2 cores, two readers next to a 2-thread model beat one
    # (12 MP photos: 22 vs 18 images/s) and match the time-sharing bound 1 / (1/model + 1/decode).
    return usable_cores()


def iter_batches(paths: Sequence[str], *, geometry: Callable, min_side: int | None, batch_size: int,
                 workers: int, pin_memory: bool = False, encoded_jpegs: bool = False,
                 capture: bool = True) -> Iterator[Batch]:
    """Yield batches in order while the next ones are being read in the background.

    encoded_jpegs: leave the JPEGs a GPU can decode undecoded (Batch.encoded); see gpu_decode.
    capture: record each file's facts (pipeline/facts.py) from the bytes read for it (Batch.facts).
    """
    from torch.utils.data import DataLoader  # imported here for start-up time (see pipeline/__init__.py)

    if not paths:
        return
    dataset = _FileDataset(paths, geometry, min_side, encoded_jpegs, capture)
    if len(paths) <= batch_size:
        workers = 0  # starting worker processes costs more than reading one batch
    loader = DataLoader(
        dataset, batch_size=batch_size, shuffle=False, num_workers=workers, collate_fn=collate,
        pin_memory=pin_memory, worker_init_fn=_init_worker if workers else None,
        prefetch_factor=2 if workers else None, persistent_workers=False)  # 2 keeps every worker busy
    yield from loader
