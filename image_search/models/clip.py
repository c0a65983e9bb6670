"""CLIP models through open_clip: the names ARCH:PRETRAINED, ARCH:/path/file, ARCH:random and test-tiny.

Preprocessing is open_clip's own: the resize/crop objects of its inference transform and its normalisation
constants. On the CPU the towers take their fastest faithful form (cpu/tower_forms.py), and a text query runs
the text tower over its own tokens only (ClipEmbedder._encode_trimmed).

torch, torchvision and open_clip are imported inside the functions that use them: importing open_clip takes 4 s
(torch alone 2 to 4 s), which reading a model name or checking its weights must not cost.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path

import numpy as np

from ..errors import Fix, ModelError
from ..runtime.threads import run_in_passing_thread
from .base import Embedder, ModelFamily, ModelSpec
from .cpu import tower_forms
from .open_clip_import import import_open_clip
from .weights import looks_like_path, weights_error

TEST_TINY = "test-tiny"
_TINY_CONFIG_DIR = Path(__file__).with_name("model_configs")
_TINY_SEED = 1234


def read_name(name: str) -> ModelSpec:
    """ARCH:PRETRAINED, ARCH:/path/file or ARCH:random (registry.py has checked the form) -> its spec."""
    arch, _, weights = name.partition(":")
    arch, weights = arch.strip(), weights.strip()
    if weights == "random":
        return ModelSpec(f"{arch}:random", arch, None, CLIP)
    if looks_like_path(weights):
        path = str(Path(weights).expanduser().resolve())
        return ModelSpec(f"{arch}:{path}", arch, path, CLIP)
    return ModelSpec(f"{arch}:{weights}", arch, weights, CLIP, pretrained_tag=weights)


def read_test_tiny_name(name: str) -> ModelSpec:
    return ModelSpec(TEST_TINY, TEST_TINY, None, CLIP)


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
        # the towers' number format and weight layout, set by cpu/tower_forms.py on the CPU
        self.image_form = self.text_form = "fp16" if device.startswith("cuda") else "fp32"
        self._image_tower_pending = False  # set by _build_clip: the image tower's form is chosen on first use
        self._image_tower_lock = threading.Lock()
        self._image_tower_preparer: int | None = None

    def prepare_image_tower(self) -> None:
        """Give the image tower its fast CPU form (cpu/tower_forms.py), once. It happens on the first image embedded,
        so that a text search never pays for it; a server calls it while warming up."""
        with self._image_tower_lock:
            if not self._image_tower_pending:
                return

            def prepare() -> str:
                self._image_tower_preparer = threading.get_ident()  # its probe pictures go straight through
                try:
                    return tower_forms.prepare_image_tower(self)
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
        x = model.ln_final(x.to(model.ln_final.weight.dtype))  # the blocks may be bf16 (cpu/tower_forms.py)
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


def _build_clip(spec: ModelSpec, device: str, *, tuned_for_cpu: bool = True) -> ClipEmbedder:
    import torch

    open_clip = import_open_clip(spec.architecture, _TINY_CONFIG_DIR)

    if spec.architecture == TEST_TINY and TEST_TINY not in open_clip.list_models():
        open_clip.add_model_config(_TINY_CONFIG_DIR)
    if spec.architecture not in open_clip.list_models():
        raise ModelError(f"Unknown CLIP architecture '{spec.architecture}' in model '{spec.name}'; "
                         f"pick one of open_clip's architectures, e.g. ViT-B-32, ViT-L-14.")
    if spec.weights and looks_like_path(spec.weights) and not Path(spec.weights).is_file():
        raise ModelError(f"The weights file {spec.weights} for model '{spec.name}' does not exist.",
                         fix=Fix.WEIGHTS_FILE_MISSING)
    precision = "fp16" if device.startswith("cuda") else "fp32"
    # open_clip and huggingface_hub log the failure (and every download retry) that we re-raise as one sentence
    noisy = [logging.getLogger(), logging.getLogger("huggingface_hub")]
    previous_levels = [logger.level for logger in noisy]
    for logger in noisy:
        logger.setLevel(logging.CRITICAL)
    try:
        # On a GPU the parameters are made (and randomly filled, before any weights are loaded into them) on the
        # GPU itself: building ViT-B-32 there took 0.27 s instead of 1.7 s on the CPU and the copy over (H200,
        # evaluation/results/ray-start-h200-cpu-build.json, a second build in a process), seconds that every
        # ingest's Ray actor pays at its start.
        # Random weights then come from the GPU's generator: the same on every GPU build, not the CPU's.
        rng_devices = [torch.device(device).index or 0] if device.startswith("cuda") else []
        with torch.random.fork_rng(devices=rng_devices), torch.device(device):
            torch.manual_seed(_TINY_SEED)
            model, _, preprocess = open_clip.create_model_and_transforms(
                spec.architecture, pretrained=spec.weights, precision=precision, device=device)
    except Exception as error:  # noqa: BLE001 - every failure here becomes one actionable sentence
        raise weights_error(spec, error) from None
    finally:
        for logger, level in zip(noisy, previous_levels):
            logger.setLevel(level)
    model.eval()
    tokenizer = open_clip.get_tokenizer(spec.architecture)
    embedder = ClipEmbedder(spec, model, preprocess, tokenizer, device)
    if device == "cpu" and tuned_for_cpu:
        embedder.text_form = tower_forms.prepare_text_tower(embedder)
        embedder._image_tower_pending = True
    return embedder


# Near-duplicate threshold: NOT measured here, since no pretrained CLIP weights can be downloaded on the development
# machine; 0.90 is a starting value. Measure it where the weights are with
#   python -m evaluation.benchmark_duplicates --model ViT-B-32:laion2b_s34b_b79k --sizes ''
# (the highest threshold grouping >= 95% of edit pairs is in its output) and put that value here.
CLIP = ModelFamily(kind="clip", supports_text=True, build=_build_clip, duplicate_threshold=0.90)
