"""What a Ray cluster's workers run in a distributed ingest (ray_embed.py sets them to work): read tasks that read
files with the local ingest's reader, and embedding actors, each holding one model, that embed what was read with
the local ingest's code. So a file reads, decodes and embeds the same way on the cluster as on this machine.

Batches travel between them, and back to the driver, as columns of plain values (Ray Data's numpy batches):
  blocks in:     position (the files' int64 positions in the ingest's list of paths), path (the files' paths as
                 bytes: os.fsencode, so any name survives); a row per block of files
  read results:  position, path, status (cpu_reader's OK / ENCODED / SKIPPED / IGNORED), reason (a skipped file's),
                 data (bytes: the uint8 pixels [3, S, S], or an undecoded JPEG's file), orientation, pixel_count,
                 facts (the file's ImageFacts from the bytes read for it, pickled; b"" when none were captured)
  embedded:      position, status (OK / SKIPPED / IGNORED), reason, vector (float32 [dim]; zeros unless OK), facts
"""

from __future__ import annotations

import functools
import os
import pickle
import signal
from typing import Iterator

import numpy as np

from ..models import Embedder
from ..pipeline.batches import decode_read_batch
from ..pipeline.cpu_reader import ENCODED, IGNORED, OK, SKIPPED, collate, read_file
from ..pipeline.encoded_jpeg import EncodedJpeg
from ..store.records import ImageFacts


def read_blocks(blocks: dict, *, chunk: int, geometry: bytes, min_side: int | None, encoded_jpegs: bool,
                capture: bool, crash_on: str | None = None) -> Iterator[dict]:
    """A read task: blocks of files (a row each: the files' positions and paths) -> read results, `chunk` files
    at a time, so that the results flow on while the rest of the block is read. geometry: the model's resize and
    crop, pickled (one object per process, whatever the number of tasks: decode.py caches its plan per object)."""
    resize_and_crop = _unpickled(geometry)
    for positions, paths in zip(blocks["position"], blocks["path"]):
        for start in range(0, len(positions), chunk):
            yield _read_files(np.asarray(positions[start:start + chunk], dtype=np.int64),
                              _objects(list(paths[start:start + chunk])), resize_and_crop, min_side,
                              encoded_jpegs, capture, crash_on)


def _read_files(positions: np.ndarray, raw_paths: np.ndarray, resize_and_crop, min_side: int | None,
                encoded_jpegs: bool, capture: bool, crash_on: str | None) -> dict:
    statuses, reasons, data, orientations, pixel_counts, facts = [], [], [], [], [], []
    for raw_path in raw_paths:
        path = os.fsdecode(raw_path)
        if crash_on is not None and os.path.basename(path) == crash_on:
            os.kill(os.getpid(), signal.SIGKILL)  # test hook (config.RayTestFaults): a file that crashes its reader
        status, payload = read_file(path, resize_and_crop, min_side, encoded_jpegs, capture)
        statuses.append(status)
        reasons.append(_text(payload) if status == SKIPPED else "")
        if status == OK:
            data.append(payload[0].tobytes())
            facts.append(_packed_facts(payload[1]))
        elif status == ENCODED:
            data.append(payload.data.tobytes())
            facts.append(_packed_facts(payload.facts))
        else:
            data.append(b"")
            facts.append(b"")
        orientations.append(payload.orientation if status == ENCODED else 1)
        pixel_counts.append(payload.pixels if status == ENCODED else 0)
    return {"position": positions, "path": raw_paths, "status": _objects(statuses),
            "reason": _objects(reasons), "data": _objects(data), "orientation": np.array(orientations, np.int64),
            "pixel_count": np.array(pixel_counts, np.int64), "facts": _objects(facts)}


class EmbeddingActor:
    """One model on one GPU (or on the CPU), loaded once by name; called with batches of read results."""

    def __init__(self, model_name: str, device: str, environment: dict[str, str],
                 kill_marker: str | None = None) -> None:
        # the driver's settings that shape the model (IMAGE_SEARCH_CPU_PRECISION, the hub's HF_* variables): a
        # worker on another machine has no .env of its own
        os.environ.update(environment)
        import torch  # imported here for start-up time (see pipeline/__init__.py)

        if device == "cpu":
            # Ray starts a 1-CPU worker with OMP_NUM_THREADS=1; the model takes every core, as in a local ingest
            # (whose readers share them with it: the measured best on the CPU, pipeline/cpu_reader.py)
            torch.set_num_threads(len(os.sched_getaffinity(0)))
        from ..models.loading import load_model

        self.embedder = load_model(model_name, device)
        self.kill_marker = kill_marker
        self.calls = 0

    def __call__(self, read: dict) -> dict:
        self.calls += 1
        if self.kill_marker is not None and self.calls == 2:
            _die_once(self.kill_marker)
        return embed_read_results(self.embedder, read)


def embed_read_results(embedder: Embedder, read: dict) -> dict:
    """Read results -> embedded rows, decoded (undecoded JPEGs on the model's device) and embedded as a local
    ingest does (pipeline/batches.decode_read_batch)."""
    paths = [os.fsdecode(raw_path) for raw_path in read["path"]]
    side = embedder.input_size
    items = []
    for i, (status, reason, data, facts) in enumerate(zip(read["status"], read["reason"], read["data"],
                                                          read["facts"])):
        if status == OK:
            items.append((i, OK, (np.frombuffer(data, np.uint8).reshape(3, side, side), unpacked_facts(facts))))
        elif status == ENCODED:
            items.append((i, ENCODED, EncodedJpeg(np.frombuffer(data, np.uint8), int(read["orientation"][i]),
                                                  int(read["pixel_count"][i]), unpacked_facts(facts))))
        else:
            items.append((i, status, reason or None))
    positions, pixels, skipped, _, facts_of_rows = decode_read_batch(embedder, paths, collate(items))
    statuses = [IGNORED] * len(paths)
    reasons = [""] * len(paths)
    for i, reason in skipped:
        statuses[i], reasons[i] = SKIPPED, _text(reason)
    vectors = np.zeros((len(paths), embedder.dim), dtype=np.float32)
    facts = [b""] * len(paths)
    if positions:
        vectors[positions] = embedder.encode_pixels(pixels)
        for i, file_facts in zip(positions, facts_of_rows):
            statuses[i], facts[i] = OK, _packed_facts(file_facts)
    return {"position": read["position"], "status": _objects(statuses), "reason": _objects(reasons),
            "vector": vectors, "facts": _objects(facts)}


@functools.lru_cache(maxsize=4)
def _unpickled(blob: bytes):
    return pickle.loads(blob)


def _packed_facts(facts: ImageFacts | None) -> bytes:
    return pickle.dumps(facts) if facts is not None else b""


def unpacked_facts(packed: bytes) -> ImageFacts | None:
    """A facts column's value back as ImageFacts (b"": nothing captured)."""
    return pickle.loads(packed) if packed else None


def _objects(values: list) -> np.ndarray:
    array = np.empty(len(values), dtype=object)
    array[:] = values
    return array


def _text(reason: str) -> str:
    """A reason as text every column takes (one from a file's name could hold undecodable bytes)."""
    return str(reason).encode("utf-8", "replace").decode("utf-8")


def _die_once(marker: str) -> None:
    """Test hook (config.RayTestFaults): the first worker here creates the marker, says its pid in it, and is
    killed; the others go on."""
    try:
        handle = os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        return
    os.write(handle, str(os.getpid()).encode())
    os.close(handle)
    os.kill(os.getpid(), signal.SIGKILL)
