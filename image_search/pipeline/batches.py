"""Embedding many image files in batches: reading runs ahead in workers (processes on the CPU, threads with device
decoding on a GPU) while the model works."""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from typing import Iterator, Sequence

import numpy as np

from ..config import device_decode_requested, gpu_decoder_setting
from ..models import Embedder
from .cpu_reader import default_workers, iter_batches
from .device_decoders import choose_decoder
from .thread_reader import Chunk, ReaderStats, ThreadReader


@dataclass
class EmbeddedBatch:
    positions: list[int]  # indices into the paths, one per row of vectors
    vectors: np.ndarray  # float32 [len(positions), dim], L2-normalised
    skipped: list[tuple[int, str]]  # (position, reason): images that could not be read
    ignored: list[int]  # positions of files that are not images
    facts: list = field(default_factory=list)  # aligned with positions, where the reader computed them


def default_batch_size(embedder: Embedder) -> int:
    # A GPU needs big batches to be busy. On the CPU the model's speed is the same from 8 to 64 images per batch;
    # whole ingests measured 29 / 30 / 32 images/s with batches of 8 / 16 / 32 (2 MP photos, 2 cores).
    return 256 if embedder.device.startswith("cuda") else 32


# With CPU decoding on a GPU machine, each reader worker fills whole batches, so model-sized GPU batches (256)
# would leave most workers idle unless there are thousands of files. Workers read batches of this many files for
# a GPU, and the batches are joined into model-sized ones on the device.
GPU_READER_BATCH = 32


def reader_batch_size(embedder: Embedder, batch_size: int) -> int:
    return min(batch_size, GPU_READER_BATCH) if embedder.device.startswith("cuda") else batch_size


def embed_files(embedder: Embedder, paths: Sequence[str], *, batch_size: int | None = None,
                workers: int | None = None, progress: bool = False, label: str = "Embedding",
                decode_on_device: bool | None = None, decoder: str | None = None,
                stats: ReaderStats | None = None) -> Iterator[EmbeddedBatch]:
    """decode_on_device: read files with threads and decode JPEGs where the model runs (thread_reader.py); None
    means on for CUDA (unless IMAGE_SEARCH_GPU_DECODE=0) and off on the CPU, which keeps its worker processes.
    decoder: which device decoder (device_decoders.py; None: IMAGE_SEARCH_GPU_DECODER, by default the best one
    that works here). workers: reader processes, or with decode_on_device reader threads (0 counts as 1).
    stats: filled with the seconds each stage took (decode_on_device only)."""
    on_gpu = embedder.device.startswith("cuda")
    batch_size = batch_size or default_batch_size(embedder)
    if decode_on_device is None:
        decode_on_device = on_gpu and device_decode_requested()
    bar = _progress_bar(len(paths), progress, label)
    try:
        if decode_on_device:
            yield from _embed_with_threads(embedder, paths, batch_size, workers, decoder, stats, bar)
        else:
            yield from _embed_with_processes(embedder, paths, batch_size, workers, bar)
    finally:
        bar.close()


def _embed_with_processes(embedder: Embedder, paths: Sequence[str], batch_size: int, workers: int | None, bar):
    on_gpu = embedder.device.startswith("cuda")
    workers = default_workers(embedder.device) if workers is None else max(0, workers)
    empty = np.zeros((0, embedder.dim), dtype=np.float32)
    batches = iter_batches(paths, geometry=embedder.geometry, min_side=embedder.input_size,
                           batch_size=reader_batch_size(embedder, batch_size), workers=workers, pin_memory=on_gpu)
    chunks = (Chunk(batch.positions, _to_device(batch.pixels, embedder.device), batch.skipped, batch.ignored, [])
              for batch in batches)
    for chunk in _regroup(chunks, batch_size):
        vectors = embedder.encode_pixels(chunk.pixels) if chunk.pixels is not None else empty
        bar.update(len(chunk.positions) + len(chunk.skipped) + len(chunk.ignored))
        yield EmbeddedBatch(chunk.positions, vectors, chunk.skipped, chunk.ignored)


def _embed_with_threads(embedder: Embedder, paths: Sequence[str], batch_size: int, workers: int | None,
                        decoder: str | None, stats: ReaderStats | None, bar):
    empty = np.zeros((0, embedder.dim), dtype=np.float32)
    reader = ThreadReader(paths, geometry=embedder.geometry, min_side=embedder.input_size, device=embedder.device,
                          decoder=choose_decoder(embedder.device, decoder or gpu_decoder_setting()),
                          threads=default_workers(embedder.device) if workers is None else max(1, workers),
                          facts=facts_reader(), stats=stats)
    for chunk in _regroup(reader, batch_size):
        started = time.perf_counter()
        vectors = embedder.encode_pixels(chunk.pixels) if chunk.pixels is not None else empty
        if stats is not None:
            stats.add("model", time.perf_counter() - started, len(chunk.positions))
        bar.update(len(chunk.positions) + len(chunk.skipped) + len(chunk.ignored))
        yield EmbeddedBatch(chunk.positions, vectors, chunk.skipped, chunk.ignored, chunk.facts)


def facts_reader():
    """The function that computes a file's facts from its bytes, or None where this build has none."""
    try:
        from .facts import facts_from_bytes
    except ImportError:
        return None
    return lambda data: facts_from_bytes(data, None)


def _to_device(pixels, device: str):
    """Start the copy to the GPU as soon as a batch arrives (from pinned memory, so it overlaps)."""
    return pixels.to(device, non_blocking=True) if pixels is not None and device != "cpu" else pixels


def _regroup(chunks, size: int):
    """Join consecutive chunks until they hold at least `size` images."""
    import torch  # imported here for start-up time (see pipeline/__init__.py)

    positions, parts, skipped, ignored, facts = [], [], [], [], []
    for chunk in chunks:
        positions += chunk.positions
        skipped += chunk.skipped
        ignored += chunk.ignored
        facts += chunk.facts or [None] * len(chunk.positions)
        if chunk.pixels is not None:
            parts.append(chunk.pixels)
        if len(positions) >= size:
            yield Chunk(positions, parts[0] if len(parts) == 1 else torch.cat(parts), skipped, ignored, facts)
            positions, parts, skipped, ignored, facts = [], [], [], [], []
    if positions or skipped or ignored:
        pixels = (parts[0] if len(parts) == 1 else torch.cat(parts)) if parts else None
        yield Chunk(positions, pixels, skipped, ignored, facts)


class _NoBar:
    def update(self, _n: int) -> None:
        pass

    def close(self) -> None:
        pass


def _progress_bar(total: int, enabled: bool, label: str):
    if not enabled or total == 0:
        return _NoBar()
    from tqdm import tqdm  # imported here for start-up time (see pipeline/__init__.py)

    return tqdm(total=total, unit="img", desc=label, file=sys.stderr, dynamic_ncols=True, smoothing=0.1)
