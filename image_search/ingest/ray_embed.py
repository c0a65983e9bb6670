"""The embed step of an ingest on a Ray cluster (Ray Data): many GPUs, many machines, one dataset.

Only embedding is distributed; the driver (this process) plans and commits as for a local ingest (ingest/), so
the journal, the index, the locks, incremental re-ingests and the report of skipped files are the same. RayEmbedding
is an EmbedFiles (embed.py): given the model and the files to embed, it yields EmbeddedBatch-es, computed by an
actor pool of one model per GPU of the cluster (or, without GPUs, one CPU actor per machine). Each actor runs the
local ingest's own embed step (pipeline/batches.embed_files) over blocks of files that it reads from the path the
driver sees (shared storage): on a GPU the threaded reader with JPEGs decoded on the device, on the CPU the reader
processes, with its share of its machine's cores (ray_workers.EmbeddingActor). So a file reads, decodes and embeds
the same way on the cluster as on this machine, as fast.

Why actors read their own files rather than Ray Data read tasks feeding them: that way (each file read by a task on
any CPU, its pixels or undecoded bytes sent to the actor through the object store) an H200 with 16 cores embedded
412 images/s of 2 MP photos against the local ingest's 1,331, because it left out the threaded GPU reader, which
exists to keep file bytes from crossing processes (pipeline/thread_reader.py).

A worker that dies is restarted by Ray and its block tried once more; the files of a block that fails again are
read once more, a file per task, and embedded by the driver's model; a file whose reading still kills its worker is
reported as skipped, not retried for ever.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import pickle
import socket
import warnings
from dataclasses import dataclass
from typing import Iterator, Sequence

import numpy as np

from ..config import capture_requested, ray_test_faults
from ..errors import Fix, ImageSearchError, InvalidInputError, MissingPackageError
from ..models import Embedder
from ..pipeline.batches import EmbeddedBatch, batch_size_for_device, progress_bar
from ..pipeline.cpu_reader import IGNORED, OK, SKIPPED
from . import ray_workers

LOCAL = "local"  # the address that starts a Ray on this machine (Ray's own word for it)
RAY_VERSION = "2.60.0"
INSTALL_HINT = (f'install it with: pipenv sync --categories="packages ray" (or: pip install '
                f'"ray[data]=={RAY_VERSION}")')

# An actor runs the embed step over a block of files per call, and each block costs a start and a drain of its
# reader (the GPU waits for the first decoding batch and for the model's last one). So blocks are large, and a GPU
# actor embeds two at once, one starting while the other drains. Measured on the H200 (16 cores, 60,000 2 MP
# files, evaluation/results/ingest-ray-h200-60k.json; the whole run less the seconds a 64-file ingest through Ray
# takes, the actor's start): blocks of 8,192 one at a time ran at
# about 1,234 images/s, of 20,000 one at a time 1,333, of 20,000 two at a time 1,456 (the local ingest: 1,446).
# The two do not read at the same time: the second block's reader starts once the first's has taken its last file
# (ray_workers.EmbeddingActor), since two readers at once put 32 threads on 16 cores; at 240,000 files Ray kept
# 86.6% of the local speed with both reading throughout, 96.6% and 107.5% (two runs) with one reader at a time
# (evaluation/results/ingest-ray-h200-240k-lean-import.json, -240k-turns.json, -240k-turns-first.log).
# Each actor still gets at least BLOCKS_PER_ACTOR blocks, so that the files spread over the actors and one lost
# actor's block is a small part of the work. On the CPU one block at a time: two would mean two sets of reader
# processes.
BLOCKS_PER_ACTOR = 4
MAX_BLOCK_FILES = 20_000
BLOCKS_AT_ONCE_ON_GPU = 2
# A block whose worker dies is run once more on the restarted worker; failing again, its files not yet embedded are
# read once more one by one: a lost machine costs a retry, a file that crashes every reader is skipped.
BLOCK_RETRIES = 1
CONNECT_SECONDS = 5
CRASH_REASON = "reading it crashed a Ray worker each time it was tried"
# What a worker on another machine must see as the driver does (it has no .env): the model's number format and
# where weights come from.
FORWARDED_VARIABLES = ("IMAGE_SEARCH_CPU_PRECISION", "IMAGE_SEARCH_GPU_DECODE", "IMAGE_SEARCH_GPU_DECODER",
                       "IMAGE_SEARCH_CAPTURE_FACTS", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_ENDPOINT",
                       "HTTPS_PROXY", "HTTP_PROXY", "ALL_PROXY", "NO_PROXY", "https_proxy", "http_proxy",
                       "all_proxy", "no_proxy")


def import_ray():
    try:
        import ray
        import ray.data  # noqa: F401 - the extra ray[data] (pyarrow, pandas), not just ray
    except ImportError:
        raise MissingPackageError(f"A distributed ingest runs on Ray, which is not installed here; {INSTALL_HINT}."
                                  ) from None
    return ray


@dataclass
class _Work:
    """What every pass of one embed step shares."""
    paths: Sequence[str]
    on_gpu: bool
    actors: int
    reading: dict  # ray_workers.read_blocks's other settings (the one-by-one pass)
    actor_arguments: dict  # ray_workers.EmbeddingActor's


class RayEmbedding:
    """The embed step on a Ray cluster: joined (or started here) on creation, left by close()."""

    def __init__(self, address: str | None = None, *, device: str | None = None,
                 block_files: int | None = None, blocks_at_once: int | None = None) -> None:
        """address: a running cluster's (host:port, ray://host:port or auto); None starts a Ray on this machine
        with all its CPUs and GPUs. device: None uses the cluster's GPUs where it has any, else its CPUs; cpu or
        cuda insist. block_files: files per block an actor takes (None: see MAX_BLOCK_FILES); blocks_at_once:
        blocks an actor embeds at the same time, each with its own reader (None: BLOCKS_AT_ONCE_ON_GPU on a GPU,
        else one). These two are for benchmarks."""
        self.ray = import_ray()
        self.address = address or LOCAL
        self.device = device
        self.block_files = block_files
        self.blocks_at_once = blocks_at_once
        self.owns_connection = not self.ray.is_initialized()  # a program (a test) that joined already keeps it
        # Ray Data's advice on its own settings (an actor pool's size against the blocks it was given so far) is
        # not the user's to act on
        warnings.filterwarnings("ignore", category=UserWarning, module=r"ray\.data\.")
        if self.owns_connection:
            _check_reachable(self.address)
            try:
                self.ray.init(address=self.address, logging_level=logging.WARNING,
                              **({"include_dashboard": False} if self.address == LOCAL else {}))
            except (ConnectionError, ValueError, RuntimeError, TimeoutError) as error:
                if self.address == LOCAL:
                    raise ImageSearchError(f"Cannot start Ray on this machine ({_first_line(error)}).") from None
                raise InvalidInputError(f"Cannot join the Ray cluster at {self.address} ({_first_line(error)}); run "
                                        "the ingest on a machine of the cluster (one that 'ray start' joined to it), "
                                        "or name no address to start Ray on this machine.") from None

    def close(self) -> None:
        if self.owns_connection and self.ray.is_initialized():
            self.ray.shutdown()

    # -- EmbedFiles -------------------------------------------------------------------------------------------
    def __call__(self, embedder: Embedder, paths: Sequence[str], *, batch_size: int | None = None,
                 workers: int | None = None, progress: bool = True) -> Iterator[EmbeddedBatch]:
        """batch_size: images per model batch on each actor; workers: reader processes (CPU) or threads (GPU) of
        each actor (None: its machine's cores, shared by the machine's actors)."""
        if not paths:
            return
        gpus, cpu_nodes = self._cluster()
        device = self._actor_device(gpus)
        on_gpu = device != "cpu"
        batch_size = batch_size or batch_size_for_device(device)
        actors = gpus if on_gpu else max(1, cpu_nodes)
        faults = ray_test_faults()
        environment = {name: os.environ[name] for name in FORWARDED_VARIABLES if name in os.environ}
        work = _Work(paths=paths, on_gpu=on_gpu, actors=actors,
                     reading={"geometry": pickle.dumps(embedder.geometry), "min_side": embedder.input_size,
                              "capture": capture_requested(), "crash_on": faults.crash_on},
                     actor_arguments={"model_name": embedder.name, "device": device, "environment": environment,
                                      "batch_size": batch_size, "workers": workers,
                                      "kill_marker": faults.kill_marker, "crash_on": faults.crash_on})
        block_files = self.block_files or max(1, min(MAX_BLOCK_FILES,
                                                     math.ceil(len(paths) / (actors * BLOCKS_PER_ACTOR))))
        label = f"Embedding on Ray ({actors} {'GPU' if on_gpu else 'CPU'} worker{'s' if actors > 1 else ''})"
        bar = progress_bar(len(paths), progress, label)
        done = np.zeros(len(paths), dtype=bool)
        try:
            embedded = self._embedding(work, range(len(paths)), block_files)
            for batch in self._results(embedded.iter_batches(batch_size=None, batch_format="numpy"), done):
                bar.update(len(batch.positions) + len(batch.skipped) + len(batch.ignored))
                yield batch
            missing = np.flatnonzero(~done).tolist()
            if missing:
                # The files of blocks that failed twice and were not embedded: read once more a file per task and
                # no retry, then embedded here, by the driver's model (for a few files, starting the actors again
                # would cost more). The readers decode every file themselves, so nothing a file holds reaches
                # this process undecoded.
                one_by_one = self._reading(work, missing)
                read = one_by_one.iter_batches(batch_size=batch_size, batch_format="numpy")
                for batch in self._results((ray_workers.embed_read_results(embedder, columns) for columns in read),
                                           done):
                    bar.update(len(batch.positions) + len(batch.skipped) + len(batch.ignored))
                    yield batch
            crashed = np.flatnonzero(~done).tolist()
            if crashed:
                bar.update(len(crashed))
                yield EmbeddedBatch([], np.zeros((0, embedder.dim), np.float32),
                                    [(position, CRASH_REASON) for position in crashed], [])
        finally:
            bar.close()

    def _cluster(self) -> tuple[int, int]:
        """(GPUs, machines with a CPU) of the cluster."""
        nodes = [node for node in self.ray.nodes() if node.get("Alive")]
        gpus = int(sum(node["Resources"].get("GPU", 0) for node in nodes))
        return gpus, sum(1 for node in nodes if node["Resources"].get("CPU", 0) >= 1)

    def _actor_device(self, gpus: int) -> str:
        if self.device in (None, "", "auto"):
            return "cuda" if gpus else "cpu"
        if self.device == "cpu":
            return "cpu"
        if not gpus:
            raise InvalidInputError(f"Device '{self.device}' was asked for but the Ray cluster has no GPU.",
                                    fix=Fix.USE_CPU)
        return "cuda"  # each GPU actor sees its own GPU as the only one (Ray sets CUDA_VISIBLE_DEVICES)

    def _embedding(self, work: _Work, files, block_files: int):
        """These files (positions in work.paths) read and embedded by the actor pool, a block of block_files
        files per actor call; a block whose actor dies is tried once more."""
        with _ray_data_settings():
            dataset = self.ray.data.from_items(_blocks(work, files, block_files),
                                               override_num_blocks=math.ceil(len(files) / block_files))
            dataset = dataset.map_batches(
                ray_workers.EmbeddingActor, fn_constructor_kwargs=work.actor_arguments, batch_size=1,
                batch_format="numpy", compute=self._actor_pool(work),
                # the actor's own reader threads or processes take its share of the machine's cores (EmbeddingActor)
                num_gpus=1 if work.on_gpu else None, num_cpus=1,
                max_restarts=-1, max_task_retries=BLOCK_RETRIES)
        return _configured(dataset)

    def _actor_pool(self, work: _Work):
        from ray.data import ActorPoolStrategy

        at_once = self.blocks_at_once or (BLOCKS_AT_ONCE_ON_GPU if work.on_gpu else 1)
        if at_once == 1:
            return ActorPoolStrategy(size=work.actors)
        return ActorPoolStrategy(size=work.actors, max_tasks_in_flight_per_actor=at_once + 1,
                                 max_concurrent_calls_per_actor=at_once, enable_true_multi_threading=True)

    def _reading(self, work: _Work, files):
        """The read results of these files (positions in work.paths), a file per read task and one try each."""
        from ray.data import TaskPoolStrategy

        with _ray_data_settings():
            dataset = self.ray.data.from_items(_blocks(work, files, 1), override_num_blocks=len(files))
            dataset = dataset.map_batches(
                ray_workers.read_blocks, batch_size=1, batch_format="numpy", fn_kwargs=work.reading,
                compute=TaskPoolStrategy(), num_cpus=1, max_retries=0)
        return _configured(dataset)

    def _results(self, embedded: Iterator[dict], done: np.ndarray) -> Iterator[EmbeddedBatch]:
        """The embedded batches as they arrive, each file once (a retried batch may come back twice)."""
        with _quiet_ray_data():
            try:
                for columns in embedded:
                    batch = _embedded_batch(columns, done)
                    if batch is not None:
                        yield batch
            except ImageSearchError:
                raise
            except Exception as error:  # noqa: BLE001 - Ray wraps what failed on a worker
                cause = _image_search_cause(error)
                if cause is not None:
                    raise cause from None
                raise ImageSearchError(f"The Ray cluster failed to embed the files ({_first_line(error)}); nothing "
                                       "was saved, run the ingest again.") from error


@contextlib.contextmanager
def _ray_data_settings():
    with warnings.catch_warnings():
        # Ray 2.60 flags retry settings given to map_batches as deprecated (to be replaced in 2.64), and has no
        # other way to bound the retries yet; unbounded, a file that crashes its worker is retried for ever.
        warnings.simplefilter("ignore")
        yield


def _blocks(work: _Work, files, block_files: int) -> list[dict]:
    """One item per block of files, their positions and paths (bytes: os.fsencode, so any name survives)."""
    files = list(files)
    return [{"position": files[start:start + block_files],
             "path": [os.fsencode(work.paths[i]) for i in files[start:start + block_files]]}
            for start in range(0, len(files), block_files)]


def _configured(dataset):
    context = dataset.context
    context.max_errored_blocks = -1  # a block that failed its retries is read again a file at a time (__call__)
    context.enable_progress_bars = False  # the driver shows one bar, of images across the cluster
    context.print_on_execution_start = False
    context.enable_auto_log_stats = False
    return dataset


def _embedded_batch(columns: dict, done: np.ndarray) -> EmbeddedBatch | None:
    positions, statuses = columns["position"].astype(np.int64), columns["status"]
    fresh = ~done[positions]
    if not fresh.any():
        return None
    done[positions] = True
    ok = fresh & (statuses == OK)
    skipped = [(int(p), str(r)) for p, s, r, f in zip(positions, statuses, columns["reason"], fresh)
               if f and s == SKIPPED]
    ignored = [int(p) for p, s, f in zip(positions, statuses, fresh) if f and s == IGNORED]
    return EmbeddedBatch(positions[ok].tolist(), np.ascontiguousarray(columns["vector"][ok], dtype=np.float32),
                         skipped, ignored, [ray_workers.unpacked_facts(packed) for packed in columns["facts"][ok]])


@contextlib.contextmanager
def _quiet_ray_data():
    """Ray Data logs each batch it gives up on with a traceback; what that means for the files is in the
    ingest's report (the full logs stay in Ray's session folder)."""
    logger = logging.getLogger("ray.data")
    level = logger.level
    logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        logger.setLevel(level)


def _image_search_cause(error: BaseException) -> ImageSearchError | None:
    """The ImageSearchError a worker raised (a model its machine cannot load, say), however Ray wrapped it."""
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        cause = getattr(error, "cause", None)  # a RayTaskError's: the worker's own exception, as it was raised
        if isinstance(cause, ImageSearchError):
            return cause
        if isinstance(error, ImageSearchError):
            return error
        error = cause or error.__cause__ or error.__context__
    return None


def _check_reachable(address: str) -> None:
    """A host:port that nothing answers on is said within seconds (ray.init would wait for minutes)."""
    host, _, port = address.removeprefix("ray://").rpartition(":")
    if not host or not port.isdigit():
        return  # local, auto, or a form only Ray reads
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=CONNECT_SECONDS).close()
    except OSError as error:
        raise InvalidInputError(f"Cannot reach the Ray cluster at {address} ({error.strerror or error}); check the "
                                "address that 'ray start --head' printed, or name none to start Ray on this "
                                "machine.") from None


def _first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return (text[0] if text else type(error).__name__)[:300]
