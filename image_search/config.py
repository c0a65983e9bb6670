"""Settings, read once from the environment (and a .env file in the working directory).

Every setting is documented in .env.example. Command-line flags override these values.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path

from dotenv import find_dotenv, load_dotenv

from .access.roots import parse_allowed_roots
from .vectors.kinds import AUTO, KINDS

DEFAULT_MODEL = "ViT-B-32:laion2b_s34b_b79k"
DEFAULT_NUM_RESULTS = 5
DEFAULT_DB_NAME = "image_search"
DEFAULT_DB_PORT = 5432
DEFAULT_HUB_ENDPOINT = "https://huggingface.co"

_dotenv_loaded = False


def load_environment() -> None:
    """Load .env from the working directory (never overriding variables already set)."""
    global _dotenv_loaded
    if not _dotenv_loaded:
        load_dotenv(find_dotenv(usecwd=True), override=False)
        _dotenv_loaded = True


def default_data_home() -> Path:
    """A per-user data folder, never the current directory."""
    if sys.platform == "win32":
        base = Path(os.environ.get("LOCALAPPDATA") or Path.home() / "AppData" / "Local")
    elif sys.platform == "darwin":
        base = Path.home() / "Library" / "Application Support"
    else:
        base = Path(os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share")
    return base / "image-search"


@dataclass(frozen=True)
class DatabaseSettings:
    host: str
    port: int
    user: str | None
    password: str | None
    name: str

    def describe(self) -> str:
        return f"{self.host}:{self.port}"


@dataclass(frozen=True)
class IndexSettings:
    """Which FAISS index an ingest builds ("auto": by size, see image_search.vectors.policy) and how hard a search
    looks (None: the nprobe / efSearch each index was built with)."""
    kind: str = "auto"
    nprobe: int | None = None
    ef_search: int | None = None


# How often an ingest saves its finished work (image_search/ingest/checkpoint.py): after this many embedded images
# or this many seconds, whichever comes first, so a crash loses at most a minute of embedding. The seconds rule
# decides on a CPU (30-100 images/s: 1,800-6,000 images a minute); the images rule on a GPU (an H100's 2,500
# images/s: a checkpoint every 4 s), where it bounds a checkpoint's memory (20 MB of vectors) and a larger number
# would save little: a checkpoint of 10,000 images took 0.25 s (0.19 s of CPU) on its own thread on the 2-core
# EPYC test machine, SHA-256, fsyncs and the JSON of the records included (0.1-0.3% of a CPU ingest's minute; on a
# GPU, 6% of one core beside the ingest's 16, off the model's path). The whole cost, on vs off, is measured by
# `python -m evaluation.benchmark_ingest --checkpoint-cost`.
CHECKPOINT_IMAGES = 10_000
CHECKPOINT_SECONDS = 60.0


@dataclass(frozen=True)
class CheckpointSettings:
    images: int = CHECKPOINT_IMAGES
    seconds: float = CHECKPOINT_SECONDS


@dataclass(frozen=True)
class Settings:
    data_home: Path
    model_name: str | None  # None: the default (ingest) or the dataset's own model (search)
    device: str | None  # None: CUDA when available, else CPU
    database: DatabaseSettings | None  # None: embedded SQLite in data_home
    index: IndexSettings = IndexSettings()  # which FAISS index an ingest builds, how hard searches look
    checkpoints: CheckpointSettings | None = CheckpointSettings()  # None: none (to measure what they cost)
    ray_address: str | None = None  # the Ray cluster a distributed ingest joins (None: it starts one here)
    # IMAGE_SEARCH_ALLOWED_ROOTS: the only folders (links resolved) that ingests and query images may read from;
    # () allows every path (image_search/access/roots.py)
    allowed_roots: tuple[str, ...] = ()

    @property
    def default_model(self) -> str:
        return self.model_name or DEFAULT_MODEL


@dataclass(frozen=True)
class HubSettings:
    """Where pretrained weights download from (huggingface_hub reads the same variables when it is imported)."""
    endpoint: str  # HF_ENDPOINT: the hub's address
    offline: bool  # HF_HUB_OFFLINE (or TRANSFORMERS_OFFLINE): never download, use only the local cache


_TRUE = {"1", "on", "yes", "true"}  # what huggingface_hub takes for true


def load_hub_settings() -> HubSettings:
    load_environment()
    offline = any(os.environ.get(name, "").strip().lower() in _TRUE
                  for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))
    return HubSettings(endpoint=os.environ.get("HF_ENDPOINT", "").strip().rstrip("/") or DEFAULT_HUB_ENDPOINT,
                       offline=offline)


def proxy_for(url: str) -> str | None:
    """The proxy that a download from url goes through (HTTPS_PROXY, HTTP_PROXY or ALL_PROXY, unless NO_PROXY
    names its host), as huggingface_hub's HTTP client and urllib choose it; None: a direct connection."""
    from urllib.parse import urlsplit
    from urllib.request import getproxies_environment, proxy_bypass_environment

    load_environment()
    parts = urlsplit(url)
    if proxy_bypass_environment(parts.hostname or ""):
        return None
    proxies = getproxies_environment()
    return proxies.get(parts.scheme) or proxies.get("all") or None


def device_decode_requested() -> bool:
    """IMAGE_SEARCH_GPU_DECODE: decode JPEGs on the GPU (see pipeline/gpu_decode.py) when the model runs on one,
    unless it is 0 (or false, no, off).

    On by default: on an H100 with 16 cores it was faster at every size (0.3 / 2 / 12 MP photos: 2,532 / 1,346 /
    309 images/s against 2,063 / 884 / 258 with CPU decoding; evaluation/results/ingest-gpu-h100.json).
    """
    load_environment()
    return os.environ.get("IMAGE_SEARCH_GPU_DECODE", "").strip().lower() not in ("0", "false", "no", "off")


def gpu_decoder_setting() -> str:
    """IMAGE_SEARCH_GPU_DECODER: which device JPEG decoder the GPU path uses, "nvimgcodec" (nvImageCodec, when
    installed), "nvjpeg" (torchvision's) or "auto" (the best that works here; also for unknown values)."""
    load_environment()
    return os.environ.get("IMAGE_SEARCH_GPU_DECODER", "").strip().lower() or "auto"


def capture_requested() -> bool:
    """IMAGE_SEARCH_CAPTURE_FACTS: record each file's hashes and EXIF at ingest (pipeline/facts.py), unless it is 0
    (or false, no, off). Only evaluation.benchmark_ingest --capture-cost turns it off, to measure what capturing
    costs; images ingested without it get their facts on the next ingest (without being embedded again)."""
    load_environment()
    return os.environ.get("IMAGE_SEARCH_CAPTURE_FACTS", "").strip().lower() not in ("0", "false", "no", "off")


CPU_PRECISIONS = ("auto", "fp32", "bf16")


def cpu_precision_setting() -> str:
    """IMAGE_SEARCH_CPU_PRECISION: the number format of the CLIP towers on the CPU (models/cpu/tower_forms.py),
    one of CPU_PRECISIONS; "auto" when unset or unknown. Read each time a model is built (tests set it per model);
    a .env file reaches it through load_environment, which the tools call with their settings before any build."""
    choice = os.environ.get("IMAGE_SEARCH_CPU_PRECISION", "").strip().lower() or "auto"
    return choice if choice in CPU_PRECISIONS else "auto"


def test_pause_point() -> str | None:
    """IMAGE_SEARCH_TEST_PAUSE_AT, a test hook: the name of the ingest step at which the process announces itself
    and waits, so that a test can kill it there (tests/test_updates_and_crashes.py); None in normal runs."""
    return os.environ.get("IMAGE_SEARCH_TEST_PAUSE_AT")


test_pause_point.__test__ = False  # not a test, should a test module import it by name


def test_batch_delay() -> float:
    """IMAGE_SEARCH_TEST_BATCH_DELAY, a test hook: seconds an ingest waits after each embedded batch, so that a
    test can kill it part way through (tests/test_resumable_ingest.py); 0 in normal runs."""
    try:
        return max(0.0, float(os.environ.get("IMAGE_SEARCH_TEST_BATCH_DELAY", "") or 0))
    except ValueError:
        return 0.0


test_batch_delay.__test__ = False


@dataclass(frozen=True)
class RayTestFaults:
    """Test hooks of a distributed ingest (tests/test_ray_ingest.py), read on the driver and handed to the workers:
    crash_on: a file name whose reading kills the Ray worker that reads it, every time (a file that crashes its
    reader); kill_marker: a path that the first embedding worker to start its second batch creates before killing
    itself, once (a worker lost mid-run). Both None in normal runs."""
    crash_on: str | None = None
    kill_marker: str | None = None


def ray_test_faults() -> RayTestFaults:
    """IMAGE_SEARCH_TEST_RAY_CRASH_ON and IMAGE_SEARCH_TEST_RAY_KILL_MARKER (see RayTestFaults)."""
    return RayTestFaults(crash_on=os.environ.get("IMAGE_SEARCH_TEST_RAY_CRASH_ON") or None,
                         kill_marker=os.environ.get("IMAGE_SEARCH_TEST_RAY_KILL_MARKER") or None)


ray_test_faults.__test__ = False


def _int_env(name: str, default: int) -> int:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        return int(raw)
    except ValueError:
        from .errors import InvalidInputError

        raise InvalidInputError(f"{name}={raw!r} is not a whole number; fix it in the environment or .env.") from None


def _positive_int_env(name: str) -> int | None:
    value = _int_env(name, 0)
    if value < 0 or (value == 0 and os.environ.get(name, "").strip()):
        from .errors import InvalidInputError

        raise InvalidInputError(f"{name}={value} is not valid; use a positive whole number (or leave it unset).")
    return value or None


def load_index_settings() -> IndexSettings:
    kind = os.environ.get("IMAGE_SEARCH_INDEX", "").strip().lower() or AUTO
    if kind not in (AUTO, *KINDS):
        from .errors import InvalidInputError

        raise InvalidInputError(f"IMAGE_SEARCH_INDEX={kind!r} is not an index kind; use one of "
                                f"{', '.join((AUTO, *KINDS))}.")
    return IndexSettings(kind=kind, nprobe=_positive_int_env("IMAGE_SEARCH_NPROBE"),
                         ef_search=_positive_int_env("IMAGE_SEARCH_EF_SEARCH"))


def load_settings(*, data_home: str | os.PathLike | None = None, model_name: str | None = None,
                  device: str | None = None) -> Settings:
    load_environment()
    home = Path(data_home or os.environ.get("IMAGE_SEARCH_HOME") or default_data_home()).expanduser()
    database = None
    host = os.environ.get("DB_HOST", "").strip()
    if host:
        database = DatabaseSettings(
            host=host,
            port=_int_env("DB_PORT", DEFAULT_DB_PORT),
            user=os.environ.get("DB_USER") or None,
            password=os.environ.get("DB_PASSWORD") or None,
            name=os.environ.get("DB_NAME", "").strip() or DEFAULT_DB_NAME,
        )
    return Settings(
        data_home=home.resolve(),
        model_name=model_name or os.environ.get("IMAGE_SEARCH_MODEL", "").strip() or None,
        device=device or os.environ.get("IMAGE_SEARCH_DEVICE", "").strip() or None,
        database=database,
        index=load_index_settings(),
        checkpoints=CheckpointSettings(
            images=_positive_int_env("IMAGE_SEARCH_CHECKPOINT_IMAGES") or CHECKPOINT_IMAGES),
        ray_address=os.environ.get("IMAGE_SEARCH_RAY_ADDRESS", "").strip() or None,
        allowed_roots=parse_allowed_roots(os.environ.get("IMAGE_SEARCH_ALLOWED_ROOTS", "")),
    )
