"""Running a search: the index search, the one batched path lookup, and the one retry when the dataset changed.

A warm search asks the store nothing before it searches: it trusts the index it has loaded, and the path lookup
(one query) also returns the dataset's generation, which says whether that index was still current. When it was
not, because another process ingested or deleted the dataset meanwhile, the search runs again on the new state.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING

import numpy as np

from ..errors import DatasetChangedError, ImageSearchError, InvalidInputError
from .filters import SearchFilter, allowed_ids
from .query import Query
from .results import SearchResult, title_of

if TYPE_CHECKING:
    from ..service import ImageSearch, LoadedIndex

# How often a search reads a dataset that keeps changing under it before it gives up: an ingest commits in one
# transaction, so a second attempt finds the new state unless ingests follow each other within milliseconds.
ATTEMPTS = 5


def check_num_results(value) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise InvalidInputError(f"The number of results {value!r} is not valid; use a positive whole number.")
    try:  # 5, 5.0 (JSON numbers from some clients) and "5" mean five; 5.5, "x" and inf mean nothing
        if isinstance(value, float):
            number = int(value) if value.is_integer() else None
        else:
            number = int(value.strip()) if isinstance(value, str) else value
    except ValueError:
        number = None
    if number is None or number < 1:
        raise InvalidInputError(f"The number of results {value!r} is not valid; use a positive whole number.")
    return number


def run_search(service: ImageSearch, name: str, query: Query, k: int,
               filters: SearchFilter | None = None) -> list[list[SearchResult]]:
    """The top k results for each of the query's vectors, from the dataset's current state."""
    loaded = service.cached_index(name)  # trusted until the path lookup's generation says otherwise
    for _ in range(ATTEMPTS):
        try:
            if loaded is None:
                loaded = _load_while_embedding(service, name, query)
            results = search_loaded(service, loaded, query.vectors(service, loaded.record), k, filters)
            if results is not None:
                return results
        except DatasetChangedError:
            pass
        service.forget_index(name)  # the dataset changed under us: search its new state
        loaded = None
    raise ImageSearchError(f"Dataset '{name}' kept changing during the search; try again.")


def _load_while_embedding(service: ImageSearch, name: str, query: Query) -> LoadedIndex:
    """A cold search reads the index file while the model starts and embeds the query (FAISS lets go of the GIL
    while it reads): a command-line search of 1M images hides the 2 GB read behind the model's start-up."""
    record = service.dataset(name)
    if query.model_for(record) is None:  # refuses a model mismatch before anything loads
        return service.index_of(record)
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="index-loader") as pool:
        pending = pool.submit(service.index_of, record)
        query.vectors(service, record)
        return pending.result()


def search_loaded(service: ImageSearch, loaded: LoadedIndex, queries: np.ndarray, k: int,
                  filters: SearchFilter | None = None) -> list[list[SearchResult]] | None:
    """Top-k results for each query vector, or None when the dataset changed since `loaded` was read."""
    record = loaded.record
    hits: list[list[tuple[int, float]]] = [[] for _ in range(len(queries))]
    if record.image_count:
        ids = allowed_ids(service.store, record, filters)
        hits = [[(int(i), float(s)) for i, s in zip(row.ids, row.scores)]
                for row in loaded.index.search(queries, min(k, record.image_count), ids=ids)]
    # even with no hits: the lookup is what tells a cached index that its dataset changed
    wanted = sorted({i for row in hits for i, _ in row})
    paths, generation = service.store.lookup_paths(record.id, wanted, uid=record.uid)
    if generation != record.generation or len(paths) != len(wanted):
        return None
    return [[SearchResult(paths[i], score, title_of(paths[i], record.root)) for i, score in row] for row in hits]
