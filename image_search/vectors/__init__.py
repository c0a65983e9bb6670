"""Vector indexes: one per dataset, searched by inner product on L2-normalised vectors (cosine similarity).

base.VectorIndex is what callers use; faiss_index.FaissIndex is the backend behind new_index and load_index;
policy chooses an index's kind and layout by size (fit); layout says where a dataset's index files live; kinds
names the kinds.
"""

from __future__ import annotations

from pathlib import Path

from . import layout, policy
from .base import Neighbours, UnreadableIndexFile, VectorIndex
from .faiss_index import FaissIndex
from .kinds import AUTO, FLAT, HNSW, IVF, IVF_SQ8, KINDS
from .policy import fit

BACKEND = FaissIndex  # the one place that names the backend new and committed indexes use


def new_index(dim: int) -> VectorIndex:
    """An empty exact index; fit() turns it into the kind its size calls for."""
    return BACKEND.empty(dim)


def load_index(path: Path, *, mapped: bool = False) -> VectorIndex:
    return BACKEND.load(path, mapped=mapped)


__all__ = ["AUTO", "BACKEND", "FLAT", "HNSW", "IVF", "IVF_SQ8", "KINDS", "FaissIndex", "Neighbours",
           "UnreadableIndexFile", "VectorIndex", "fit", "layout", "load_index", "new_index", "policy"]
