"""Searching a dataset by text, by example image, or with query vectors.

query.py turns the text or image into vectors with the dataset's model (and holds the one model-match rule and
the text-vector cache); run.py searches the index, looks the paths up in one query and runs again when the
dataset changed meanwhile; filters.py says which images a search may return; copies.py collapses exact copies;
results.py is what comes back.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from ..config import DEFAULT_NUM_RESULTS
from .filters import SearchFilter, Selections, allowed_ids
from .query import ImageQuery, Query, TextQuery, TextVectorCache, VectorQuery, check_query_image, dataset_model
from .results import SearchResult, SearchResults
from .run import check_num_results, run_search, search_loaded

if TYPE_CHECKING:
    from ..service import ImageSearch

__all__ = ["ImageQuery", "Query", "SearchFilter", "SearchResult", "SearchResults", "Selections", "TextQuery",
           "TextVectorCache", "VectorQuery", "allowed_ids", "check_num_results", "check_query_image", "dataset_model",
           "run_search", "search_by_image", "search_by_text", "search_loaded", "search_vectors"]


def search_by_text(service: ImageSearch, name: str, text: str, k=DEFAULT_NUM_RESULTS, *,
                   model_name: str | None = None, filters: SearchFilter | None = None,
                   collapse_duplicates: bool = False) -> SearchResults:
    query = TextQuery(text, model_name)
    return run_search(service, name, query, check_num_results(k), filters, collapse_duplicates)[0]


def search_by_image(service: ImageSearch, name: str, image_path, k=DEFAULT_NUM_RESULTS, *,
                    model_name: str | None = None, filters: SearchFilter | None = None,
                    collapse_duplicates: bool = False) -> SearchResults:
    query = ImageQuery(image_path, model_name)
    return run_search(service, name, query, check_num_results(k), filters, collapse_duplicates)[0]


def search_vectors(service: ImageSearch, name: str, queries: np.ndarray, k: int,
                   filters: SearchFilter | None = None, collapse_duplicates: bool = False) -> list[SearchResults]:
    """Batch search with query vectors made by the dataset's own model."""
    return run_search(service, name, VectorQuery(queries), k, filters, collapse_duplicates)
