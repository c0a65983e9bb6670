"""Embedding models, chosen by one name.

Names:
  ARCH:PRETRAINED   an open_clip architecture with a pretrained tag, e.g. ViT-B-32:laion2b_s34b_b79k
  ARCH:/path/file   an open_clip architecture with weights from a local checkpoint file
  ARCH:random       the architecture with random weights (speed measurements only)
  test-tiny         a very small CLIP-shaped open_clip model with fixed-seed random weights (tests)

Every model turns RGB pixels into L2-normalised float32 vectors; CLIP models also embed text. Preprocessing is
the model's own: the resize/crop objects of open_clip's inference transform and its normalisation constants.
Geometry (resize + crop, on PIL images) runs in the reader workers; normalisation runs next to the model, so
workers ship compact uint8 pixels instead of float tensors.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from .errors import InvalidInputError, ModelError

TEST_TINY = "test-tiny"
_TINY_CONFIG_DIR = Path(__file__).with_name("model_configs")
_TINY_SEED = 1234

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ModelSpec:
    name: str  # the canonical name stored with each dataset
    architecture: str
    weights: str | None  # a pretrained tag, a file path, or None for random weights
    kind: str  # "clip"

    @property
    def random_weights(self) -> bool:
        return self.weights is None


def parse_model_name(name: str) -> ModelSpec:
    name = (name or "").strip()
    if name == TEST_TINY:
        return ModelSpec(TEST_TINY, TEST_TINY, None, "clip")
    arch, sep, weights = name.partition(":")
    arch, weights = arch.strip(), weights.strip()
    if not sep or not arch or not weights:
        raise InvalidInputError(
            f"Model name '{name}' is not valid; use ARCH:PRETRAINED (e.g. ViT-B-32:laion2b_s34b_b79k), "
            f"ARCH:/path/to/weights.pt, ARCH:random or {TEST_TINY}.")
    if weights == "random":
        return ModelSpec(f"{arch}:random", arch, None, "clip")
    if _looks_like_path(weights):
        path = str(Path(weights).expanduser().resolve())
        return ModelSpec(f"{arch}:{path}", arch, path, "clip")
    return ModelSpec(f"{arch}:{weights}", arch, weights, "clip")


def _looks_like_path(weights: str) -> bool:
    return (os.sep in weights or "/" in weights or weights.startswith(".")
            or weights.endswith((".pt", ".pth", ".bin", ".safetensors")))


def resolve_device(requested: str | None) -> str:
    import torch

    if requested in (None, "", "auto"):
        return "cuda" if torch.cuda.is_available() else "cpu"
    if requested.startswith("cuda") and not torch.cuda.is_available():
        raise InvalidInputError(f"Device '{requested}' was asked for but no CUDA GPU is available; use --device cpu.")
    if requested != "cpu" and not requested.startswith("cuda"):
        raise InvalidInputError(f"Device '{requested}' is not supported; use cpu, cuda or cuda:N.")
    return requested


class Embedder:
    """A loaded model. Thread-safe for inference."""

    spec: ModelSpec
    dim: int
    input_size: int  # side of the square the image tower sees
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    geometry: Callable  # PIL RGB image -> PIL image of input_size x input_size
    device: str
    supports_text: bool = False

    @property
    def name(self) -> str:
        return self.spec.name

    def encode_pixels(self, pixels) -> np.ndarray:
        """uint8 tensor [N, 3, H, W] -> float32 [N, dim], L2-normalised."""
        raise NotImplementedError

    def encode_texts(self, texts: Sequence[str]) -> np.ndarray:
        raise NotImplementedError


class ClipEmbedder(Embedder):
    supports_text = True

    def __init__(self, spec: ModelSpec, model, preprocess, tokenizer, device: str) -> None:
        import torch

        self.spec = spec
        self.model = model
        self.tokenizer = tokenizer
        self.device = device
        self.dtype = torch.float16 if device.startswith("cuda") else torch.float32
        self.geometry, self.mean, self.std = split_open_clip_transform(preprocess)
        self.reference_preprocess = preprocess
        self.input_size = int(model.visual.image_size[0] if isinstance(model.visual.image_size, (tuple, list))
                              else model.visual.image_size)
        self.dim = int(model.text_projection.shape[1] if hasattr(model.text_projection, "shape")
                       else model.text_projection.out_features)
        self._mean = torch.tensor(self.mean, device=device, dtype=torch.float32).view(1, 3, 1, 1) * 255.0
        self._std = torch.tensor(self.std, device=device, dtype=torch.float32).view(1, 3, 1, 1) * 255.0

    def normalise(self, pixels):
        """uint8 pixels -> the float tensor the image tower expects (same as ToTensor + Normalize)."""
        pixels = pixels.to(self.device, non_blocking=True).float()
        return ((pixels - self._mean) / self._std).to(self.dtype)

    def encode_pixels(self, pixels) -> np.ndarray:
        import torch

        with torch.inference_mode():
            features = self.model.encode_image(self.normalise(pixels))
            features = torch.nn.functional.normalize(features.float(), dim=-1)
        return features.cpu().numpy().astype(np.float32, copy=False)

    def encode_texts(self, texts: Sequence[str]) -> np.ndarray:
        import torch

        with torch.inference_mode():
            tokens = self.tokenizer(list(texts)).to(self.device)
            features = self.model.encode_text(tokens)
            features = torch.nn.functional.normalize(features.float(), dim=-1)
        return features.cpu().numpy().astype(np.float32, copy=False)


def split_open_clip_transform(preprocess):
    """Split open_clip's inference Compose into (geometry on PIL images, mean, std).

    The geometry part is open_clip's own Resize/CenterCrop objects, so resizing is exactly the reference.
    """
    from torchvision.transforms import Compose, Normalize

    steps = list(preprocess.transforms)
    normalize = next(step for step in steps if isinstance(step, Normalize))
    geometric = [step for step in steps if type(step).__name__ in
                 ("Resize", "CenterCrop", "ResizeKeepRatio", "CenterCropOrPad")]
    return Compose(geometric), tuple(float(m) for m in normalize.mean), tuple(float(s) for s in normalize.std)


_cache: dict[tuple[str, str], Embedder] = {}
_cache_lock = threading.Lock()


def load_model(name: str, device: str | None = None) -> Embedder:
    """Load (once per process) the model with this name on this device."""
    spec = parse_model_name(name)
    resolved = resolve_device(device)
    key = (spec.name, resolved)
    with _cache_lock:
        if key not in _cache:
            _cache[key] = _build(spec, resolved)
        return _cache[key]


def _build(spec: ModelSpec, device: str) -> Embedder:
    import torch

    if spec.random_weights and spec.name != TEST_TINY:
        print(f"WARNING: model '{spec.name}' has RANDOM weights: its results are meaningless, use it only to "
              "measure speed.", file=sys.stderr)
    return _build_clip(spec, device)


def _build_clip(spec: ModelSpec, device: str) -> ClipEmbedder:
    import open_clip
    import torch

    if spec.name == TEST_TINY and TEST_TINY not in open_clip.list_models():
        open_clip.add_model_config(_TINY_CONFIG_DIR)
    if spec.architecture not in open_clip.list_models():
        raise ModelError(f"Unknown CLIP architecture '{spec.architecture}' in model '{spec.name}'; "
                         f"pick one of open_clip's architectures, e.g. ViT-B-32, ViT-L-14.")
    if spec.weights and _looks_like_path(spec.weights) and not Path(spec.weights).is_file():
        raise ModelError(f"The weights file {spec.weights} for model '{spec.name}' does not exist; copy the "
                         "checkpoint there or fix the path in --model / IMAGE_SEARCH_MODEL.")
    precision = "fp16" if device.startswith("cuda") else "fp32"
    quiet = logging.getLogger()
    previous_level = quiet.level
    quiet.setLevel(logging.CRITICAL)  # open_clip logs (and we re-raise) the same failure; say it once
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(_TINY_SEED)
            model, _, preprocess = open_clip.create_model_and_transforms(
                spec.architecture, pretrained=spec.weights, precision=precision, device=device)
    except Exception as error:  # noqa: BLE001 - every failure here becomes one actionable sentence
        raise ModelError(_weights_help(spec, error)) from None
    finally:
        quiet.setLevel(previous_level)
    model.eval()
    tokenizer = open_clip.get_tokenizer(spec.architecture)
    embedder = ClipEmbedder(spec, model, preprocess, tokenizer, device)
    if device == "cpu":
        from .precision import use_bf16_on_cpu

        use_bf16_on_cpu(embedder)
    return embedder


def _weights_help(spec: ModelSpec, error: Exception) -> str:
    reason = str(error).strip().splitlines()[0][:300] if str(error).strip() else type(error).__name__
    if spec.weights and _looks_like_path(spec.weights):
        return (f"Cannot load the weights file {spec.weights} for model '{spec.name}' ({reason}); check that it "
                f"is an open_clip checkpoint for {spec.architecture}.")
    return (f"Cannot load the pretrained weights '{spec.weights}' for model '{spec.name}' ({reason}). They are "
            "downloaded from the Hugging Face hub on first use: connect to the internet once, or copy the "
            f"checkpoint file to this machine and use --model {spec.architecture}:/path/to/checkpoint.bin.")
