"""Embedding models, chosen by one name.

Names:
  ARCH:PRETRAINED   an open_clip architecture with a pretrained tag, e.g. ViT-B-32:laion2b_s34b_b79k
  ARCH:/path/file   an open_clip architecture with weights from a local checkpoint file
  ARCH:random       the architecture with random weights (speed measurements only)
  test-tiny         a very small CLIP-shaped open_clip model with fixed-seed random weights (tests)
  efficientnet-lite0  ImageNet EfficientNet-Lite0 whose weights ship in a pip package: offline, images only

The modules:
  base.py           what every family provides: ModelSpec, ModelFamily and the abstract Embedder
  registry.py       which family reads a name (parse_model_name)
  clip.py           the CLIP family (open_clip); efficientnet.py the EfficientNet-Lite0 family
  weights.py        whether pretrained weights can be had, decided in about a second
  loading.py        load_model: each model loaded once per process
  cpu/              the fastest faithful CPU form of each CLIP tower

This package is the front door: the rest of image_search and the tools import from it. Importing it imports
neither torch nor open_clip (4 s together); the first model built does.
"""

from .base import Embedder, ModelFamily, ModelSpec, resolve_device
from .clip import TEST_TINY, ClipEmbedder
from .efficientnet import EFFICIENTNET_LITE0
from .loading import ModelCache, build_reference_model, load_model, shared_models
from .registry import model_supports_text, parse_model_name
from .weights import WeightsSource, check_weights_obtainable, hub_reachable

__all__ = ["EFFICIENTNET_LITE0", "TEST_TINY", "ClipEmbedder", "Embedder", "ModelCache", "ModelFamily", "ModelSpec",
           "WeightsSource", "build_reference_model", "check_weights_obtainable", "hub_reachable", "load_model",
           "model_supports_text", "parse_model_name", "resolve_device", "shared_models"]
