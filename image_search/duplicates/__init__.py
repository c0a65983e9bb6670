"""A dataset's duplicates: groups of exact copies (one SHA-256) and of near-copies (similar embeddings).

find.py finds them (the store for exact copies, the index's neighbour graph for near-copies); components.py joins
pairs into groups; results.py is what comes back.
"""

from __future__ import annotations

from .find import NEIGHBOURS, check_threshold, default_threshold, find_duplicates
from .results import EXACT, NEAR, DuplicateGroup, Duplicates

__all__ = ["EXACT", "NEAR", "NEIGHBOURS", "DuplicateGroup", "Duplicates", "check_threshold", "default_threshold",
           "find_duplicates"]
