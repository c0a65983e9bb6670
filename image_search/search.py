"""Searching a dataset by text or by example image."""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

from . import index as faiss_index
from .config import DEFAULT_NUM_RESULTS
from .engine import ImageSearch, LoadedIndex
from .errors import ImageSearchError, InvalidInputError, ModelMismatchError, UnsupportedQueryError
from .images import NotAnImage, UnreadableImage
from .ingest import printable
from .models import Embedder, parse_model_name
from .reader import read_pixels


@dataclass(frozen=True)
class SearchResult:
    path: str  # absolute
    score: float  # cosine similarity
    title: str  # the path relative to the dataset's folder

    def to_dict(self) -> dict:
        return {"path": printable(self.path), "score": round(self.score, 6), "title": printable(self.title)}


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


def _model_for(engine: ImageSearch, loaded: LoadedIndex, model_name: str | None) -> Embedder:
    requested = model_name  # only a model named for this query; the configured default is for new datasets
    dataset_model = loaded.record.model
    if requested and parse_model_name(requested).name != dataset_model:
        raise ModelMismatchError(
            f"Dataset '{loaded.record.name}' was built with model {dataset_model}, so it cannot be searched with "
            f"{parse_model_name(requested).name}; leave out --model to use {dataset_model}.")
    return engine.model(dataset_model)


def search_by_text(engine: ImageSearch, name: str, text: str, k=DEFAULT_NUM_RESULTS, *,
                   model_name: str | None = None) -> list[SearchResult]:
    if not isinstance(text, str) or not text.strip():
        raise InvalidInputError("The text query is empty; describe what you are looking for.")
    k = check_num_results(k)

    def embed(embedder: Embedder, record) -> np.ndarray:
        if not embedder.supports_text:
            raise UnsupportedQueryError(
                f"Dataset '{record.name}' was built with {embedder.name}, an image-only model, so it cannot be "
                "searched by text; search it with an example image, or re-ingest it with a CLIP model.")
        return embedder.encode_texts([text.strip()])

    return _search(engine, name, k, model_name, embed)


def search_by_image(engine: ImageSearch, name: str, image_path, k=DEFAULT_NUM_RESULTS, *,
                    model_name: str | None = None) -> list[SearchResult]:
    if not image_path or not str(image_path).strip():
        raise InvalidInputError("No query image was given; pass the path of an image file.")
    path = os.path.abspath(os.path.expanduser(str(image_path)))
    if not os.path.exists(path):
        raise InvalidInputError(f"The query image {printable(path)} does not exist; check the path.")
    if os.path.isdir(path):
        raise InvalidInputError(f"The query image {printable(path)} is a folder; give an image file.")
    k = check_num_results(k)

    def embed(embedder: Embedder, _record) -> np.ndarray:
        try:
            pixels = read_pixels(path, embedder.geometry, embedder.input_size)
        except NotAnImage:
            raise InvalidInputError(f"The query file {printable(path)} is not an image (JPEG, PNG, WebP, BMP, GIF or "
                                    "TIFF).") from None
        except UnreadableImage as error:
            raise InvalidInputError(f"The query image {printable(path)} cannot be used: {error}.") from None
        import torch

        return embedder.encode_pixels(torch.from_numpy(pixels[None]))

    return _search(engine, name, k, model_name, embed)


def _search(engine: ImageSearch, name: str, k: int, model_name: str | None, embed) -> list[SearchResult]:
    query, query_model = None, None
    for _ in range(5):
        loaded = engine.load_index(name)
        embedder = _model_for(engine, loaded, model_name)
        if query_model is not embedder:
            query, query_model = embed(embedder, loaded.record), embedder
        results = search_loaded(engine, loaded, query, k)
        if results is not None:
            return results[0]
        engine.forget_index(name)  # the dataset changed under us: search its new state
    raise ImageSearchError(f"Dataset '{name}' kept changing during the search; try again.")


def search_loaded(engine: ImageSearch, loaded: LoadedIndex, queries: np.ndarray,
                  k: int) -> list[list[SearchResult]] | None:
    """Top-k results for each query vector, or None when the dataset changed since `loaded` was read."""
    record = loaded.record
    if record.image_count == 0:
        return [[] for _ in range(len(queries))]
    scores, ids = faiss_index.search(loaded.index, queries, min(k, record.image_count))
    hits = [[(int(i), float(s)) for i, s in zip(id_row, score_row) if i >= 0] for id_row, score_row in zip(ids, scores)]
    wanted = sorted({i for row in hits for i, _ in row})
    paths, generation = engine.store.lookup_paths(record.id, wanted)
    if generation != record.generation or len(paths) != len(wanted):
        return None
    return [[SearchResult(paths[i], score, _title(paths[i], record.root)) for i, score in row] for row in hits]


def search_vectors(engine: ImageSearch, name: str, queries: np.ndarray, k: int) -> list[list[SearchResult]]:
    """Batch search with query vectors made by the dataset's own model."""
    for _ in range(5):
        results = search_loaded(engine, engine.load_index(name), queries, k)
        if results is not None:
            return results
        engine.forget_index(name)
    raise ImageSearchError(f"Dataset '{name}' kept changing during the search; try again.")


def _title(path: str, root: str) -> str:
    try:
        relative = os.path.relpath(path, root)
    except ValueError:
        return os.path.basename(path)
    return os.path.basename(path) if relative.startswith("..") else relative
