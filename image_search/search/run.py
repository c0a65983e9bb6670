"""Running a search: the index search, the one batched lookup of the images found, and the one retry when the
dataset changed.

A warm search asks the store nothing before it searches: it trusts the index it has loaded, and the lookup of the
images found (one query: paths, sizes, dates and the captured facts) also returns the dataset's generation, which
says whether that index was still current. When it was not, because another process ingested or deleted the
dataset meanwhile, the search runs again on the new state. A filtered search first asks the store for the ids its
filter allows, once per filter and dataset state (filters.Selections, kept with the loaded index).
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING

import numpy as np

from ..errors import DatasetChangedError, Fix, ImageSearchError, IndexCorruptError, InvalidInputError
from .copies import distinct_hits, other_copies
from .filters import SearchFilter, allowed_ids, nothing_passes
from .query import Query
from .results import SearchResult, SearchResults, title_of

if TYPE_CHECKING:
    from ..store import DatasetRecord, ImageRecord
    from ..service import ImageSearch, LoadedIndex

# How often a search reads a dataset that keeps changing under it before it gives up: an ingest commits in one
# transaction, so a second attempt finds the new state unless ingests follow each other within milliseconds.
ATTEMPTS = 5


def check_num_results(value) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise InvalidInputError(f"The number of results {value!r} is not valid; use a positive whole number.")
    try:
        number = int(str(value).strip()) if not isinstance(value, float) or value.is_integer() else None
    except ValueError:
        number = None
    if number is None or number < 1:
        raise InvalidInputError(f"The number of results {value!r} is not valid; use a positive whole number.")
    return number


def run_search(service: ImageSearch, name: str, query: Query, k: int, filters: SearchFilter | None = None,
               collapse_duplicates: bool = False) -> list[SearchResults]:
    """The top k results for each of the query's vectors, from the dataset's current state."""
    loaded = service.cached_index(name)  # trusted until the path lookup's generation says otherwise
    for _ in range(ATTEMPTS):
        try:
            if loaded is None:
                loaded = _load_while_embedding(service, name, query)
            results = search_loaded(service, loaded, query.vectors(service, loaded.record), k, filters,
                                    collapse_duplicates)
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
                  filters: SearchFilter | None = None,
                  collapse_duplicates: bool = False) -> list[SearchResults] | None:
    """Top-k results for each query vector, or None when the dataset changed since `loaded` was read.

    A filter's store conditions choose the ids the index searches among (k results that all pass); its minimum
    score then drops the results below it. collapse_duplicates: exact copies appear once (search/copies.py)."""
    record = loaded.record
    allowed = allowed_ids(service.store, record, filters, loaded.selections) if record.image_count else None
    available = record.image_count if allowed is None else len(allowed)
    depth = min(2 * k if collapse_duplicates else k, available)  # copies take places: look further
    while True:
        hits: list[list[tuple[int, float]]] = [[] for _ in range(len(queries))]
        if depth:
            hits = [[(int(i), float(s)) for i, s in zip(row.ids, row.scores)]
                    for row in loaded.index.search(queries, depth, ids=allowed)]
        # even with no hits: the lookup is what tells a cached index that its dataset changed
        wanted = sorted({i for row in hits for i, _ in row})
        images, generation = service.store.lookup_images(record.id, wanted, uid=record.uid)
        if generation != record.generation:
            return None
        if len(images) != len(wanted):
            raise _corrupt(service, record, len(wanted) - len(images))
        if not collapse_duplicates:
            break
        hits = [distinct_hits(row, images)[:k] for row in hits]
        if depth >= available or all(len(row) >= k for row in hits):
            break
        depth = min(available, 2 * depth)
    copies: dict[int, tuple[str, ...]] = {}
    if collapse_duplicates:
        copies, generation = other_copies(service.store, record, [images[i] for row in hits for i, _ in row],
                                          allowed)
        if generation != record.generation:
            return None
    min_score = filters.min_score if filters is not None else None
    answers = []
    for row in hits:
        kept = [(i, score) for i, score in row if min_score is None or score >= min_score]
        results = [result_of(images[i], score, record.root, copies.get(i, ())) for i, score in kept]
        answers.append(SearchResults(results, _note(record, filters, k, allowed, row, results)))
    return answers


def _corrupt(service: ImageSearch, record: DatasetRecord, unknown: int) -> IndexCorruptError:
    """The dataset is at the state this index was loaded for, yet the index gave ids its metadata does not have: the
    file is not that state's (one that could not be hashed: seal.py). Searching again would only find the same ids."""
    service.forget_index(record.name)
    return IndexCorruptError(f"The index of dataset '{record.name}' gave {unknown} vector ids that its metadata "
                             "does not list, so its file is damaged or is not this dataset's.",
                             fix=Fix.REPAIR_INDEX, name=record.name, root=record.root)


def _note(record: DatasetRecord, filters: SearchFilter | None, k: int, allowed, found: list,
          results: list) -> str | None:
    """Why there are no results, or fewer than k, in one sentence (SearchResults.note)."""
    if not record.image_count:
        return f"No results: dataset '{record.name}' is empty."
    if allowed is not None and len(allowed) == 0:
        return nothing_passes(record, filters)
    if found and not results:
        return (f"No result scores at least {filters.min_score:g} (the best scored {found[0][1]:.4f}); lower the "
                "minimum score.")
    if allowed is not None and len(allowed) < k and len(results) < k:
        return f"Only {len(allowed)} images of dataset '{record.name}' pass the filters ({filters.describe()})."
    return None


def result_of(image: ImageRecord, score: float, root: str, duplicates: tuple[str, ...] = ()) -> SearchResult:
    return SearchResult(image.path, score, title_of(image.path, root), size=image.size, mtime_ns=image.mtime_ns,
                        facts=image.facts, duplicates=duplicates)
