"""What a search looks for, turned into query vectors by the model of the dataset it searches.

dataset_model is the one rule for which model works with an existing dataset (searches and ingests both ask it).
A text is embedded through the service's TextVectorCache; an image is checked by its content before any model
loads; query vectors made elsewhere (evaluations, benchmarks) go through as they are.
"""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ..errors import Fix, InvalidInputError, ModelMismatchError, UnsupportedQueryError
from ..pipeline.scan import printable
from ..pipeline.decode import _HEADER_BYTES, IMAGE_EXTENSIONS, NotAnImage, UnreadableImage, sniff_format
from ..models import Embedder, parse_model_name
from ..pipeline.decode import read_pixels
from ..store import DatasetRecord

if TYPE_CHECKING:
    from ..service import ImageSearch


def dataset_model(record: DatasetRecord, requested: str | None, *, for_ingest: bool = False) -> str:
    """The model that works with this dataset: the one it was built with.

    Only a model named for this call (requested) is checked against it; the configured model
    (IMAGE_SEARCH_MODEL) is the default for new datasets, so one setting never locks a process out of datasets
    built otherwise. for_ingest: the refusal is an ingest's (which can re-embed the dataset instead).
    """
    if not requested:
        return record.model
    requested = parse_model_name(requested).name
    if requested == record.model:
        return record.model
    if for_ingest:
        raise ModelMismatchError(f"Dataset '{record.name}' was built with model {record.model}, not {requested}.",
                                 fix=Fix.REBUILD_WITH_MODEL, model=record.model)
    raise ModelMismatchError(f"Dataset '{record.name}' was built with model {record.model}, so it cannot be "
                             f"searched with {requested}.", fix=Fix.USE_DATASET_MODEL, model=record.model)


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


class Query:
    """Query vectors for a dataset. A search asks for them again when the dataset changed meanwhile."""

    def model_for(self, record: DatasetRecord) -> str | None:
        """The model that embeds this query for the dataset (refusing a mismatch); None: it needs none."""
        return None

    def vectors(self, service: ImageSearch, record: DatasetRecord) -> np.ndarray:
        raise NotImplementedError


class _EmbeddedQuery(Query):
    """A query embedded by the dataset's model, once per model (a retried search reuses the vectors)."""

    def __init__(self, requested_model: str | None) -> None:
        self.requested_model = requested_model
        self._embedded: tuple[Embedder, np.ndarray] | None = None

    def model_for(self, record: DatasetRecord) -> str:
        return dataset_model(record, self.requested_model)

    def vectors(self, service: ImageSearch, record: DatasetRecord) -> np.ndarray:
        embedder = service.model(self.model_for(record))
        if self._embedded is None or self._embedded[0] is not embedder:
            self._embedded = embedder, self._embed(service, embedder, record)
        return self._embedded[1]

    def _embed(self, service: ImageSearch, embedder: Embedder, record: DatasetRecord) -> np.ndarray:
        raise NotImplementedError


class TextQuery(_EmbeddedQuery):
    def __init__(self, text, requested_model: str | None = None) -> None:
        if not isinstance(text, str) or not text.strip():
            raise InvalidInputError("The text query is empty; describe what you are looking for.")
        super().__init__(requested_model)
        self.text = text.strip()

    def _embed(self, service: ImageSearch, embedder: Embedder, record: DatasetRecord) -> np.ndarray:
        if not embedder.supports_text:
            raise UnsupportedQueryError(
                f"Dataset '{record.name}' was built with {embedder.name}, an image-only model, so it cannot be "
                "searched by text; search it with an example image, or re-ingest it with a CLIP model.")
        return service.text_vectors.get(embedder, self.text)


class ImageQuery(_EmbeddedQuery):
    def __init__(self, image_path, requested_model: str | None = None) -> None:
        self.path = check_query_image(image_path)
        super().__init__(requested_model)

    def _embed(self, service: ImageSearch, embedder: Embedder, record: DatasetRecord) -> np.ndarray:
        try:
            pixels = read_pixels(self.path, embedder.geometry, embedder.input_size)
        except NotAnImage:
            raise InvalidInputError(f"The query file {printable(self.path)} is not an image (JPEG, PNG, WebP, BMP, "
                                    "GIF or TIFF).") from None
        except UnreadableImage as error:
            raise InvalidInputError(f"The query image {printable(self.path)} cannot be used: {error}.") from None
        import torch

        return embedder.encode_pixels(torch.from_numpy(pixels[None]))


class VectorQuery(Query):
    """Query vectors made by the dataset's own model (evaluations embed their query images in batches)."""

    def __init__(self, vectors: np.ndarray) -> None:
        self._vectors = vectors

    def vectors(self, service: ImageSearch, record: DatasetRecord) -> np.ndarray:
        return self._vectors


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
