"""What a Ray cluster's workers run in a distributed ingest (ray_embed.py sets them to work): embedding actors, each
holding one model, that read and embed blocks of files with the local ingest's own embed step; and, for the files
of a block that failed twice, read tasks that read one file each with the local ingest's reader, for the driver to
embed. So a file reads, decodes and embeds the same way on the cluster as on this machine.

Batches travel between them, and back to the driver, as columns of plain values (Ray Data's numpy batches):
  blocks in:     position (the files' int64 positions in the ingest's list of paths), path (the files' paths as
                 bytes: os.fsencode, so any name survives); a row per block of files
  read results:  position, path, status (cpu_reader's OK / SKIPPED / IGNORED), reason (a skipped file's), data
                 (bytes: the uint8 pixels [3, S, S]), facts (the file's ImageFacts from the bytes read for it,
                 pickled; b"" when none were captured)
  embedded:      position, status (OK / SKIPPED / IGNORED), reason, vector (float32 [dim]; zeros unless OK), facts
"""

from __future__ import annotations

import functools
import os
import pickle
import signal
import threading
from typing import Iterator

import numpy as np

from ..models import Embedder
from ..pipeline.batches import EmbeddedBatch, decode_read_batch, embed_files
from ..pipeline.cpu_reader import IGNORED, OK, SKIPPED, collate, read_file
from ..store.records import ImageFacts


def read_blocks(blocks: dict, *, geometry: bytes, min_side: int | None, capture: bool,
                crash_on: str | None = None) -> Iterator[dict]:
    """A read task: blocks of files (a row each: the files' positions and paths) -> read results, a batch per
    block. geometry: the model's resize and crop, pickled (one object per process, whatever the number of tasks:
    decode.py caches its plan per object)."""
    resize_and_crop = _unpickled(geometry)
    for positions, paths in zip(blocks["position"], blocks["path"]):
        yield _read_files(np.asarray(positions, dtype=np.int64), _objects(list(paths)), resize_and_crop, min_side,
                          capture, crash_on)


def _read_files(positions: np.ndarray, raw_paths: np.ndarray, resize_and_crop, min_side: int | None,
                capture: bool, crash_on: str | None) -> dict:
    statuses, reasons, data, facts = [], [], [], []
    for raw_path in raw_paths:
        path = os.fsdecode(raw_path)
        if crash_on is not None and os.path.basename(path) == crash_on:
            os.kill(os.getpid(), signal.SIGKILL)  # test hook (config.RayTestFaults): a file that crashes its reader
        status, payload = read_file(path, resize_and_crop, min_side, capture=capture)
        statuses.append(status)
        reasons.append(_text(payload) if status == SKIPPED else "")
        data.append(payload[0].tobytes() if status == OK else b"")
        facts.append(_packed_facts(payload[1]) if status == OK else b"")
    return {"position": positions, "path": raw_paths, "status": _objects(statuses), "reason": _objects(reasons),
            "data": _objects(data), "facts": _objects(facts)}


class EmbeddingActor:
    """One model on one GPU (or on the CPU), loaded once by name, that reads and embeds blocks of files with the
    local ingest's embed step: on a GPU the threaded reader (JPEGs decoded on the device), on the CPU reader
    processes; with `workers` threads or processes, by default its share of its machine's cores."""

    def __init__(self, model_name: str, device: str, environment: dict[str, str], batch_size: int,
                 workers: int | None = None, kill_marker: str | None = None, crash_on: str | None = None) -> None:
        # the driver's settings that shape the model and the reading (IMAGE_SEARCH_CPU_PRECISION, GPU decoding,
        # the hub's HF_* variables): a worker on another machine has no .env of its own
        os.environ.update(environment)
        import torch  # imported here for start-up time (see pipeline/__init__.py)

        cores = cores_of_this_actor(device)
        # Ray starts a 1-CPU worker with OMP_NUM_THREADS=1. On the CPU the model takes every core, as in a local
        # ingest (whose readers share them with it: the measured best on the CPU, pipeline/cpu_reader.py); on a
        # GPU the model is still built on the CPU first, and on one thread that took 9.3 s of a GPU actor's start
        # on the H200 (ViT-B-32, evaluation/results/ray-start-h200.json), most of it.
        torch.set_num_threads(cores)
        from ..models.loading import load_model

        self.embedder = load_model(model_name, device)
        self.batch_size = batch_size
        self.workers = cores if workers is None else workers
        self.kill_marker = kill_marker
        self.crash_on = crash_on
        self.calls = 0
        self._turns = threading.Lock()
        self._last_taken: threading.Event | None = None  # set once the latest block's reader took its last file

    def __call__(self, blocks: dict) -> Iterator[dict]:
        self.calls += 1
        if self.kill_marker is not None and self.calls == 2:
            _die_once(self.kill_marker)
        for positions, raw_paths in zip(blocks["position"], blocks["path"]):
            paths = [os.fsdecode(raw_path) for raw_path in raw_paths]
            if self.crash_on is not None and self.crash_on in map(os.path.basename, paths):
                os.kill(os.getpid(), signal.SIGKILL)  # test hook (config.RayTestFaults): reading it kills the actor
            positions = np.asarray(positions, dtype=np.int64)
            taken = self._wait_for_turn()
            try:
                for batch in embed_files(self.embedder, paths, batch_size=self.batch_size, workers=self.workers,
                                         all_taken=taken):
                    rows = _embedded_rows(batch, positions, self.embedder.dim)
                    if len(rows["position"]):
                        yield rows
            finally:
                taken.set()  # the reader processes never set it, and a failed block must not hold the next one

    def _wait_for_turn(self) -> threading.Event:
        """Blocks embedded at the same time (ray_embed.BLOCKS_AT_ONCE_ON_GPU) read one after the other: a block's
        reader starts once the one before has taken its last file, so the cores go to one reader at a time while
        the earlier block's last files still decode and embed. Returns the event this block's reader sets."""
        taken = threading.Event()
        with self._turns:
            before, self._last_taken = self._last_taken, taken
        if before is not None:
            before.wait()
        return taken


def cores_of_this_actor(device: str) -> int:
    """This actor's share of its machine's CPUs: all of them for a CPU actor (one per machine), the machine's CPUs
    over its GPUs for a GPU actor (one per GPU)."""
    import ray

    node = ray.get_runtime_context().get_node_id()
    resources = next((entry["Resources"] for entry in ray.nodes() if entry.get("NodeID") == node), {})
    cpus = int(resources.get("CPU", 0)) or os.cpu_count() or 1
    gpus = int(resources.get("GPU", 0))
    return max(1, cpus // gpus) if device != "cpu" and gpus else max(1, cpus)


def _embedded_rows(batch: EmbeddedBatch, positions: np.ndarray, dim: int) -> dict:
    """An EmbeddedBatch of a block (positions in the block) -> embedded rows (positions in the ingest's paths)."""
    embedded, skipped = list(batch.positions), [i for i, _ in batch.skipped]
    count = len(embedded) + len(skipped) + len(batch.ignored)
    vectors = np.zeros((count, dim), dtype=np.float32)
    vectors[:len(embedded)] = batch.vectors
    facts = batch.facts if len(batch.facts) == len(embedded) else [None] * len(embedded)
    return {"position": positions[embedded + skipped + list(batch.ignored)],
            "status": _objects([OK] * len(embedded) + [SKIPPED] * len(skipped) + [IGNORED] * len(batch.ignored)),
            "reason": _objects([""] * len(embedded) + [_text(reason) for _, reason in batch.skipped]
                               + [""] * len(batch.ignored)),
            "vector": vectors,
            "facts": _objects([_packed_facts(f) for f in facts] + [b""] * (len(skipped) + len(batch.ignored)))}


def embed_read_results(embedder: Embedder, read: dict) -> dict:
    """Read results -> embedded rows, embedded as a local ingest does (pipeline/batches.decode_read_batch)."""
    paths = [os.fsdecode(raw_path) for raw_path in read["path"]]
    side = embedder.input_size
    items = []
    for i, (status, reason, data, facts) in enumerate(zip(read["status"], read["reason"], read["data"],
                                                          read["facts"])):
        if status == OK:
            items.append((i, OK, (np.frombuffer(data, np.uint8).reshape(3, side, side), unpacked_facts(facts))))
        else:
            items.append((i, status, reason or None))
    positions, pixels, skipped, ignored, facts_of_rows = decode_read_batch(embedder, paths, collate(items))
    vectors = embedder.encode_pixels(pixels) if positions else np.zeros((0, embedder.dim), np.float32)
    batch = EmbeddedBatch(positions, vectors, skipped, ignored, facts_of_rows)
    return _embedded_rows(batch, np.asarray(read["position"], dtype=np.int64), embedder.dim)


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
