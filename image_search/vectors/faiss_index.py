"""The FAISS backend: one inner-product index per dataset, in one file per generation.

flat and hnsw are an IndexIDMap2 (the store's ids) over an IndexFlatIP or an IndexHNSWFlat; ivf and ivf-sq8 are an
IndexIVFFlat and an IndexIVFScalarQuantizer (8-bit codes), which keep the ids in their lists themselves.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable, Iterable

import numpy as np

from . import policy
from ..durable_files import fsync_folder
from .base import Allowed, AllowedIds, Chunks, Edges, Neighbours, UnreadableIndexFile, VectorIndex, edges_from_arrays
from .kinds import FLAT, HNSW, IVF, IVF_SQ8
from .policy import TRAIN_ITERATIONS, TRAIN_PER_LIST, lists_for
from .seal import MAPPED_DIGEST_LIMIT, FileDigest, Hasher, digest_of_file

# HNSW graph: neighbours per node and construction effort (build time vs graph quality), search effort. Text
# queries are unlike the stored image vectors, which a graph handles worse than IVF: it needs a high efSearch.
HNSW_M = 32
HNSW_EF_CONSTRUCTION = 80
HNSW_EF_SEARCH = 512  # recall@10 0.968 at 100k on the benchmark (256: 0.951)

_BUILD_CHUNK = 65_536

# The neighbour graph of near-copies (similar_pairs) asks each stored vector for its closest few, which sit in the
# lists nearest to it, so it scans far fewer lists than a text query needs: on 100,000 synthetic vectors with
# 1,000 planted copies at cosine 0.905-0.995 (evaluation/benchmark_duplicates.py --nprobe 1,2,4,8), 1 list found
# 96.0% of the copies, 2 99.3%, 4 and more 99.9%, each doubling about doubling the time; 8 leaves room for copies
# further away (efficientnet-lite0's threshold is 0.76). An HNSW graph is walked with GROUPING_EF_SEARCH for the
# same reason. An exact index above FLAT_GROUPING_MAX vectors would compare every pair (n^2: hours at 1M), so its
# graph is found through an IVF copy of its vectors instead.
GROUPING_NPROBE = 8
GROUPING_EF_SEARCH = 64
FLAT_GROUPING_MAX = 50_000
_GROUPING_BATCH = 16_384
_IVF = (IVF, IVF_SQ8)
# Files are written and read through Python in blocks of this size, so that each block is hashed on the way
# (seal.py) and a write error keeps its errno (a full disk is an OSError 28, not FAISS's RuntimeError text).
# Measured on the 2-core machine, a 400 MB flat index: written and hashed in 0.65 s (FAISS alone 0.22 s, then
# hashing it from the page cache 1.07 s in all), read and hashed in 1.42 s (FAISS alone 1.16 s).
_IO_BLOCK = 1 << 20


class FaissIndex(VectorIndex):
    def __init__(self, index) -> None:
        """Wrap a faiss.Index of one of the kinds above."""
        self._index = index
        self._kind = _kind_of(index)
        self.file_digest = None

    # -- making, reading and writing ------------------------------------------------------------------------------
    @classmethod
    def empty(cls, dim: int, kind: str = FLAT) -> FaissIndex:
        import faiss

        if kind == FLAT:
            return cls(faiss.IndexIDMap2(faiss.IndexFlatIP(dim)))
        if kind == HNSW:
            graph = faiss.IndexHNSWFlat(dim, HNSW_M, faiss.METRIC_INNER_PRODUCT)
            graph.hnsw.efConstruction = HNSW_EF_CONSTRUCTION
            graph.hnsw.efSearch = HNSW_EF_SEARCH
            return cls(faiss.IndexIDMap2(graph))
        raise ValueError(f"an empty {kind!r} index cannot be made: it needs vectors to train on")

    @classmethod
    def build(cls, kind: str, dim: int, chunks: Callable[[], Chunks], count: int, *, lists: int | None = None,
              nprobe: int | None = None) -> FaissIndex:
        import faiss

        if kind in (FLAT, HNSW):
            built = cls.empty(dim, kind)
        elif kind in _IVF:
            if not lists or not nprobe:
                raise ValueError(f"an {kind!r} index needs its number of lists and nprobe")
            quantizer = faiss.IndexFlatIP(dim)
            if kind == IVF:
                ivf = faiss.IndexIVFFlat(quantizer, dim, lists, faiss.METRIC_INNER_PRODUCT)
            else:
                ivf = faiss.IndexIVFScalarQuantizer(quantizer, dim, lists, faiss.ScalarQuantizer.QT_8bit,
                                                    faiss.METRIC_INNER_PRODUCT)
            ivf.cp.niter = TRAIN_ITERATIONS
            ivf.cp.max_points_per_centroid = TRAIN_PER_LIST
            ivf.cp.seed = 1234
            ivf.train(_training_sample(chunks(), count, lists * TRAIN_PER_LIST))
            ivf.nprobe = nprobe
            built = cls(ivf)
        else:
            raise ValueError(f"unknown index kind {kind!r}")
        for ids, vectors in chunks():
            built.add(vectors, ids)
        return built

    @classmethod
    def load(cls, path: Path, *, mapped: bool = False) -> FaissIndex:
        """`mapped` maps the file instead of reading it (IVF lists and flat vectors are paged in as a search
        touches them), which makes a one-shot search of 1M vectors skip reading 2 GB. A mapped index is
        read-only: copying or changing it fails, so only processes that never ingest may map."""
        import faiss

        # IO_FLAG_MMAP_IFC maps the vectors of flat, HNSW and IVF indexes alike (IO_FLAG_MMAP would map IVF lists
        # only, through read-only on-disk lists, and cannot be combined with it)
        try:
            if mapped:
                index = faiss.read_index(str(path), faiss.IO_FLAG_MMAP_IFC)
                digest = digest_of_file(path, limit=MAPPED_DIGEST_LIMIT)
            else:
                index, digest = _read_hashed(path)
        except (RuntimeError, OSError) as error:
            raise UnreadableIndexFile(f"{path}: {error}") from None
        loaded = cls(index)
        loaded.file_digest = digest
        return loaded

    def save(self, path: Path) -> FileDigest:
        import faiss

        path.parent.mkdir(parents=True, exist_ok=True)
        temporary = path.with_name(path.name + f".tmp-{os.getpid()}")
        hasher = Hasher()
        try:
            descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_BINARY", 0),
                                 0o644)
            try:
                def write(data: bytes) -> int:
                    view = memoryview(data)
                    while view:
                        view = view[os.write(descriptor, view):]
                    hasher.update(data)
                    return len(data)

                faiss.write_index(self._index, faiss.PyCallbackIOWriter(write, _IO_BLOCK))
                os.fsync(descriptor)
            finally:
                os.close(descriptor)
            os.replace(temporary, path)
            fsync_folder(path.parent)
        finally:
            if temporary.exists():
                temporary.unlink()
        self.file_digest = hasher.digest()
        return self.file_digest

    def estimated_file_bytes(self) -> int:
        per_vector = {IVF_SQ8: self.dim + 8, HNSW: self.dim * 4 + 8 + HNSW_M * 2 * 4}.get(self._kind, self.dim * 4 + 8)
        centroids = (self.lists or 0) * self.dim * 4
        return self.count * per_vector + centroids + 4096

    # -- what it is -------------------------------------------------------------------------------------------
    @property
    def dim(self) -> int:
        return int(self._index.d)

    @property
    def count(self) -> int:
        return int(self._index.ntotal)

    @property
    def kind(self) -> str:
        return self._kind

    @property
    def lists(self) -> int | None:
        return int(self._index.nlist) if self._kind in _IVF else None

    @property
    def nprobe(self) -> int | None:
        return int(self._index.nprobe) if self._kind in _IVF else None

    @property
    def ef_search(self) -> int | None:
        return int(self._graph().hnsw.efSearch) if self._kind == HNSW else None

    def set_search_effort(self, *, nprobe: int | None = None, ef_search: int | None = None) -> None:
        if self._kind in _IVF and nprobe:
            self._index.nprobe = min(int(nprobe), self._index.nlist)
        elif self._kind == HNSW and ef_search:
            self._graph().hnsw.efSearch = int(ef_search)

    def describe(self) -> str:
        if self._kind in _IVF:
            return f"{self._kind} ({self.lists} lists, nprobe {self.nprobe})"
        if self._kind == HNSW:
            return f"{self._kind} (M {self._graph().hnsw.nb_neighbors(1)}, efSearch {self.ef_search})"
        return self._kind

    def _graph(self):
        import faiss

        return faiss.downcast_index(self._index.index)

    # -- content ----------------------------------------------------------------------------------------------
    def add(self, vectors: np.ndarray, ids: np.ndarray) -> None:
        self._index.add_with_ids(np.ascontiguousarray(vectors, dtype=np.float32),
                                 np.ascontiguousarray(ids, dtype=np.int64))

    def remove(self, ids: Iterable[int]) -> int:
        ids = np.asarray(list(ids), dtype=np.int64)
        if ids.size == 0:
            return 0
        if self._kind == HNSW:
            raise ValueError("an HNSW graph cannot remove vectors in place; use without")
        return int(self._index.remove_ids(ids))

    def without(self, removed_ids: Iterable[int]) -> FaissIndex:
        removed = np.asarray(sorted(set(int(i) for i in removed_ids)), dtype=np.int64)
        if self._kind != HNSW or removed.size == 0:
            copied = self.copy()
            copied.remove(removed)
            return copied

        # a graph cannot drop nodes: rebuild it from the vectors that stay
        def remaining():
            for ids, vectors in self.export():
                keep = ~np.isin(ids, removed)
                yield ids[keep], vectors[keep]
        return self.build(HNSW, self.dim, remaining, self.count)

    def copy(self) -> FaissIndex:
        import faiss

        return FaissIndex(faiss.clone_index(self._index))

    def stored_ids(self) -> np.ndarray:
        import faiss

        if self._kind in _IVF:
            from faiss.contrib.inspect_tools import get_invlist

            parts = [get_invlist(self._index.invlists, list_no)[0] for list_no in range(self._index.nlist)]
            return np.concatenate(parts).astype(np.int64) if parts else np.zeros(0, dtype=np.int64)
        return faiss.vector_to_array(self._index.id_map).astype(np.int64)

    def export(self, chunk: int = _BUILD_CHUNK) -> Chunks:
        index = self._index
        if self._kind in (FLAT, HNSW):
            ids = self.stored_ids()
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

    # -- searching --------------------------------------------------------------------------------------------
    def search(self, queries: np.ndarray, k: int, ids: Allowed | None = None) -> list[Neighbours]:
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        k = min(int(k), self.count)
        if ids is None:
            return self._search(queries, k, None) if k > 0 else [_NOTHING] * len(queries)
        allowed = ids if isinstance(ids, AllowedIds) else AllowedIds(ids)
        k = min(k, len(allowed))
        if k <= 0:
            return [_NOTHING] * len(queries)
        if self._kind == HNSW and policy.hnsw_scores_every_allowed(len(allowed), self.ef_search, HNSW_M):
            return self._score_every_allowed(queries, k, allowed)
        rows = self._search(queries, k, self._search_parameters(allowed, k))
        if self._kind != FLAT:  # an exact search already looked everywhere
            short = [i for i, row in enumerate(rows) if len(row.ids) < k]
            if short:  # the lists or the graph it walked held fewer than k allowed ids: look everywhere
                if self._kind == HNSW:
                    again = self._score_every_allowed(queries[short], k, allowed)
                else:
                    again = self._search(queries[short], k, self._search_parameters(allowed, k, everywhere=True))
                for i, row in zip(short, again):
                    rows[i] = row
        return rows

    def _search(self, queries: np.ndarray, k: int, params) -> list[Neighbours]:
        import faiss

        if len(queries) > 1:
            scores, found = self._index.search(queries, k, params=params)
        else:
            # One query has nothing to share between threads, yet FAISS still opens an OpenMP team and waits for
            # all of it at the end: on a busy machine (an ingest running beside the server) that wait cost 10-50 ms
            # per query, measured on the 2-core benchmark machine, against 0.5-3 ms on one thread. The setting is
            # per thread.
            threads = faiss.omp_get_max_threads()
            faiss.omp_set_num_threads(1)
            try:
                scores, found = self._index.search(queries, k, params=params)
            finally:
                faiss.omp_set_num_threads(threads)
        return _neighbours(scores, found)

    def similar_pairs(self, min_score: float, neighbours: int, wanted=None) -> Edges:
        import faiss

        if self._kind == FLAT and self.count > FLAT_GROUPING_MAX:
            lists = lists_for(self.count)
            grouping = FaissIndex.build(IVF, self.dim, self.export, self.count, lists=lists,
                                        nprobe=min(lists, GROUPING_NPROBE))
            yield from grouping.similar_pairs(min_score, neighbours, wanted)
            return
        params = None
        if self._kind in _IVF:
            params = faiss.SearchParametersIVF(nprobe=min(self._index.nlist, GROUPING_NPROBE))
        elif self._kind == HNSW:
            graph = self._graph().hnsw
            params = faiss.SearchParametersHNSW(efSearch=max(GROUPING_EF_SEARCH, neighbours + 1),
                                                check_relative_distance=graph.check_relative_distance,
                                                bounded_queue=graph.search_bounded_queue)
        for ids, vectors in _batches(self.export(), wanted, _GROUPING_BATCH):
            scores, found = self._index.search(np.ascontiguousarray(vectors, dtype=np.float32),
                                               min(neighbours + 1, self.count), params=params)
            yield edges_from_arrays(ids, found, scores, min_score)

    def _search_parameters(self, allowed: AllowedIds, k: int, *, everywhere: bool = False):
        """Parameters that admit only the `allowed` ids. They replace the index's own search effort rather than
        adding to it (SearchParametersIVF's nprobe is 1 unless set, SearchParametersHNSW's efSearch 16), so they
        carry the index's effort, widened for a small share of ids allowed (policy.filtered_nprobe). IndexIDMap2
        (flat, hnsw) translates its positions to ids before asking the selector."""
        import faiss

        selector = allowed.derived("faiss-selector", _selector)[0]
        if self._kind in _IVF:
            nprobe = self._index.nlist if everywhere else policy.filtered_nprobe(
                self._index.nprobe, self._index.nlist, self.count, len(allowed), k)
            return faiss.SearchParametersIVF(sel=selector, nprobe=nprobe, max_codes=self._index.max_codes)
        if self._kind == HNSW:
            graph = self._graph().hnsw
            return faiss.SearchParametersHNSW(sel=selector,
                                              efSearch=policy.filtered_ef_search(graph.efSearch, self.count,
                                                                                 len(allowed), k),
                                              check_relative_distance=graph.check_relative_distance,
                                              bounded_queue=graph.search_bounded_queue)
        return faiss.SearchParameters(sel=selector)

    def _score_every_allowed(self, queries: np.ndarray, k: int, allowed: AllowedIds) -> list[Neighbours]:
        """The exact k best of the allowed ids (HNSW keeps its vectors as they are, under IndexIDMap2's ids)."""
        ids = allowed.ids
        try:
            stored = self._index.reconstruct_batch(ids)
        except RuntimeError:  # some allowed ids are not in this index
            ids = ids[np.isin(ids, self.stored_ids())]
            stored = self._index.reconstruct_batch(ids) if len(ids) else np.zeros((0, self.dim), np.float32)
        k = min(k, len(ids))
        if k == 0:
            return [_NOTHING] * len(queries)
        scores = queries @ stored.T
        best = np.argpartition(-scores, k - 1, axis=1)[:, :k] if k < len(ids) else np.tile(np.arange(len(ids)),
                                                                                             (len(queries), 1))
        rows = []
        for row_scores, row_best in zip(scores, best):
            ordered = row_best[np.argsort(-row_scores[row_best], kind="stable")]
            rows.append(Neighbours(ids[ordered], row_scores[ordered].astype(np.float32)))
        return rows


# IDSelectorBatch tests an id with a hash set built from the ids, IDSelectorBitmap with one bit per possible id.
# Building either is part of every filtered search's first use; on the 2-core machine, for 1M ids: 10k allowed ids
# (1%) took 1.3 ms as a batch and 0.4 ms as a bitmap, 100k ids 34 ms and 0.4 ms, 500k ids 178 ms and 1.6 ms. So a
# bitmap, unless the ids are so sparse (fewer than one in BITMAP_SPARSEST of the ids up to the largest) that it
# would be mostly zeros: then the batch is small and fast.
BITMAP_SPARSEST = 256


def _selector(ids: np.ndarray):
    """(selector, what it points into): FAISS's bitmap selector keeps a pointer, not a copy."""
    import faiss

    largest = int(ids.max()) if len(ids) else 0
    if len(ids) and int(ids.min()) >= 0 and largest < len(ids) * BITMAP_SPARSEST:
        bits = np.zeros(largest + 1, dtype=bool)
        bits[ids] = True
        bitmap = np.packbits(bits, bitorder="little")  # FAISS reads bit (id & 7) of byte id >> 3
        return faiss.IDSelectorBitmap(len(bitmap), faiss.swig_ptr(bitmap)), bitmap
    return faiss.IDSelectorBatch(ids), None


_NOTHING = Neighbours(np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.float32))


def _neighbours(scores: np.ndarray, found: np.ndarray) -> list[Neighbours]:
    """Rows without the -1 ids FAISS pads a row with when it found fewer than k."""
    rows = []
    for id_row, score_row in zip(found, scores):
        if (id_row < 0).any():
            kept = id_row >= 0
            id_row, score_row = id_row[kept], score_row[kept]
        rows.append(Neighbours(id_row, score_row))
    return rows


def _batches(chunks: Chunks, wanted, size: int) -> Chunks:
    """The chunks' (ids, vectors) that `wanted` keeps (all when None), regrouped into batches of about `size`: an
    IVF index exports one list at a time, a few hundred vectors, too few to keep every core busy per search."""
    pending_ids, pending_vectors, pending = [], [], 0
    for ids, vectors in chunks:
        if wanted is not None:
            keep = wanted(ids)
            ids, vectors = ids[keep], vectors[keep]
        if not len(ids):
            continue
        pending_ids.append(ids)
        pending_vectors.append(vectors)
        pending += len(ids)
        if pending >= size:
            yield np.concatenate(pending_ids), np.concatenate(pending_vectors)
            pending_ids, pending_vectors, pending = [], [], 0
    if pending:
        yield np.concatenate(pending_ids), np.concatenate(pending_vectors)


def _kind_of(index) -> str:
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


def _training_sample(chunks: Chunks, count: int, wanted: int) -> np.ndarray:
    """A fixed-seed uniform sample of about `wanted` vectors, taken chunk by chunk."""
    rng = np.random.default_rng(0)
    fraction = min(1.0, wanted / max(1, count))
    parts = [vectors[rng.random(len(vectors)) < fraction] if fraction < 1 else vectors for _, vectors in chunks]
    return np.ascontiguousarray(np.concatenate(parts), dtype=np.float32)


def _read_hashed(path: Path):
    """The index in the file and the file's digest, from one read."""
    import faiss

    hasher = Hasher()
    with open(path, "rb") as handle:
        def read(size: int) -> bytes:
            data = handle.read(size)
            hasher.update(data)
            return data

        index = faiss.read_index(faiss.PyCallbackIOReader(read, _IO_BLOCK))
        while read(_IO_BLOCK):  # bytes after the index, should there be any, are part of the file too
            pass
    return index, hasher.digest()

