"""The embed step of an ingest on a Ray cluster (Ray Data): many GPUs, many machines, one dataset.

Only embedding is distributed; the driver (this process) plans and commits as for a local ingest (ingest/), so
the journal, the index, the locks, incremental re-ingests and the report of skipped files are the same. RayEmbedding
is an EmbedFiles (embed.py): given the model and the files to embed, it yields EmbeddedBatch-es, computed by
  read tasks      on every CPU of the cluster, reading the files from the path the driver sees (shared storage)
                  with the local reader (ray_workers.read_blocks);
  an actor pool   one model per GPU of the cluster (or, without GPUs, one CPU actor per machine) embedding what
                  the readers read (ray_workers.EmbeddingActor).
A worker that dies is restarted by Ray and its batch tried once more; the files of a batch that fails again are read
once more, a file per task, and embedded by the driver's model; a file whose reading still kills its worker is
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
from dataclasses import dataclass, replace
from typing import Iterator, Sequence

import numpy as np

from ..config import capture_requested, device_decode_requested, ray_test_faults
from ..errors import Fix, ImageSearchError, InvalidInputError, MissingPackageError
from ..models import Embedder
from ..pipeline.batches import EmbeddedBatch, batch_size_for_device, progress_bar, reader_batch_for_device
from ..pipeline.cpu_reader import IGNORED, OK, SKIPPED
from . import ray_workers

LOCAL = "local"  # the address that starts a Ray on this machine (Ray's own word for it)
RAY_VERSION = "2.60.0"
INSTALL_HINT = (f'install it with: pipenv sync --categories="packages ray" (or: pip install '
                f'"ray[data]=={RAY_VERSION}")')

# The most files of one input block: 10 million files make 39,000 blocks (64 KB of paths each, cheap to hand
# out), and a block lost to a crash is read again a file at a time, so it must stay small.
MAX_BLOCK_FILES = 256
# A batch whose worker dies is run once more on the restarted worker; failing again, its files are read once more
# one by one (each file 3 tries in all): a lost machine costs a retry, a file that crashes every reader is skipped.
BATCH_RETRIES = 1
CONNECT_SECONDS = 5
CRASH_REASON = "reading it crashed a Ray worker, each of 3 times"
# What a worker on another machine must see as the driver does (it has no .env): the model's number format and
# where weights come from.
FORWARDED_VARIABLES = ("IMAGE_SEARCH_CPU_PRECISION", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_ENDPOINT",
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
    workers: int | None  # the most read tasks at once (None: Ray Data's choice, one per free CPU)
    encoded_jpegs: bool  # readers leave the JPEGs that the GPU decodes undecoded
    reading: dict  # ray_workers.read_blocks's other settings
    actor_arguments: dict  # ray_workers.EmbeddingActor's


class RayEmbedding:
    """The embed step on a Ray cluster: joined (or started here) on creation, left by close()."""

    def __init__(self, address: str | None = None, *, device: str | None = None) -> None:
        """address: a running cluster's (host:port, ray://host:port or auto); None starts a Ray on this machine
        with all its CPUs and GPUs. device: None uses the cluster's GPUs where it has any, else its CPUs; cpu or
        cuda insist."""
        self.ray = import_ray()
        self.address = address or LOCAL
        self.device = device
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
        """batch_size: images per model batch on each actor; workers: the most read tasks at once (None: one per
        CPU of the cluster)."""
        if not paths:
            return
        gpus, cpu_nodes = self._cluster()
        device = self._actor_device(gpus)
        on_gpu = device != "cpu"
        batch_size = batch_size or batch_size_for_device(device)
        actors = gpus if on_gpu else max(1, cpu_nodes)
        faults = ray_test_faults()
        environment = {name: os.environ[name] for name in FORWARDED_VARIABLES if name in os.environ}
        work = _Work(paths=paths, on_gpu=on_gpu, actors=actors, workers=workers,
                     encoded_jpegs=on_gpu and device_decode_requested(),
                     reading={"geometry": pickle.dumps(embedder.geometry), "min_side": embedder.input_size,
                              "capture": capture_requested(), "crash_on": faults.crash_on},
                     actor_arguments={"model_name": embedder.name, "device": device, "environment": environment,
                                      "kill_marker": faults.kill_marker})
        cpus = int(self.ray.cluster_resources().get("CPU", 1))
        block_files = max(1, min(MAX_BLOCK_FILES, math.ceil(len(paths) / cpus)))
        label = f"Embedding on Ray ({actors} {'GPU' if on_gpu else 'CPU'} worker{'s' if actors > 1 else ''})"
        bar = progress_bar(len(paths), progress, label)
        done = np.zeros(len(paths), dtype=bool)
        try:
            every_file = self._reading(work, range(len(paths)), block_files=block_files,
                                       chunk=reader_batch_for_device(device, batch_size), retries=BATCH_RETRIES)
            embedded = self._embedding(work, every_file, batch_size)
            for batch in self._results(embedded.iter_batches(batch_size=None, batch_format="numpy"), done):
                bar.update(len(batch.positions) + len(batch.skipped) + len(batch.ignored))
                yield batch
            missing = np.flatnonzero(~done).tolist()
            if missing:
                # The files of batches that failed twice: read once more a file per task and no retry, then embedded
                # here, by the driver's model (for a few files, starting the actors again would cost more). The
                # readers decode every file themselves, so nothing a file holds reaches this process undecoded.
                one_by_one = self._reading(replace(work, encoded_jpegs=False), missing, block_files=1, chunk=1,
                                           retries=0)
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

    def _reading(self, work: _Work, files, *, block_files: int, chunk: int, retries: int):
        """The read results of these files (positions in work.paths): blocks of block_files files, read by
        tasks that are tried 1 + retries times."""
        from ray.data import TaskPoolStrategy

        # one item per block of files: the list stays small (10 million files: 39,000 items), and each read task
        # takes one block
        files = list(files)
        blocks = [{"position": files[start:start + block_files],
                   "path": [os.fsencode(work.paths[i]) for i in files[start:start + block_files]]}
                  for start in range(0, len(files), block_files)]
        with _ray_data_settings():
            dataset = self.ray.data.from_items(blocks, override_num_blocks=len(blocks))
            dataset = dataset.map_batches(
                ray_workers.read_blocks, batch_size=1, batch_format="numpy",
                fn_kwargs={**work.reading, "encoded_jpegs": work.encoded_jpegs, "chunk": chunk},
                compute=TaskPoolStrategy(size=work.workers) if work.workers else None, num_cpus=1,
                max_retries=retries)
        return _configured(dataset)

    def _embedding(self, work: _Work, read, batch_size: int):
        """The read results embedded by the actor pool; a batch whose actor dies is retried once."""
        from ray.data import ActorPoolStrategy

        with _ray_data_settings():
            dataset = read.map_batches(
                ray_workers.EmbeddingActor, fn_constructor_kwargs=work.actor_arguments, batch_size=batch_size,
                batch_format="numpy", compute=ActorPoolStrategy(size=work.actors),
                # a GPU actor's one thread shares the cores with the readers, as the model's does in a local ingest
                num_gpus=1 if work.on_gpu else None, num_cpus=0 if work.on_gpu else 1,
                max_restarts=-1, max_task_retries=BATCH_RETRIES)
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


def _configured(dataset):
    context = dataset.context
    context.max_errored_blocks = -1  # a batch that failed its retries is read again a file at a time (__call__)
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
