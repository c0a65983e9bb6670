"""What a vector index backend must do (image_search.vectors.faiss_index is the one there is).

An index holds one L2-normalised vector per id (the store's vector ids, int64) and finds, for a query vector, the
ids whose vectors have the highest inner product with it (cosine similarity). Ingest, search and the engine use
only this interface, and policy.fit only this interface and build(), so another backend (pgvector, say) is a new
subclass chosen in image_search.vectors, with no change to them.

An index that serves searches is never changed in place: an ingest changes copy() or without() and shares the
result only after save() and the store's commit. Searches may run concurrently with each other.
"""

from __future__ import annotations

import threading
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Callable, Iterable, Iterator, NamedTuple, Union

import numpy as np

# (ids, vectors) pairs: int64 ids and the float32 vectors stored under them, a chunk at a time
Chunks = Iterator[tuple[np.ndarray, np.ndarray]]
# (ids, neighbour ids, scores): edges between stored vectors, a chunk at a time (similar_pairs)
Edges = Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]


class Neighbours(NamedTuple):
    """One query's results, best first. Never padded: fewer than k when fewer could be found."""
    ids: np.ndarray  # int64 vector ids
    scores: np.ndarray  # float32 inner products


class AllowedIds:
    """The only ids a search may return: a sorted int64 array, plus what a backend derives from it to test an id
    fast (a bitmap, say), kept here so that the searches of one filter derive it once (search/filters.py caches
    an AllowedIds per filter and dataset state)."""

    def __init__(self, ids: np.ndarray) -> None:
        self.ids = np.ascontiguousarray(ids, dtype=np.int64).reshape(-1)
        self._derived: dict[str, object] = {}
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self.ids)

    def derived(self, key: str, make: Callable[[np.ndarray], object]) -> object:
        """make(ids), made once per key (searches run concurrently: the lock keeps it to once)."""
        with self._lock:
            if key not in self._derived:
                self._derived[key] = make(self.ids)
            return self._derived[key]


Allowed = Union[np.ndarray, AllowedIds]


class UnreadableIndexFile(Exception):
    """load() could not read the file: it is missing, truncated or not an index."""


class VectorIndex(ABC):
    # The size and SHA-256 of the file this index was loaded from or last saved to (seal.FileDigest; its sha256
    # is None for a large mapped file), or None for an index that was neither
    file_digest = None

    # -- making, reading and writing ------------------------------------------------------------------------------
    @classmethod
    @abstractmethod
    def empty(cls, dim: int) -> VectorIndex:
        """An exact index with no vectors, which takes vectors without training (policy.fit makes it the kind
        its size calls for)."""

    @classmethod
    @abstractmethod
    def build(cls, kind: str, dim: int, chunks: Callable[[], Chunks], count: int, *, lists: int | None = None,
              nprobe: int | None = None) -> VectorIndex:
        """An index of `kind` holding the `count` vectors that `chunks()` yields; IVF kinds need `lists` and
        `nprobe` (policy.lists_for, policy.nprobe_for) and may call `chunks()` more than once (to train)."""

    @classmethod
    @abstractmethod
    def load(cls, path: Path, *, mapped: bool = False) -> VectorIndex:
        """Read an index written by save(); raises UnreadableIndexFile. `mapped`: page the vectors in as
        searches touch them instead of reading them all; a mapped index is read-only."""

    @abstractmethod
    def save(self, path: Path):
        """Write atomically: readers and crashes see the old file or the complete new one, never a part. Returns
        the written file's seal.FileDigest (also kept as file_digest); an OSError (a full disk) leaves no file."""

    def estimated_file_bytes(self) -> int:
        """About how many bytes save() writes (for the message when they do not fit): the vectors and ids."""
        return self.count * (self.dim * 4 + 8)

    # -- what it is -------------------------------------------------------------------------------------------
    @property
    @abstractmethod
    def dim(self) -> int:
        ...

    @property
    @abstractmethod
    def count(self) -> int:
        """How many vectors it holds."""

    @property
    @abstractmethod
    def kind(self) -> str:
        """One of image_search.vectors.kinds.KINDS."""

    @property
    def lists(self) -> int | None:
        """IVF kinds: the number of lists the vectors are grouped in; None for other kinds."""
        return None

    @property
    def nprobe(self) -> int | None:
        """IVF kinds: the lists a query scans; None for other kinds."""
        return None

    @property
    def ef_search(self) -> int | None:
        """HNSW: the search breadth; None for other kinds."""
        return None

    def set_search_effort(self, *, nprobe: int | None = None, ef_search: int | None = None) -> None:
        """Search harder or faster than the index was built to: nprobe for IVF kinds (at most `lists`),
        ef_search for HNSW; a value that does not apply to this kind, or None, is ignored. Call it before the
        index is shared."""

    def describe(self) -> str:
        """One line for people: the kind and its search parameters."""
        return self.kind

    # -- content ----------------------------------------------------------------------------------------------
    @abstractmethod
    def add(self, vectors: np.ndarray, ids: np.ndarray) -> None:
        ...

    @abstractmethod
    def remove(self, ids: Iterable[int]) -> int:
        """Remove these ids in place (how many were there); kinds that cannot raise ValueError (use without)."""

    @abstractmethod
    def without(self, removed_ids: Iterable[int]) -> VectorIndex:
        """A copy without these ids; this index stays as it is (it may be serving searches)."""

    @abstractmethod
    def copy(self) -> VectorIndex:
        ...

    @abstractmethod
    def stored_ids(self) -> np.ndarray:
        """Every id it holds (int64, in no particular order)."""

    @abstractmethod
    def export(self) -> Chunks:
        """Every (ids, vectors) it holds, in chunks; vectors as stored (decoded for compressed kinds)."""

    # -- searching --------------------------------------------------------------------------------------------
    @abstractmethod
    def search(self, queries: np.ndarray, k: int, ids: Allowed | None = None) -> list[Neighbours]:
        """The k best for each query (a row of `queries`), best first. `ids`: the only ids that may be returned
        (a sorted int64 array or an AllowedIds; None: any id). A search among a small share of the ids looks
        wider (policy.filtered_nprobe), so that it finds the best allowed ids about as reliably as an unfiltered
        search finds the best ones, and it returns min(k, allowed ids in the index) of them, never fewer."""

    def similar_pairs(self, min_score: float, neighbours: int,
                      wanted: Callable[[np.ndarray], np.ndarray] | None = None) -> Edges:
        """The stored vectors' nearest-neighbour graph, cut at min_score: for each stored vector (or each whose id
        `wanted(ids)` marks True), up to `neighbours` other stored ids whose inner product with it is at least
        min_score, as chunks of (ids, neighbour ids, scores). Every vector is a query, so a backend searches here
        with the effort that suits near-copies (close neighbours), not a text query's."""
        for ids, vectors in self.export():
            if wanted is not None:
                keep = wanted(ids)
                ids, vectors = ids[keep], vectors[keep]
            if len(ids):
                yield edges_from(ids, self.search(vectors, neighbours + 1), min_score)


def edges_from(ids: np.ndarray, rows: list[Neighbours], min_score: float) -> tuple[np.ndarray, np.ndarray,
                                                                                   np.ndarray]:
    """(query ids, neighbour ids, scores) of the neighbours in `rows` (one per id) that reach min_score."""
    width = max((len(row.ids) for row in rows), default=0)
    found = np.full((len(rows), width), -1, dtype=np.int64)
    scores = np.full((len(rows), width), -np.inf, dtype=np.float32)
    for position, row in enumerate(rows):
        found[position, :len(row.ids)] = row.ids
        scores[position, :len(row.ids)] = row.scores
    return edges_from_arrays(ids, found, scores, min_score)


def edges_from_arrays(ids: np.ndarray, found: np.ndarray, scores: np.ndarray,
                      min_score: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The same from a k-nearest search's (ids, scores) arrays, one row per query id (-1: no neighbour), less
    each query itself."""
    queries = np.broadcast_to(np.asarray(ids, dtype=np.int64)[:, None], found.shape)
    keep = (scores >= min_score) & (found >= 0) & (found != queries)
    return queries[keep], found[keep].astype(np.int64), scores[keep]
