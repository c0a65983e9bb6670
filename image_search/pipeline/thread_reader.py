"""Reading files for a GPU with threads: each file is read once, its JPEG decoded on the device in large batches,
and the CPU cores decode what the device cannot (or what it has no time for).

Why threads and not worker processes: at thousands of photos a second the process reader spent its time
pickling file bytes between processes (issue 14: 1,074 images/s of 2 MP photos through it, where the decoder
alone does 4,869). Reading, hashing (hashlib), decoding with Pillow and every CUDA wait release the interpreter
lock, and the Python left per file is small (jpeg_header.py).

Who does what:
- reader threads (one per core) take the next file, read its bytes once, compute its facts from those bytes, and
  look at its header. A JPEG the device decodes well goes to the device queue; everything else is decoded right
  there on the CPU (Pillow with libjpeg's DCT scaling). When the queue already holds enough for the decoding
  threads, a large JPEG (12 MP) is decoded on the CPU too, by at most half the threads, so the cores share the
  decoding where the device is the limit; a small one waits for room (see _queue_for_device).
- decoding threads (two, each with its own CUDA stream, so one decodes while the other resizes and both overlap
  the model) take a batch of up to `decode_batch` files, decode them in one call, turn them upright and resize
  and crop them on the device (gpu_decode.py). A file the device could not decode goes back to the reader
  threads, which decode it on the CPU from the bytes already read: never lost.
- the caller's thread iterates the reader and gets chunks of pixels, already on the device, with their
  positions; it runs the model meanwhile.

Every position comes back exactly once: as pixels (with its facts), as skipped (with the reason) or as ignored
(not an image). Memory is bounded: at most `max_in_flight` files between reading and the caller, and at most
MAX_DEVICE_QUEUE_BYTES of file bytes waiting for the device (beyond that, the reader threads decode them).
"""

from __future__ import annotations

import itertools
import queue
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np

from .decode import NotAnImage, UnreadableImage, pixels_from_bytes, read_scanned_image
from .device_decoders import make_decoder
from .device_resize import model_pixels_on_device, pixels_per_call
from .facts import jpeg_facts
from .jpeg_header import JpegHeader, parse_jpeg_header

DECODE_BATCH = 256  # files per device decoding call: nvJPEG's and nvImageCodec's batched decoders want >= 128
DECODING_THREADS = 2
MAX_DEVICE_QUEUE_BYTES = 2 << 30  # file bytes waiting for the device or being decoded there (700 12 MP photos)
CPU_CHUNK = 64  # CPU-decoded pictures are stacked and sent to the device this many at a time
_POLL = 0.1  # seconds a waiting thread sleeps before it looks whether the reader was stopped
# A decoding thread waits for a full batch, unless no file has joined the queue for this long: then reading is
# slower than a batch needs (a slow disk) or stuck behind the in-flight bound, and it decodes what is there.
BATCH_WAIT = 0.05

# A JPEG of at least this many pixels is decoded by a reader thread when the device's queue is full; smaller
# ones wait for room (see ThreadReader._queue_for_device).
ASSIST_MIN_PIXELS = 6_000_000

_PIXELS, _SKIPPED, _IGNORED, _DEVICE, _FAILED = range(5)
_QUEUED, _ASSIST, _CPU = range(3)


def _safe_facts(data: bytes, header: JpegHeader):
    try:
        return jpeg_facts(data, header)
    except Exception:  # noqa: BLE001 - facts nobody can read are missing facts, not a lost file
        return None


@dataclass
class ReaderStats:
    """Seconds spent per stage, added over threads (a stage's seconds / the run's seconds = threads busy in it),
    and counts. Filled when the caller passes one in; the ingest benchmark prints it as the profile."""
    seconds: dict = field(default_factory=dict)
    counts: dict = field(default_factory=dict)

    def add(self, stage: str, seconds: float, count: int = 1) -> None:
        self.seconds[stage] = self.seconds.get(stage, 0.0) + seconds
        self.counts[stage] = self.counts.get(stage, 0) + count

    def merge(self, other: "ReaderStats") -> None:
        for stage, seconds in other.seconds.items():
            self.add(stage, seconds, other.counts.get(stage, 0))

    def as_dict(self) -> dict:
        return {stage: {"seconds": round(seconds, 3), "count": self.counts.get(stage, 0)}
                for stage, seconds in sorted(self.seconds.items())}


@dataclass
class Chunk:
    positions: list[int]
    pixels: object  # uint8 tensor [len(positions), 3, S, S] on the device, or None
    skipped: list[tuple[int, str]]
    ignored: list[int]
    facts: list  # aligned with positions (None where no facts were computed)


@dataclass
class _File:
    position: int
    data: bytes
    fmt: str  # as decode.read_image_file names it
    header: JpegHeader | None
    facts: object  # ImageFacts already captured, or None


class ThreadReader:
    def __init__(self, paths: Sequence[str], *, geometry: Callable, min_side: int | None, device: str,
                 decoder: str | None, threads: int, capture: bool = False,
                 decode_batch: int = DECODE_BATCH, decoding_threads: int = DECODING_THREADS,
                 max_in_flight: int | None = None, stats: ReaderStats | None = None,
                 all_taken: threading.Event | None = None) -> None:
        """decoder: a device_decoders name, or None to decode everything on the CPU threads. capture: compute each
        file's facts (facts.py) in the reader threads, from the bytes read. paths: files a scan found (their
        FileEntry.read_path), opened safely (safe_open.py). all_taken: set once a reader thread has taken the last
        file (the threads only finish the files in hand, and what is queued decodes and embeds), or when the
        reading ends otherwise: the moment another reader may start without the two sharing the cores."""
        self.paths = paths
        self.geometry = geometry
        self.min_side = min_side
        self.device = device
        self.decoder = decoder
        self.threads = max(1, threads)
        self.capture = capture
        self._max_assist = max(1, self.threads // 2)
        self.decode_batch = max(1, decode_batch)
        self.decoding_threads = max(1, decoding_threads) if decoder else 0
        self.max_in_flight = max_in_flight or max(2048, 8 * self.decode_batch)
        self.stats = stats
        self.all_taken = all_taken
        self._pixels_per_call = pixels_per_call(device) if decoder else 0
        # what the device queue may hold before reader threads decode JPEGs themselves: a batch for each decoding
        # thread to take next, beyond the ones being decoded
        self._backlog = self.decode_batch * (self.decoding_threads + 1)

    # -- the caller's side ---------------------------------------------------------------------------------------
    def __iter__(self):
        import torch

        total = len(self.paths)
        if total == 0:
            if self.all_taken is not None:
                self.all_taken.set()
            return
        self._out: queue.SimpleQueue = queue.SimpleQueue()
        self._cv = threading.Condition()
        self._next = itertools.count()
        self._slots = threading.Semaphore(self.max_in_flight)
        self._stop = threading.Event()
        self._device_files: deque = deque()
        self._device_pending = 0  # files queued for the device or being decoded there
        self._device_pixels = 0  # pixels of the queued files
        self._last_queued = 0.0
        self._fallback: deque = deque()
        self._bytes = 0
        self._assisting = 0  # reader threads decoding, on the CPU, JPEGs meant for the device
        self._readers_left = self.threads
        self._decoders_left = self.decoding_threads
        threads = [threading.Thread(target=self._guard, args=(self._read_loop,), daemon=True,
                                    name=f"image-reader-{i}") for i in range(self.threads)]
        threads += [threading.Thread(target=self._guard, args=(self._decode_loop,), daemon=True,
                                     name=f"image-decoder-{i}") for i in range(self.decoding_threads)]
        for thread in threads:
            thread.start()
        accounted = 0
        positions, arrays, facts, skipped, ignored = [], [], [], [], []
        waited = 0.0
        try:
            while accounted < total:
                started = time.perf_counter()
                item = self._out.get()
                waited += time.perf_counter() - started
                kind = item[0]
                if kind == _DEVICE:
                    _, device_positions, pixels, device_facts = item
                    accounted += len(device_positions)
                    self._slots.release(len(device_positions))
                    if pixels is not None and pixels.is_cuda:
                        pixels.record_stream(torch.cuda.current_stream(pixels.device))
                    yield Chunk(device_positions, pixels, skipped, ignored, device_facts)
                    skipped, ignored = [], []
                    continue
                if kind == _FAILED:
                    raise item[1]
                accounted += 1
                self._slots.release()
                if kind == _PIXELS:
                    positions.append(item[1])
                    arrays.append(item[2])
                    facts.append(item[3])
                elif kind == _SKIPPED:
                    skipped.append((item[1], item[2]))
                else:
                    ignored.append(item[1])
                if len(arrays) >= CPU_CHUNK or (self._out.empty() and (arrays or skipped or ignored)) \
                        or accounted == total:
                    yield Chunk(positions, self._to_device(arrays), skipped, ignored, facts)
                    positions, arrays, facts, skipped, ignored = [], [], [], [], []
            if positions or skipped or ignored:
                yield Chunk(positions, self._to_device(arrays), skipped, ignored, facts)
        finally:
            self._stop.set()
            if self.all_taken is not None:
                self.all_taken.set()
            with self._cv:
                self._cv.notify_all()
            deadline = time.monotonic() + 10  # a thread in the middle of one file ends within its decode
            for thread in threads:
                thread.join(max(0.0, deadline - time.monotonic()))
            if self.stats is not None:
                self.stats.add("caller waits for pictures", waited, 0)

    def _to_device(self, arrays: list):
        import torch

        if not arrays:
            return None
        pixels = torch.from_numpy(np.stack(arrays))
        return pixels.to(self.device) if self.device != "cpu" else pixels

    # -- reader threads ------------------------------------------------------------------------------------------
    def _guard(self, loop) -> None:
        try:
            loop()
        except BaseException as error:  # noqa: BLE001 - the caller must hear of it, or it waits forever
            self._stop.set()
            self._out.put((_FAILED, error))

    def _read_loop(self) -> None:
        stats = ReaderStats()
        reading = True
        try:
            while not self._stop.is_set():
                fallback = self._take_fallback(wait=not reading)
                if fallback is not None:
                    self._decode_on_cpu(fallback, stats)
                    continue
                if not reading:
                    if self._fallback_finished():
                        return
                    continue
                position = next(self._next)
                if position >= len(self.paths):
                    reading = False
                    if self.all_taken is not None:
                        self.all_taken.set()
                    with self._cv:
                        self._readers_left -= 1
                        self._cv.notify_all()
                    continue
                while not self._slots.acquire(timeout=BATCH_WAIT):  # the in-flight bound
                    if self._stop.is_set():
                        return
                    fallback = self._take_fallback(wait=False)  # which may be waiting for this very thread
                    if fallback is not None:
                        self._decode_on_cpu(fallback, stats)
                self._read_one(position, stats)
        finally:
            if reading:
                with self._cv:
                    self._readers_left -= 1
                    self._cv.notify_all()
            self._merge_stats(stats)

    def _read_one(self, position: int, stats: ReaderStats) -> None:
        path = self.paths[position]
        started = time.perf_counter()
        try:
            data, fmt = read_scanned_image(path)  # the one read of the file
        except NotAnImage:
            self._out.put((_IGNORED, position))
            return
        except UnreadableImage as error:
            self._out.put((_SKIPPED, position, str(error)))
            return
        read = time.perf_counter()
        stats.add("read", read - started)
        header = parse_jpeg_header(data) if fmt == "JPEG" and self.decoder else None
        if header is None or not header.gpu_decodable:
            self._decode_on_cpu(_File(position, data, fmt, header, None), stats, capture=self.capture)
            return
        file = _File(position, data, fmt, header, None)
        if self.capture:
            file.facts = _safe_facts(data, header)
            stats.add("facts", time.perf_counter() - read)
        outcome = self._queue_for_device(file)
        if outcome == _QUEUED:
            return
        try:
            self._decode_on_cpu(file, stats, capture=False)
        finally:
            if outcome == _ASSIST:
                with self._cv:
                    self._assisting -= 1

    def _queue_for_device(self, file: _File) -> int:
        """Queue a JPEG for the device, or say who decodes it: _ASSIST, this thread on the CPU because the device
        is behind and the picture is large enough for that to pay, or _CPU because no device decodes any more.
        A small picture waits for room: decoding it on the CPU would take a reader thread away for 17 ms (2 MP)
        to gain one picture, while the device decodes 4,000 a second (issue 14's first H200 run: with reader
        threads decoding whatever found the queue full, 2 MP ingests ran at 1,122 and 1,569 images/s)."""
        size = len(file.data)
        with self._cv:
            while True:
                if self._decoders_left == 0 or self._stop.is_set():
                    return _CPU
                if self._device_pending < self._backlog and \
                        not (self._bytes and self._bytes + size > MAX_DEVICE_QUEUE_BYTES):
                    self._device_files.append(file)
                    self._last_queued = time.monotonic()
                    self._device_pending += 1
                    self._device_pixels += file.header.pixels
                    self._bytes += size
                    if len(self._device_files) >= self.decode_batch or \
                            self._device_pixels >= self._pixels_per_call:
                        self._cv.notify_all()
                    return _QUEUED
                if file.header.pixels >= ASSIST_MIN_PIXELS and self._assisting < self._max_assist:
                    self._assisting += 1
                    return _ASSIST
                self._cv.wait(BATCH_WAIT)

    def _decode_on_cpu(self, file: _File, stats: ReaderStats, capture: bool = False) -> None:
        started = time.perf_counter()
        try:
            pixels, facts = pixels_from_bytes(file.data, file.fmt, self.geometry, self.min_side, capture=capture)
        except NotAnImage:
            self._out.put((_IGNORED, file.position))
        except UnreadableImage as error:
            self._out.put((_SKIPPED, file.position, str(error)))
        except Exception as error:  # noqa: BLE001 - a reader must never take the whole ingest down
            self._out.put((_SKIPPED, file.position, f"unexpected error: {type(error).__name__}: {error}"[:300]))
        else:
            self._out.put((_PIXELS, file.position, pixels, facts if capture else file.facts))
        stats.add("CPU decode", time.perf_counter() - started)

    def _take_fallback(self, wait: bool) -> _File | None:
        with self._cv:
            if not self._fallback and wait and self._decoders_left and not self._stop.is_set():
                self._cv.wait(_POLL)
            if self._fallback:
                file = self._fallback.popleft()
                self._bytes -= len(file.data)
                self._cv.notify_all()
                return file
        return None

    def _fallback_finished(self) -> bool:
        with self._cv:
            return self._decoders_left == 0 and not self._fallback

    # -- decoding threads ----------------------------------------------------------------------------------------
    def _decode_loop(self) -> None:
        import torch

        stats = ReaderStats()
        try:
            on_cuda = self.device.startswith("cuda")
            stream = torch.cuda.Stream(torch.device(self.device)) if on_cuda else None
            try:
                decoder = make_decoder(self.decoder, self.device)
            except Exception:  # noqa: BLE001 - no device decoding then: the reader threads decode everything
                decoder = None
            while True:
                started = time.perf_counter()
                files = self._take_device_batch(stop_taking=decoder is None)
                if files is None:
                    return
                stats.add("decoder waits for files", time.perf_counter() - started, 0)
                if decoder is None:
                    self._send_back(files)
                    continue
                with torch.cuda.stream(stream) if on_cuda else _nothing():
                    self._decode_batch(decoder, files, stream, stats)
        finally:
            with self._cv:
                self._decoders_left -= 1
                if self._decoders_left == 0:  # nobody decodes what is still queued: the CPU does
                    self._fallback.extend(self._device_files)
                    self._device_files.clear()
                self._cv.notify_all()
            self._merge_stats(stats)

    def _take_device_batch(self, stop_taking: bool) -> list[_File] | None:
        with self._cv:
            while True:
                if self._stop.is_set():
                    return None
                waiting = bool(self._device_files)
                ready = len(self._device_files) >= self.decode_batch or \
                    self._device_pixels >= self._pixels_per_call or (waiting and self._readers_left == 0) or \
                    (waiting and time.monotonic() - self._last_queued >= BATCH_WAIT)
                if ready or (stop_taking and waiting):
                    files, pixels = [], 0
                    while self._device_files and len(files) < self.decode_batch:
                        file = self._device_files[0]
                        if files and pixels + file.header.pixels > self._pixels_per_call:
                            break
                        self._device_files.popleft()
                        files.append(file)
                        pixels += file.header.pixels
                    self._device_pixels -= pixels
                    return files
                if self._readers_left == 0 and not self._device_files:
                    return None
                self._cv.wait(BATCH_WAIT if waiting else _POLL)

    def _decode_batch(self, decoder, files: list[_File], stream, stats: ReaderStats) -> None:
        started = time.perf_counter()
        try:
            images = decoder.decode([file.data for file in files])
            if len(images) != len(files):
                raise RuntimeError("the decoder returned a picture count unlike the file count")
        except Exception:  # noqa: BLE001 - the whole call failed: the CPU decodes these files
            self._send_back(files)
            return
        decoded = time.perf_counter()
        stats.add("device decode", decoded - started, len(files))
        try:
            done, pixels = model_pixels_on_device(images, [f.header.orientation for f in files], self.geometry)
            del images
            if stream is not None:
                stream.synchronize()
        except Exception:  # noqa: BLE001 - out of device memory, say: the CPU decodes these files
            self._send_back(files)
            return
        stats.add("device resize", time.perf_counter() - decoded, len(done))
        done_set = set(done)
        failed = [file for i, file in enumerate(files) if i not in done_set]
        with self._cv:
            self._device_pending -= len(done)
            self._bytes -= sum(len(files[i].data) for i in done)
            self._cv.notify_all()
        if done:
            self._out.put((_DEVICE, [files[i].position for i in done], pixels, [files[i].facts for i in done]))
        if failed:
            stats.add("device refused", 0.0, len(failed))
            self._send_back(failed)

    def _send_back(self, files: list[_File]) -> None:
        """Files the device did not decode: the reader threads decode them on the CPU."""
        with self._cv:
            self._device_pending -= len(files)
            self._fallback.extend(files)
            self._cv.notify_all()

    def _merge_stats(self, stats: ReaderStats) -> None:
        if self.stats is not None:
            with self._cv:
                self.stats.merge(stats)


class _nothing:
    def __enter__(self):
        return None

    def __exit__(self, *_):
        return False
