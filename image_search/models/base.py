"""What every model family provides: the ModelSpec a name reads as, and the Embedder a loaded model is.

A family (clip.py, efficientnet.py) is one kind of model: registry.py hands it the names of its form, it reads
them into a ModelSpec, and builds the Embedder that spec names. Every Embedder turns RGB pixels into
L2-normalised float32 vectors; those of families that read text also embed texts, into the same space.
Preprocessing is the model's own, in two parts: the geometry (resize + crop, on PIL images) runs in the reader
workers, the normalisation (mean/std) next to the model, so workers ship compact uint8 pixels, not float tensors.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np

from ..errors import Fix, InvalidInputError, ModelError
from ..runtime.threads import run_query_work


@dataclass(frozen=True)
class ModelFamily:
    """One kind of model: whether it reads text, and how it is built (registry.py says which names are its)."""

    kind: str  # "clip", "efficientnet"
    supports_text: bool
    build: Callable[[ModelSpec, str], Embedder] = field(repr=False)  # (spec, resolved device) -> the model
    # the cosine at which two images of this family's embeddings count as near-duplicates by default
    # (image_search/duplicates; each family says how its value was chosen)
    duplicate_threshold: float = 0.9


@dataclass(frozen=True)
class ModelSpec:
    """What a model name says, as its family reads it."""

    name: str  # the canonical name stored with each dataset
    architecture: str
    weights: str | None  # a pretrained tag, a file path, or None for random weights
    family: ModelFamily
    # the open_clip pretrained tag whose weights are downloaded on first use; None for the other weights
    pretrained_tag: str | None = None

    @property
    def kind(self) -> str:
        return self.family.kind

    @property
    def random_weights(self) -> bool:
        return self.weights is None

    @property
    def supports_text(self) -> bool:
        """CLIP models embed text as well as images; efficientnet-lite0 embeds images only."""
        return self.family.supports_text


def resolve_device(requested: str | None) -> str:
    import torch  # here, not at the top: it takes 2-4 s to import, and checking a name or its weights needs none

    if requested in (None, "", "auto"):
        return "cuda" if torch.cuda.is_available() else "cpu"
    if requested.startswith("cuda") and not torch.cuda.is_available():
        raise InvalidInputError(f"Device '{requested}' was asked for but no CUDA GPU is available.", fix=Fix.USE_CPU)
    if requested != "cpu" and not requested.startswith("cuda"):
        raise InvalidInputError(f"Device '{requested}' is not supported; use cpu, cuda or cuda:N.")
    return requested


# A query (a few texts, one image) runs on the query thread: see runtime/threads.py. Batches keep the caller's thread
# and every core.
_FEW = 4


class Embedder(ABC):
    """A loaded model, whatever its family. Thread-safe for inference.

    What every family provides: these attributes, set when it builds the model, and _encode_pixels (and
    _encode_texts where the family reads text). The query-thread dispatch and the refusal of text by image-only
    models are here, once.
    """

    spec: ModelSpec
    dim: int
    input_size: int  # side of the square the image tower sees
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    geometry: Callable  # PIL RGB image -> PIL image of input_size x input_size
    device: str

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def supports_text(self) -> bool:
        return self.spec.supports_text

    def encode_pixels(self, pixels) -> np.ndarray:
        """uint8 tensor [N, 3, H, W] -> float32 [N, dim], L2-normalised."""
        if self.device == "cpu" and len(pixels) <= _FEW:
            return run_query_work(self._encode_pixels, pixels)
        return self._encode_pixels(pixels)

    def prepare_image_tower(self) -> None:
        """Finish readying the image tower ahead of the first image (see ClipEmbedder)."""

    def encode_texts(self, texts: Sequence[str]) -> np.ndarray:
        """texts -> float32 [N, dim], L2-normalised."""
        if not self.supports_text:
            raise ModelError(f"Model {self.name} embeds images only; it cannot embed text.")
        texts = list(texts)
        if self.device == "cpu" and len(texts) <= _FEW:
            return run_query_work(self._encode_texts, texts)
        return self._encode_texts(texts)

    @abstractmethod
    def _encode_pixels(self, pixels) -> np.ndarray:
        """encode_pixels on the calling thread."""

    def _encode_texts(self, texts: list[str]) -> np.ndarray:
        """encode_texts on the calling thread: families that read text provide it."""
        raise NotImplementedError
