"""Which images a search may return.

SearchFilter is where result filters go (a folder inside the dataset, a date range, ...); it has none yet.
allowed_ids turns a filter into the ids the vector index may return, which VectorIndex.search takes as `ids`
(image_search/vectors/base.py): the index then searches with the same effort, only among those ids.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from ..store import DatasetRecord, MetadataStore


@dataclass(frozen=True)
class SearchFilter:
    """Conditions on the images a search returns; a condition left as None does not filter. None are defined yet."""

    @property
    def is_empty(self) -> bool:
        return all(getattr(self, condition.name) is None for condition in fields(self))


def allowed_ids(store: MetadataStore, record: DatasetRecord, filters: SearchFilter | None) -> np.ndarray | None:
    """The sorted int64 vector ids of the dataset that `filters` allows, or None for every id (no filter, or one
    with no condition set), which searches the whole index."""
    if filters is None or filters.is_empty:
        return None
    # A condition added to SearchFilter becomes a store query for the ids it allows here (the conditions' ids
    # intersected); until then no filter can have one.
    raise NotImplementedError(f"{filters} sets a condition that allowed_ids does not know")
