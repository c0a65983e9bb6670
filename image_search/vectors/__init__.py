"""Vector indexes: one per dataset, searched by inner product on L2-normalised vectors (cosine similarity).

base.VectorIndex is what callers use; faiss_index.FaissIndex is the backend behind new_index and load_index;
policy chooses an index's kind and layout by size (fit); layout says where a dataset's index files live; seal
checks that a file is the one written for its dataset and generation; kinds names the kinds.
"""

from __future__ import annotations

from .kinds import AUTO, FLAT, HNSW, IVF, IVF_SQ8, KINDS

# The backend (numpy, FAISS: 0.1-0.2 s to import) loads on first use, not when config.py reads the kind names: a
# command-line search that a running server answers never needs it (tests/test_cli_server.py).
_LAZY = {"layout": ".layout", "policy": ".policy", "base": ".base", "faiss_index": ".faiss_index", "seal": ".seal",
         "Neighbours": ".base", "UnreadableIndexFile": ".base", "VectorIndex": ".base", "FaissIndex": ".faiss_index",
         "fit": ".policy", "AllowedIds": ".base"}


def __getattr__(name: str):
    if name == "BACKEND":  # the one place that names the backend new and committed indexes use
        from .faiss_index import FaissIndex

        return FaissIndex
    if name not in _LAZY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib

    module = importlib.import_module(_LAZY[name], __name__)
    return module if _LAZY[name].lstrip(".") == name else getattr(module, name)


def new_index(dim: int):
    """An empty exact index; fit() turns it into the kind its size calls for."""
    return __getattr__("BACKEND").empty(dim)


def load_index(path, *, mapped: bool = False):
    return __getattr__("BACKEND").load(path, mapped=mapped)


__all__ = ["AUTO", "AllowedIds", "BACKEND", "FLAT", "HNSW", "IVF", "IVF_SQ8", "KINDS", "FaissIndex", "Neighbours",
           "UnreadableIndexFile", "VectorIndex", "fit", "layout", "load_index", "new_index", "policy", "seal"]
