"""Embedding many image files in batches: reading runs ahead in workers (processes on the CPU, threads with device
decoding on a GPU) while the model works."""

from __future__ import annotations

import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Iterator, Sequence

import numpy as np

from ..config import capture_requested, device_decode_requested, gpu_decoder_setting
from ..models import Embedder
from .cpu_reader import default_workers, iter_batches
from .device_decoders import choose_decoder
from .gpu_decode import decode_batch
from .thread_reader import ReaderStats, ThreadReader


@dataclass
class EmbeddedBatch:
    positions: list[int]  # indices into the paths, one per row of vectors
    vectors: np.ndarray  # float32 [len(positions), dim], L2-normalised
    skipped: list[tuple[int, str]]  # (position, reason): images that could not be read
    ignored: list[int]  # positions of files that are not images
    # ImageFacts (or None: not captured) per row, aligned with positions; empty from a runner that captures none
    facts: list = field(default_factory=list)


def default_batch_size(embedder: Embedder) -> int:
    return batch_size_for_device(embedder.device)


def batch_size_for_device(device: str) -> int:
    # A GPU needs big batches to be busy. On the CPU the model's speed is the same from 8 to 64 images per batch;
    # whole ingests measured 29 / 30 / 32 images/s with batches of 8 / 16 / 32 (2 MP photos, 2 cores).
    return 256 if device.startswith("cuda") else 32


# Each reader worker fills whole batches, so model-sized GPU batches (256) would leave most workers idle unless
# there are thousands of files. Workers read batches of this many files for a GPU, and the batches are joined into
# model-sized ones on the device.
GPU_READER_BATCH = 32


def reader_batch_size(embedder: Embedder, batch_size: int) -> int:
    return reader_batch_for_device(embedder.device, batch_size)


def reader_batch_for_device(device: str, batch_size: int) -> int:
    return min(batch_size, GPU_READER_BATCH) if device.startswith("cuda") else batch_size


def embed_files(embedder: Embedder, paths: Sequence[str], *, batch_size: int | None = None,
                workers: int | None = None, progress: bool = False, label: str = "Embedding",
                decode_on_device: bool | None = None, decoder: str | None = None,
                stats: ReaderStats | None = None, all_taken: threading.Event | None = None
                ) -> Iterator[EmbeddedBatch]:
    """decode_on_device: read files with threads and decode JPEGs where the model runs (thread_reader.py); None
    means on for CUDA (unless IMAGE_SEARCH_GPU_DECODE=0) and off on the CPU, which keeps its worker processes.
    decoder: which device decoder (device_decoders.py; None: IMAGE_SEARCH_GPU_DECODER, by default the best one
    that works here). workers: reader processes, or with decode_on_device reader threads (0 counts as 1).
    stats: filled with the seconds each stage took (decode_on_device only). all_taken: given to the threaded
    reader, which sets it once every file is in a reader thread's hands, while the last ones still decode and
    embed (ThreadReader); the reader processes leave it to the caller, who sees them end."""
    on_gpu = embedder.device.startswith("cuda")
    batch_size = batch_size or default_batch_size(embedder)
    if decode_on_device is None:
        decode_on_device = on_gpu and device_decode_requested()
    bar = progress_bar(len(paths), progress, label)
    try:
        if decode_on_device:
            yield from _embed_with_threads(embedder, paths, batch_size, workers, decoder, stats, bar, all_taken)
        else:
            yield from _embed_with_processes(embedder, paths, batch_size, workers, bar)
    finally:
        bar.close()


def _embed_with_processes(embedder: Embedder, paths: Sequence[str], batch_size: int, workers: int | None, bar):
    on_gpu = embedder.device.startswith("cuda")
    workers = default_workers(embedder.device) if workers is None else max(0, workers)
    empty = np.zeros((0, embedder.dim), dtype=np.float32)
    batches = iter_batches(paths, geometry=embedder.geometry, min_side=embedder.input_size,
                           batch_size=reader_batch_size(embedder, batch_size), workers=workers, pin_memory=on_gpu,
                           capture=capture_requested())
    decoded = (decode_read_batch(embedder, paths, batch) for batch in batches)
    for positions, pixels, skipped, ignored, facts in _regroup(decoded, batch_size):
        vectors = embedder.encode_pixels(pixels) if pixels is not None else empty
        bar.update(len(positions) + len(skipped) + len(ignored))
        yield EmbeddedBatch(positions, vectors, skipped, ignored, facts)


def _embed_with_threads(embedder: Embedder, paths: Sequence[str], batch_size: int, workers: int | None,
                        decoder: str | None, stats: ReaderStats | None, bar, all_taken: threading.Event | None):
    empty = np.zeros((0, embedder.dim), dtype=np.float32)
    reader = ThreadReader(paths, geometry=embedder.geometry, min_side=embedder.input_size, device=embedder.device,
                          decoder=choose_decoder(embedder.device, decoder or gpu_decoder_setting()),
                          threads=default_workers(embedder.device) if workers is None else max(1, workers),
                          capture=capture_requested(), stats=stats, all_taken=all_taken)
    chunks = ((c.positions, c.pixels, c.skipped, c.ignored, c.facts) for c in reader)
    for positions, pixels, skipped, ignored, facts in _regroup(chunks, batch_size):
        started = time.perf_counter()
        vectors = embedder.encode_pixels(pixels) if pixels is not None else empty
        if stats is not None:
            stats.add("model", time.perf_counter() - started, len(positions))
        bar.update(len(positions) + len(skipped) + len(ignored))
        yield EmbeddedBatch(positions, vectors, skipped, ignored, facts)


def decode_read_batch(embedder: Embedder, paths: Sequence[str], batch):
    """A reader's Batch -> (positions, pixels on the model's device or None, skipped, ignored, facts per
    position), its undecoded JPEGs decoded on the device; what the model embeds, wherever the batch was read."""
    if batch.encoded is not None:
        return _decode_encoded(embedder, paths, batch)
    return (batch.positions, _to_device(batch.pixels, embedder.device), batch.skipped, batch.ignored,
            _facts_of(batch.facts, batch.positions))


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
