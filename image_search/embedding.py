"""Embedding many image files in batches: reading runs ahead in workers while the model works."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Iterator, Sequence

import numpy as np

from .models import Embedder
from .reader import default_workers, iter_batches


@dataclass
class EmbeddedBatch:
    positions: list[int]  # indices into the paths, one per row of vectors
    vectors: np.ndarray  # float32 [len(positions), dim], L2-normalised
    skipped: list[tuple[int, str]]  # (position, reason): images that could not be read
    ignored: list[int]  # positions of files that are not images


def default_batch_size(embedder: Embedder) -> int:
    return 256 if embedder.device.startswith("cuda") else 32


def embed_files(embedder: Embedder, paths: Sequence[str], *, batch_size: int | None = None,
                workers: int | None = None, progress: bool = False, label: str = "Embedding") -> Iterator[EmbeddedBatch]:
    batch_size = batch_size or default_batch_size(embedder)
    workers = default_workers(embedder.device) if workers is None else max(0, workers)
    bar = _progress_bar(len(paths), progress, label)
    empty = np.zeros((0, embedder.dim), dtype=np.float32)
    try:
        for batch in iter_batches(paths, geometry=embedder.geometry, min_side=embedder.input_size,
                                  batch_size=batch_size, workers=workers,
                                  pin_memory=embedder.device.startswith("cuda")):
            vectors = embedder.encode_pixels(batch.pixels) if batch.pixels is not None else empty
            bar.update(len(batch.positions) + len(batch.skipped) + len(batch.ignored))
            yield EmbeddedBatch(batch.positions, vectors, batch.skipped, batch.ignored)
    finally:
        bar.close()


class _NoBar:
    def update(self, _n: int) -> None:
        pass

    def close(self) -> None:
        pass


def _progress_bar(total: int, enabled: bool, label: str):
    if not enabled or total == 0:
        return _NoBar()
    from tqdm import tqdm

    return tqdm(total=total, unit="img", desc=label, file=sys.stderr, dynamic_ncols=True, smoothing=0.1)
