"""Turning image files into batches of model-ready pixels, in parallel worker processes.

Workers decode (at reduced JPEG scale when the model input is small), fix orientation, convert to RGB and apply the
model's own resize and crop. They hand back uint8 pixels, a quarter of the bytes of float tensors, so passing
batches between processes stays cheap; normalisation happens next to the model.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Callable, Iterator, Sequence

import numpy as np

from .decode import NotAnImage, UnreadableImage, read_pixels

# Statuses of one file.
OK, SKIPPED, IGNORED = "ok", "skipped", "ignored"


@dataclass
class Batch:
    positions: list[int]  # indices into the list of paths, for the rows of pixels
    pixels: object  # torch.uint8 tensor [len(positions), 3, S, S], or None when no file of the batch was usable
    skipped: list[tuple[int, str]]  # (position, reason)
    ignored: list[int]  # positions of files that are not images

    def pin_memory(self) -> "Batch":  # called by DataLoader(pin_memory=True) for faster host-to-GPU copies
        if self.pixels is not None:
            self.pixels = self.pixels.pin_memory()
        return self


class _FileDataset:
    """Map-style dataset for torch's DataLoader: item i is the outcome of reading paths[i]."""

    def __init__(self, paths: Sequence[str], geometry: Callable, min_side: int | None) -> None:
        self.paths = paths
        self.geometry = geometry
        self.min_side = min_side

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, position: int):
        try:
            return position, OK, read_pixels(self.paths[position], self.geometry, self.min_side)
        except NotAnImage:
            return position, IGNORED, None
        except UnreadableImage as error:
            return position, SKIPPED, str(error)
        except Exception as error:  # noqa: BLE001 - a reader must never take the whole ingest down
            return position, SKIPPED, f"unexpected error: {type(error).__name__}: {error}"[:300]


def _collate(items) -> Batch:
    import torch  # imported here for start-up time (see pipeline/__init__.py)

    positions, arrays, skipped, ignored = [], [], [], []
    for position, status, payload in items:
        if status == OK:
            positions.append(position)
            arrays.append(payload)
        elif status == SKIPPED:
            skipped.append((position, payload))
        else:
            ignored.append(position)
    pixels = torch.from_numpy(np.stack(arrays)) if arrays else None
    return Batch(positions, pixels, skipped, ignored)


def _init_worker(_worker_id: int) -> None:
    import torch  # imported here for start-up time (see pipeline/__init__.py)

    # Each worker decodes one image at a time; extra intra-op threads would only fight the model for cores.
    torch.set_num_threads(1)


def default_workers(device: str) -> int:
    # One reader per core, on the CPU too: measured on 2 cores, two readers next to a 2-thread model beat one
    # (12 MP photos: 22 vs 18 images/s) and match the time-sharing bound 1 / (1/model + 1/decode).
    return max(1, os.cpu_count() or 1)


def iter_batches(paths: Sequence[str], *, geometry: Callable, min_side: int | None, batch_size: int,
                 workers: int, pin_memory: bool = False) -> Iterator[Batch]:
    """Yield batches in order while the next ones are being read in the background."""
    from torch.utils.data import DataLoader  # imported here for start-up time (see pipeline/__init__.py)

    if not paths:
        return
    dataset = _FileDataset(paths, geometry, min_side)
    if len(paths) <= batch_size:
        workers = 0  # starting worker processes costs more than reading one batch
    loader = DataLoader(
        dataset, batch_size=batch_size, shuffle=False, num_workers=workers, collate_fn=_collate,
        pin_memory=pin_memory, worker_init_fn=_init_worker if workers else None,
        prefetch_factor=2 if workers else None, persistent_workers=False)  # 2 keeps every worker busy
    yield from loader
