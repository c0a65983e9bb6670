"""The per-dataset FAISS index files.

Each dataset owns a folder <data home>/indexes/<uid>/ holding one file per committed generation, named by its
generation number. A new generation is written to a temporary file, flushed to disk and renamed into place before
the metadata store commits that generation, so a crash at any moment leaves the committed generation's file intact;
files of other generations are leftovers and are removed by the next ingest.

Vectors are L2-normalised, so inner product is cosine similarity. Ids are the store's vector ids.
"""

from __future__ import annotations

import math
import os
import shutil
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from .config import IndexSettings
from .vectors.kinds import AUTO, FLAT, HNSW, IVF, IVF_SQ8, KINDS  # noqa: F401 (re-exported)

# Auto choice, from evaluation/benchmark_search.py (README, "Large collections"): on the 2-core machine an exact
# scan for one query took 1.7-6.6 ms at 20k vectors, 5.5-8 ms at 50k and 75 ms at 1M, while IVF stayed at 1-1.4 ms
# up to 100k with recall@10 1.000 at 20k-50k and 0.998 at 100k. At 1M, IVF holds 2 GB and a query scans ~60 MB
# (3-4 ms, and the scan pushes the text tower's weights out of the CPU cache: +2-3 ms per text query), while
# IVF-SQ8 holds 0.5 GB and scans a quarter of that (1.6-1.9 ms) at recall 0.968. So from COMPACT_FROM images, where
# full-precision vectors pass 0.5 GB, auto stores 8-bit codes. Going back to exact needs half as many images
# (hysteresis), so a dataset near the line does not change kind on every ingest; a compact or hand-picked
# approximate kind stays for as long as the dataset stays large.
APPROXIMATE_FROM = 20_000
APPROXIMATE_KIND = IVF
COMPACT_FROM = 250_000
COMPACT_KIND = IVF_SQ8

# IVF layout: about 2 * sqrt(n) lists (a power of two), trained by k-means on TRAIN_PER_LIST sampled vectors per
# list. A query scans the nprobe lists nearest to it: at least 1/SCAN_FRACTION of the lists and at least
# MIN_SCANNED vectors (cheap, and what keeps recall high on small datasets). Measured on the benchmark: recall@10
# vs exact 0.98 at 1M vectors (2048 lists, nprobe 64), more on smaller sets; 1/64 of the lists gave 0.96.
TRAIN_PER_LIST = 40
TRAIN_ITERATIONS = 10
MIN_PER_LIST = 39  # faiss' own minimum of training points per centroid
SCAN_FRACTION = 32
MIN_SCANNED = 8192
# HNSW graph: neighbours per node and construction effort (build time vs graph quality), search effort. Text
# queries are unlike the stored image vectors, which a graph handles worse than IVF: it needs a high efSearch.
HNSW_M = 32
HNSW_EF_CONSTRUCTION = 80
HNSW_EF_SEARCH = 512  # recall@10 0.968 at 100k on the benchmark (256: 0.951)

_BUILD_CHUNK = 65_536


def dataset_folder(data_home: Path, uid: str) -> Path:
    return Path(data_home) / "indexes" / uid


def index_file(data_home: Path, uid: str, generation: int) -> Path:
    return dataset_folder(data_home, uid) / f"{generation:010d}.faiss"


def new_index(dim: int, kind: str = FLAT):
    """An empty index that takes vectors without training (fit_index turns it into the kind it should be)."""
    import faiss

    if kind == FLAT:
        return faiss.IndexIDMap2(faiss.IndexFlatIP(dim))
    if kind == HNSW:
        graph = faiss.IndexHNSWFlat(dim, HNSW_M, faiss.METRIC_INNER_PRODUCT)
        graph.hnsw.efConstruction = HNSW_EF_CONSTRUCTION
        graph.hnsw.efSearch = HNSW_EF_SEARCH
        return faiss.IndexIDMap2(graph)
    raise ValueError(f"an empty {kind!r} index cannot be made: it needs vectors to train on")


def kind_of(index) -> str:
    import faiss

    if isinstance(index, faiss.IndexIVFFlat):
        return IVF
    if isinstance(index, faiss.IndexIVFScalarQuantizer):
        return IVF_SQ8
    inner = faiss.downcast_index(index.index) if isinstance(index, faiss.IndexIDMap2) else None
    if isinstance(inner, faiss.IndexFlat):
        return FLAT
    if isinstance(inner, faiss.IndexHNSWFlat):
        return HNSW
    raise ValueError(f"unsupported index type {type(index).__name__}")


def describe(index) -> str:
    """One line for people: the kind and its search parameters."""
    kind = kind_of(index)
    if kind in (IVF, IVF_SQ8):
        return f"{kind} ({index.nlist} lists, nprobe {index.nprobe})"
    if kind == HNSW:
        return f"{kind} (M {_graph(index).hnsw.nb_neighbors(1)}, efSearch {_graph(index).hnsw.efSearch})"
    return kind


def _graph(index):
    import faiss

    return faiss.downcast_index(index.index)


# -- choosing and building ---------------------------------------------------------------------------------------
def choose_kind(count: int, requested: str = AUTO, current: str | None = None) -> str:
    if requested != AUTO:
        return requested if count > 0 else FLAT  # nothing to train on yet; the next ingest builds it
    if current not in (None, FLAT, APPROXIMATE_KIND):
        return current if count >= APPROXIMATE_FROM // 2 else FLAT
    if count >= COMPACT_FROM:
        return COMPACT_KIND
    if count >= APPROXIMATE_FROM or (current == APPROXIMATE_KIND and count >= APPROXIMATE_FROM // 2):
        return APPROXIMATE_KIND
    return FLAT


def _ideal_lists(count: int) -> float:
    return max(1.0, min(2.0 * math.sqrt(count), count / MIN_PER_LIST))


def lists_for(count: int) -> int:
    """A power of two near the ideal, never more than the training sample can support."""
    nearest = 2 ** max(0, round(math.log2(_ideal_lists(count))))
    supported = 2 ** max(0, math.floor(math.log2(max(1.0, count / MIN_PER_LIST))))
    return min(nearest, supported)


def nprobe_for(nlist: int, count: int) -> int:
    wanted = max(nlist / SCAN_FRACTION, nlist * MIN_SCANNED / max(1, count))
    return max(1, min(nlist, math.ceil(wanted)))


def _needs_relayout(index, kind: str, count: int) -> bool:
    """An IVF trained for a much smaller (or larger) dataset: its lists are too long (or too short).

    Relaying out once the ideal number of lists is ~2.8x away from the current one means each rebuild follows
    an ~8x change in size, so the rebuilds of a growing dataset cost about as much as one build in total.
    """
    if kind not in (IVF, IVF_SQ8):
        return False
    ratio = _ideal_lists(count) / index.nlist
    return ratio >= 2 ** 1.5 or ratio <= 2 ** -1.5


def fit_index(index, settings: IndexSettings | None = None):
    """The index this content should be stored in: `index` itself when it already is the right kind and
    layout (its nprobe retuned to its new size), else a new index of that kind with the same ids and vectors."""
    settings = settings or IndexSettings()
    count = int(index.ntotal)
    current = kind_of(index)
    kind = choose_kind(count, settings.kind, current)
    if kind == current and not _needs_relayout(index, kind, count):
        if kind in (IVF, IVF_SQ8):
            index.nprobe = nprobe_for(index.nlist, count)
        return index
    return build_index(kind, index.d, lambda: export_vectors(index), count)


def build_index(kind: str, dim: int, chunks: Callable[[], Iterator[tuple[np.ndarray, np.ndarray]]], count: int):
    """Build an index of `kind` from (ids, vectors) chunks; `chunks()` is called once more to train IVF."""
    import faiss

    if kind in (FLAT, HNSW):
        built = new_index(dim, kind)
    elif kind in (IVF, IVF_SQ8):
        nlist = lists_for(count)
        quantizer = faiss.IndexFlatIP(dim)
        if kind == IVF:
            built = faiss.IndexIVFFlat(quantizer, dim, nlist, faiss.METRIC_INNER_PRODUCT)
        else:
            built = faiss.IndexIVFScalarQuantizer(quantizer, dim, nlist, faiss.ScalarQuantizer.QT_8bit,
                                                  faiss.METRIC_INNER_PRODUCT)
        built.cp.niter = TRAIN_ITERATIONS
        built.cp.max_points_per_centroid = TRAIN_PER_LIST
        built.cp.seed = 1234
        built.train(_training_sample(chunks(), count, nlist * TRAIN_PER_LIST))
        built.nprobe = nprobe_for(nlist, count)
    else:
        raise ValueError(f"unknown index kind {kind!r}")
    for ids, vectors in chunks():
        add_vectors(built, vectors, ids)
    return built


def _training_sample(chunks: Iterator[tuple[np.ndarray, np.ndarray]], count: int, wanted: int) -> np.ndarray:
    """A fixed-seed uniform sample of about `wanted` vectors, taken chunk by chunk."""
    rng = np.random.default_rng(0)
    fraction = min(1.0, wanted / max(1, count))
    parts = [vectors[rng.random(len(vectors)) < fraction] if fraction < 1 else vectors for _, vectors in chunks]
    return np.ascontiguousarray(np.concatenate(parts), dtype=np.float32)


def export_vectors(index, chunk: int = _BUILD_CHUNK) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Every (ids, vectors) the index holds, in chunks (vectors as stored: decoded for compressed kinds)."""
    kind = kind_of(index)
    if kind in (FLAT, HNSW):
        ids = stored_ids(index)
        for start in range(0, len(ids), chunk):
            stop = min(start + chunk, len(ids))
            yield ids[start:stop], index.index.reconstruct_n(start, stop - start)
        return
    from faiss.contrib.inspect_tools import get_invlist

    prefix_bytes = index.coarse_code_size()
    for list_no in range(index.nlist):
        ids, codes = get_invlist(index.invlists, list_no)
        if len(ids) == 0:
            continue
        # standalone codes are the list number (little-endian) followed by the vector's code
        prefix = np.frombuffer(int(list_no).to_bytes(prefix_bytes, "little"), dtype=np.uint8)
        full_codes = np.hstack([np.broadcast_to(prefix, (len(ids), prefix_bytes)), codes.reshape(len(ids), -1)])
        yield ids.astype(np.int64), index.sa_decode(np.ascontiguousarray(full_codes))


def copy_index(index):
    import faiss

    return faiss.clone_index(index)


def copy_without(index, removed_ids) -> object:
    """A copy of the index without these ids (the original stays as it is, e.g. while it serves searches)."""
    removed = np.asarray(sorted(set(int(i) for i in removed_ids)), dtype=np.int64)
    if kind_of(index) != HNSW or removed.size == 0:
        copied = copy_index(index)
        remove_vectors(copied, removed)
        return copied
    # a graph cannot drop nodes: rebuild it from the vectors that stay
    def remaining():
        for ids, vectors in export_vectors(index):
            keep = ~np.isin(ids, removed)
            yield ids[keep], vectors[keep]
    return build_index(HNSW, index.d, remaining, int(index.ntotal))


def add_vectors(index, vectors: np.ndarray, ids: np.ndarray) -> None:
    index.add_with_ids(np.ascontiguousarray(vectors, dtype=np.float32), np.ascontiguousarray(ids, dtype=np.int64))


def remove_vectors(index, ids) -> int:
    ids = np.asarray(list(ids), dtype=np.int64)
    if ids.size == 0:
        return 0
    if kind_of(index) == HNSW:
        raise ValueError("an HNSW graph cannot remove vectors in place; use copy_without")
    return int(index.remove_ids(ids))


def stored_ids(index) -> np.ndarray:
    import faiss

    if kind_of(index) in (IVF, IVF_SQ8):
        from faiss.contrib.inspect_tools import get_invlist

        parts = [get_invlist(index.invlists, list_no)[0] for list_no in range(index.nlist)]
        return np.concatenate(parts).astype(np.int64) if parts else np.zeros(0, dtype=np.int64)
    return faiss.vector_to_array(index.id_map).astype(np.int64)


def apply_search_settings(index, settings: IndexSettings | None) -> None:
    """Override the search effort the index was built with (call before the index is shared)."""
    if settings is None:
        return
    kind = kind_of(index)
    if kind in (IVF, IVF_SQ8) and settings.nprobe:
        index.nprobe = min(int(settings.nprobe), index.nlist)
    elif kind == HNSW and settings.ef_search:
        _graph(index).hnsw.efSearch = int(settings.ef_search)


def search(index, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    import faiss

    queries = np.ascontiguousarray(queries, dtype=np.float32)
    if len(queries) > 1:
        return index.search(queries, k)
    # One query has nothing to share between threads, yet FAISS still opens an OpenMP team and waits for all of
    # it at the end: on a busy machine (an ingest running beside the server) that wait cost 10-50 ms per query,
    # measured on the 2-core benchmark machine, against 0.5-3 ms on one thread. The setting is per thread.
    threads = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    try:
        return index.search(queries, k)
    finally:
        faiss.omp_set_num_threads(threads)


def _fsync_folder(folder: Path) -> None:
    if os.name == "nt":
        return
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_index(index, path: Path) -> None:
    """Write atomically: readers and crashes see the old file or the complete new one, never a part."""
    import faiss

    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(path.name + f".tmp-{os.getpid()}")
    try:
        faiss.write_index(index, str(temporary))
        with open(temporary, "rb+") as handle:
            os.fsync(handle.fileno())
        os.replace(temporary, path)
        _fsync_folder(path.parent)
    finally:
        if temporary.exists():
            temporary.unlink()


def read_index(path: Path, *, mapped: bool = False):
    """Read an index file; `mapped` maps it instead (IVF lists and flat vectors are paged in as a search touches
    them), which makes a one-shot search of 1M vectors skip reading 2 GB. A mapped index is read-only: copying
    or changing it fails, so only processes that never ingest may map."""
    import faiss

    # IO_FLAG_MMAP_IFC maps the vectors of flat, HNSW and IVF indexes alike (IO_FLAG_MMAP would map IVF lists
    # only, through read-only on-disk lists, and cannot be combined with it)
    return faiss.read_index(str(path), faiss.IO_FLAG_MMAP_IFC if mapped else 0)


def remove_other_generations(data_home: Path, uid: str, keep: int) -> None:
    folder = dataset_folder(data_home, uid)
    if not folder.is_dir():
        return
    keep_name = index_file(data_home, uid, keep).name
    for entry in folder.iterdir():
        if entry.name != keep_name:
            try:
                entry.unlink()
            except OSError:
                pass


def remove_dataset_folder(data_home: Path, uid: str) -> None:
    shutil.rmtree(dataset_folder(data_home, uid), ignore_errors=True)
