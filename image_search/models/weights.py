"""Can a model's weights be had? Decided in about a second, before torch or open_clip is imported.

Pretrained CLIP weights download from a hub on first use, and open_clip spends 46 s retrying a download that
cannot succeed. check_weights_obtainable looks in the local cache and, when they are not there, whether the hub
answers, reading open_clip's own table of pretrained weights without importing open_clip.
"""

from __future__ import annotations

import builtins
import importlib.util
import os
import socket
import sys
import threading
import types
from enum import Enum
from pathlib import Path
from urllib.parse import urlsplit

from ..config import load_hub_settings, proxy_for
from ..errors import Fix, ModelError
from .base import ModelSpec


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
            try:
                found.loader.exec_module(table)
            except Exception:  # noqa: BLE001 - an open_clip whose table needs more: take the slow, sure way
                sys.modules.pop(_PRETRAINED_TABLE, None)
                import open_clip.pretrained as table
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


def looks_like_path(weights: str) -> bool:
    """Whether the weights part of a model name is a checkpoint file rather than a pretrained tag."""
    return (os.sep in weights or "/" in weights or weights.startswith(".")
            or weights.endswith((".pt", ".pth", ".bin", ".safetensors")))


def weights_error(spec: ModelSpec, error: Exception) -> ModelError:
    """The one sentence that says why open_clip could not load spec's weights."""
    reason = str(error).strip().splitlines()[0][:300] if str(error).strip() else type(error).__name__
    if "download" in reason.lower():
        reason = "they are not in the local cache and could not be downloaded"
    if spec.weights and looks_like_path(spec.weights):
        return ModelError(f"Cannot load the weights file {spec.weights} for model '{spec.name}' ({reason}); check "
                          f"that it is an open_clip checkpoint for {spec.architecture}.")
    return ModelError(f"Cannot load the pretrained weights '{spec.weights}' of model '{spec.name}' ({reason}).",
                      fix=Fix.WEIGHTS_MISSING, architecture=spec.architecture)
