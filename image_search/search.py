"""Searching a dataset by text or by example image."""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from .config import DEFAULT_NUM_RESULTS
from .errors import ImageSearchError, InvalidInputError, ModelMismatchError, UnsupportedQueryError
from .images import _HEADER_BYTES, IMAGE_EXTENSIONS, NotAnImage, UnreadableImage, sniff_format
from .files import printable
from .models import Embedder, parse_model_name
from .reader import read_pixels
from .store import DatasetRecord

if TYPE_CHECKING:
    from .service import ImageSearch, LoadedIndex


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


def _checked_model(engine: ImageSearch, record: DatasetRecord, model_name: str | None) -> str:
    """The dataset's model, after refusing a query that asks for another one."""
    requested = model_name  # only a model named for this query; the configured default is for new datasets
    if requested and parse_model_name(requested).name != record.model:
        raise ModelMismatchError(
            f"Dataset '{record.name}' was built with model {record.model}, so it cannot be searched with "
            f"{parse_model_name(requested).name}; leave out --model to use {record.model}.")
    return record.model


def _model_for(engine: ImageSearch, record: DatasetRecord, model_name: str | None) -> Embedder:
    return engine.model(_checked_model(engine, record, model_name))


class TextVectorCache:
    """The last few text queries' vectors, per model: people repeat and refine queries, and the RescueBox app
    asks again when a page of results is redrawn. Vectors are read-only so no caller can alter a cached one."""

    def __init__(self, size: int = 256) -> None:
        self.size = size
        self._vectors: OrderedDict[tuple[str, str, str], np.ndarray] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, embedder: Embedder, text: str) -> np.ndarray:
        key = (embedder.name, embedder.device, text)
        with self._lock:
            vector = self._vectors.get(key)
            if vector is not None:
                self._vectors.move_to_end(key)
                return vector
        vector = embedder.encode_texts([text])
        vector.setflags(write=False)
        with self._lock:
            self._vectors[key] = vector
            while len(self._vectors) > self.size:
                self._vectors.popitem(last=False)
        return vector

    def clear(self) -> None:
        with self._lock:
            self._vectors.clear()



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
        return engine.text_vectors.get(embedder, text.strip())

    return _search(engine, name, k, model_name, embed)


def check_query_image(image_path) -> str:
    """The query image's absolute path, after checking by its content that it is an image: a wrong file is
    refused at once, before the dataset's model is loaded (seconds, or a download) only to be told so."""
    if not image_path or not str(image_path).strip():
        raise InvalidInputError("No query image was given; pass the path of an image file.")
    path = os.path.abspath(os.path.expanduser(str(image_path)))
    if not os.path.exists(path):
        raise InvalidInputError(f"The query image {printable(path)} does not exist; check the path.")
    if os.path.isdir(path):
        raise InvalidInputError(f"The query image {printable(path)} is a folder; give an image file.")
    try:
        with open(path, "rb") as handle:
            header = handle.read(_HEADER_BYTES)
    except OSError as error:
        raise InvalidInputError(f"The query image {printable(path)} cannot be read ({error.strerror or error}); "
                                "check its permissions.") from None
    if sniff_format(header) is None:  # the same verdicts as the reader's (images.load_rgb), given early
        if Path(path).suffix.lower() not in IMAGE_EXTENSIONS:
            raise InvalidInputError(f"The query file {printable(path)} is not an image (JPEG, PNG, WebP, BMP, GIF "
                                    "or TIFF); give an image file.")
        reason = ("empty file (0 bytes)" if not header
                  else "not an image: its content is not JPEG, PNG, WebP, BMP, GIF or TIFF")
        raise InvalidInputError(f"The query image {printable(path)} cannot be used: {reason}.")
    return path


def search_by_image(engine: ImageSearch, name: str, image_path, k=DEFAULT_NUM_RESULTS, *,
                    model_name: str | None = None) -> list[SearchResult]:
    path = check_query_image(image_path)
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
    loaded = engine.cached_index(name)  # trusted until the path lookup's generation says otherwise
    for _ in range(5):
        if loaded is None:
            loaded, query, query_model = _load_while_embedding(engine, name, model_name, embed)
        embedder = _model_for(engine, loaded.record, model_name)
        if query_model is not embedder:
            query, query_model = embed(embedder, loaded.record), embedder
        results = search_loaded(engine, loaded, query, k)
        if results is not None:
            return results[0]
        engine.forget_index(name)  # the dataset changed under us: search its new state
        loaded = None
    raise ImageSearchError(f"Dataset '{name}' kept changing during the search; try again.")


def _load_while_embedding(engine: ImageSearch, name: str, model_name: str | None, embed):
    """A cold search reads the index file while the model starts and embeds the query (FAISS lets go of the GIL
    while it reads): a command-line search of 1M images hides the 2 GB read behind the model's start-up."""
    record = engine.dataset(name)
    model = _checked_model(engine, record, model_name)
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="index-loader") as pool:
        pending = pool.submit(engine.load_index, name)
        embedder = engine.model(model)
        query = embed(embedder, record)
        return pending.result(), query, embedder


def search_loaded(engine: ImageSearch, loaded: LoadedIndex, queries: np.ndarray,
                  k: int) -> list[list[SearchResult]] | None:
    """Top-k results for each query vector, or None when the dataset changed since `loaded` was read."""
    record = loaded.record
    hits: list[list[tuple[int, float]]] = [[] for _ in range(len(queries))]
    if record.image_count:
        hits = [[(int(i), float(s)) for i, s in zip(row.ids, row.scores)]
                for row in loaded.index.search(queries, min(k, record.image_count))]
    # even with no hits: the lookup is what tells a cached index that its dataset changed
    wanted = sorted({i for row in hits for i, _ in row})
    paths, generation = engine.store.lookup_paths(record.id, wanted, uid=record.uid)
    if generation != record.generation or len(paths) != len(wanted):
        return None
    return [[SearchResult(paths[i], score, _title(paths[i], record.root)) for i, score in row] for row in hits]


def search_vectors(engine: ImageSearch, name: str, queries: np.ndarray, k: int) -> list[list[SearchResult]]:
    """Batch search with query vectors made by the dataset's own model."""
    for attempt in range(5):
        loaded = engine.index_for_search(name) if attempt == 0 else engine.load_index(name)
        results = search_loaded(engine, loaded, queries, k)
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
