"""Loading models: each once per process (load_model), and CLIP exactly as open_clip builds it, for benchmarks."""

from __future__ import annotations

import sys
import threading

from ..runtime.threads import run_in_passing_thread
from .base import Embedder, ModelSpec, resolve_device
from .clip import TEST_TINY, ClipEmbedder, _build_clip
from .registry import parse_model_name
from .weights import check_weights_obtainable

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
    return spec.family.build(spec, device)


def build_reference_model(name: str, device: str | None = None) -> ClipEmbedder:
    """A CLIP model exactly as open_clip builds it, in fp32 on the CPU and without packed weights: what the
    original system ran. Benchmarks compare against it; searches use load_model."""
    spec = parse_model_name(name)
    check_weights_obtainable(spec)
    return _build_clip(spec, resolve_device(device), tuned_for_cpu=False)
