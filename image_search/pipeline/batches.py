"""Embedding many image files in batches: reading runs ahead in workers while the model works."""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from typing import Iterator, Sequence

import numpy as np

from ..config import capture_requested, device_decode_requested
from ..models import Embedder
from .cpu_reader import default_workers, iter_batches
from .gpu_decode import decode_batch


@dataclass
class EmbeddedBatch:
    positions: list[int]  # indices into the paths, one per row of vectors
    vectors: np.ndarray  # float32 [len(positions), dim], L2-normalised
    skipped: list[tuple[int, str]]  # (position, reason): images that could not be read
    ignored: list[int]  # positions of files that are not images
    # ImageFacts (or None: not captured) per row, aligned with positions; empty from a runner that captures none
    facts: list = field(default_factory=list)


def default_batch_size(embedder: Embedder) -> int:
    # A GPU needs big batches to be busy. On the CPU the model's speed is the same from 8 to 64 images per batch;
    # whole ingests measured 29 / 30 / 32 images/s with batches of 8 / 16 / 32 (2 MP photos, 2 cores).
    return 256 if embedder.device.startswith("cuda") else 32


# Each reader worker fills whole batches, so model-sized GPU batches (256) would leave most workers idle unless
# there are thousands of files; and undecoded JPEGs carry whole files (3 MB for a 12 MP photo), so the batches
# queued between workers and the model must stay small. Workers read batches of this many files for a GPU, and
# the batches are joined into model-sized ones on the device.
GPU_READER_BATCH = 32


def reader_batch_size(embedder: Embedder, batch_size: int) -> int:
    return min(batch_size, GPU_READER_BATCH) if embedder.device.startswith("cuda") else batch_size


def embed_files(embedder: Embedder, paths: Sequence[str], *, batch_size: int | None = None,
                workers: int | None = None, progress: bool = False, label: str = "Embedding",
                decode_on_device: bool | None = None) -> Iterator[EmbeddedBatch]:
    """decode_on_device: decode JPEGs where the model runs (nvJPEG on CUDA); None means on for CUDA (unless
    IMAGE_SEARCH_GPU_DECODE=0) and off on the CPU."""
    on_gpu = embedder.device.startswith("cuda")
    batch_size = batch_size or default_batch_size(embedder)
    workers = default_workers(embedder.device) if workers is None else max(0, workers)
    if decode_on_device is None:
        decode_on_device = on_gpu and device_decode_requested()
    reader_batch = reader_batch_size(embedder, batch_size)
    bar = progress_bar(len(paths), progress, label)
    empty = np.zeros((0, embedder.dim), dtype=np.float32)
    try:
        batches = iter_batches(paths, geometry=embedder.geometry, min_side=embedder.input_size,
                               batch_size=reader_batch, workers=workers, pin_memory=on_gpu,
                               encoded_jpegs=decode_on_device, capture=capture_requested())
        decoded = (_decode_encoded(embedder, paths, batch) if batch.encoded is not None else
                   (batch.positions, _to_device(batch.pixels, embedder.device), batch.skipped, batch.ignored,
                    _facts_of(batch.facts, batch.positions))
                   for batch in batches)
        for positions, pixels, skipped, ignored, facts in _regroup(decoded, batch_size):
            vectors = embedder.encode_pixels(pixels) if pixels is not None else empty
            bar.update(len(positions) + len(skipped) + len(ignored))
            yield EmbeddedBatch(positions, vectors, skipped, ignored, facts)
    finally:
        bar.close()


def _facts_of(facts: list, positions: list) -> list:
    """The facts of a batch's rows, one per position (None where nothing was captured)."""
    return list(facts) if len(facts) == len(positions) else [None] * len(positions)


def _to_device(pixels, device: str):
    """Start the copy to the GPU as soon as a batch arrives (from pinned memory, so it overlaps)."""
    return pixels.to(device, non_blocking=True) if pixels is not None and device != "cpu" else pixels


def _decode_encoded(embedder: Embedder, paths: Sequence[str], batch):
    """Decode the batch's undecoded JPEGs on the model's device and merge them, in file order, with the rest."""
    import torch  # imported here for start-up time (see pipeline/__init__.py)

    decoded = decode_batch(batch.encoded, paths, geometry=embedder.geometry, min_side=embedder.input_size,
                           device=embedder.device)
    positions = list(batch.positions) + decoded.positions
    facts = _facts_of(batch.facts, batch.positions) + _facts_of(decoded.facts, decoded.positions)
    skipped = sorted(batch.skipped + decoded.skipped)
    parts = [p for p in (batch.pixels, decoded.pixels) if p is not None]
    if not parts:
        return [], None, skipped, batch.ignored, []
    pixels = torch.cat([part.to(embedder.device, non_blocking=True) for part in parts])
    order = sorted(range(len(positions)), key=positions.__getitem__)
    if order != list(range(len(positions))):
        pixels = pixels[torch.tensor(order, device=pixels.device)]
        positions = [positions[i] for i in order]
        facts = [facts[i] for i in order]
    return positions, pixels, skipped, batch.ignored, facts


def _regroup(batches, size: int):
    """Join consecutive (positions, pixels, skipped, ignored, facts) batches until they hold at least `size`
    images."""
    import torch  # imported here for start-up time (see pipeline/__init__.py)

    positions, parts, skipped, ignored, facts = [], [], [], [], []
    for batch_positions, pixels, batch_skipped, batch_ignored, batch_facts in batches:
        positions += batch_positions
        skipped += batch_skipped
        ignored += batch_ignored
        facts += batch_facts
        if pixels is not None:
            parts.append(pixels)
        if len(positions) >= size:
            yield positions, parts[0] if len(parts) == 1 else torch.cat(parts), skipped, ignored, facts
            positions, parts, skipped, ignored, facts = [], [], [], [], []
    if positions or skipped or ignored:
        pixels = (parts[0] if len(parts) == 1 else torch.cat(parts)) if parts else None
        yield positions, pixels, skipped, ignored, facts


class _NoBar:
    def update(self, _n: int) -> None:
        pass

    def close(self) -> None:
        pass


def progress_bar(total: int, enabled: bool, label: str):
    """A progress bar on stderr (one that shows nothing when not enabled or there is nothing to do)."""
    if not enabled or total == 0:
        return _NoBar()
    from tqdm import tqdm  # imported here for start-up time (see pipeline/__init__.py)

    return tqdm(total=total, unit="img", desc=label, file=sys.stderr, dynamic_ncols=True, smoothing=0.1)
