"""Importing open_clip without HuggingFace transformers, unless the model's text tower is a transformers model.

open_clip imports transformers as it is imported itself, whenever transformers is installed, for the few
architectures whose text tower is a HuggingFace model (their config names an hf_model_name); every other model
never touches it. Our own install (Pipfile) has no transformers, but a machine that has it pays for the import in
every new process that loads a model: a CLI run, a server start, each Ray actor of an ingest. On the H200 machine
(where it is installed) that import, with what it pulls in (torch._dynamo, scikit-learn), took 8.1 s of a new
process's 15.2 s first model load, measured under cProfile (evaluation/results/ray-start-h200.json, outside_ray);
the open_clip models we use (CLIP's own text towers) never need it. CoCa's caption generation, which also uses
transformers, is not something we run.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import json
import sys
import threading
from pathlib import Path

_lock = threading.Lock()


def import_open_clip(architecture: str, extra_config_folder: Path | None = None):
    """open_clip, ready to build `architecture`: imported without transformers when nothing in this process
    needs it (the first import decides), and with it once an architecture that needs it is asked for.
    extra_config_folder: a folder of our own architectures' configs (looked in as well as open_clip's)."""
    needs_transformers = text_tower_from_transformers(architecture, extra_config_folder)
    with _lock:
        module = sys.modules.get("open_clip")
        if module is None:
            if needs_transformers or "transformers" in sys.modules:
                import open_clip as module
            else:
                with _refused("transformers"):
                    import open_clip as module
        hf_model = sys.modules.get("open_clip.hf_model")
        if needs_transformers and hf_model is not None and getattr(hf_model, "transformers", None) is None:
            # imported without it earlier in this process: open_clip's adapter module again, now with it (its
            # classes live on in the same module namespace, which the reload fills in)
            importlib.reload(hf_model)
        return module


def text_tower_from_transformers(architecture: str, extra_config_folder: Path | None = None) -> bool:
    """Whether open_clip's config of this architecture takes its text tower from transformers, read from the
    config file without importing open_clip. An architecture without a config file there (unknown, or one only
    the hub describes) counts as needing it: open_clip is then imported as it always is."""
    spec = importlib.util.find_spec("open_clip")
    folders = [Path(folder) / "model_configs" for folder in (spec.submodule_search_locations or [])] if spec else []
    if extra_config_folder is not None:
        folders.append(Path(extra_config_folder))
    for folder in folders:
        path = folder / f"{architecture}.json"
        if path.is_file():
            try:
                config = json.loads(path.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                return True
            return bool(isinstance(config, dict) and (config.get("text_cfg") or {}).get("hf_model_name"))
    return True


@contextlib.contextmanager
def _refused(name: str):
    """`import name` raises ImportError meanwhile (what Python does for a None entry in sys.modules), as it does
    where the package is not installed; open_clip is written for that case."""
    sys.modules[name] = None
    try:
        yield
    finally:
        if sys.modules.get(name, ...) is None:
            del sys.modules[name]
