"""Shared fixtures.

Every test that touches the metadata store runs twice: on SQLite and on a real PostgreSQL server (DB_HOST etc. from
the environment, as .ci/run sets them). Without DB_HOST the PostgreSQL runs are skipped locally; in CI
(CI=true) they fail instead, so an unreachable database can never pass silently.
"""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SEED_EVAL = REPO.parent / "shared" / "datasets" / "seed-eval"
TEST_MODEL = "test-tiny"

# Fail fast instead of retrying downloads for a minute when a test names real pretrained weights.
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def postgres_settings(database: str):
    from image_search.config import DatabaseSettings

    return DatabaseSettings(host=os.environ["DB_HOST"], port=int(os.environ.get("DB_PORT", "5432")),
                            user=os.environ.get("DB_USER") or None, password=os.environ.get("DB_PASSWORD") or None,
                            name=database)


@pytest.fixture(scope="session")
def postgres_database():
    """A throwaway PostgreSQL database for this test session, dropped at the end."""
    if not os.environ.get("DB_HOST"):
        if os.environ.get("CI"):
            pytest.fail("CI needs PostgreSQL: DB_HOST is not set")
        pytest.skip("PostgreSQL tests need DB_HOST (and DB_PORT/DB_USER/DB_PASSWORD); .ci/run sets them")
    import psycopg2

    name = f"image_search_test_{uuid.uuid4().hex[:10]}"
    settings = postgres_settings(name)
    try:
        admin = psycopg2.connect(host=settings.host, port=settings.port, user=settings.user,
                                 password=settings.password, dbname="postgres", connect_timeout=5)
    except psycopg2.OperationalError as error:
        if os.environ.get("CI"):
            pytest.fail(f"PostgreSQL at {settings.host}:{settings.port} is unreachable in CI: {error}")
        pytest.skip(f"PostgreSQL at {settings.host}:{settings.port} is unreachable: {error}")
    admin.close()
    yield settings  # the store itself creates the database on first use, which is part of what is tested
    admin = psycopg2.connect(host=settings.host, port=settings.port, user=settings.user, password=settings.password,
                             dbname="postgres")
    admin.autocommit = True
    with admin.cursor() as cursor:
        cursor.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    admin.close()


def _clear_postgres(settings) -> None:
    from image_search.store import PostgresStore

    store = PostgresStore(settings)
    store.ensure_schema()
    with store._cursor(write=True) as cursor:
        cursor.execute("DELETE FROM images")
        cursor.execute("DELETE FROM datasets")
    store.close()


@pytest.fixture(params=["sqlite", "postgres"])
def backend(request, tmp_path):
    """(name, DatabaseSettings or None) with an empty store."""
    if request.param == "sqlite":
        return "sqlite", None
    settings = request.getfixturevalue("postgres_database")
    _clear_postgres(settings)
    return "postgres", settings


@pytest.fixture
def data_home(tmp_path) -> Path:
    home = tmp_path / "home"
    home.mkdir()
    return home


@pytest.fixture
def settings(backend, data_home):
    from image_search.config import Settings

    return Settings(data_home=data_home, model_name=TEST_MODEL, device="cpu", database=backend[1])


@pytest.fixture
def engine(settings):
    from image_search.models import shared_models
    from image_search.service import ImageSearch

    search_engine = ImageSearch(settings, models=shared_models)  # one test-tiny for the session, as load_model's
    yield search_engine
    search_engine.close()


@pytest.fixture
def sqlite_engine(data_home):
    """For tests about files rather than the store: one backend is enough."""
    from image_search.config import Settings
    from image_search.models import shared_models
    from image_search.service import ImageSearch

    search_engine = ImageSearch(Settings(data_home=data_home, model_name=TEST_MODEL, device="cpu", database=None),
                                models=shared_models)
    yield search_engine
    search_engine.close()


def assert_spelled_by_each_face(error, on_the_command_line: str, in_the_app: str) -> None:
    """The core's own message names no command-line flag; each face spells the fix in its own words."""
    from cli.common import cli_message
    from server.server import app_message

    assert "--" not in str(error) and "python -m" not in str(error)
    assert on_the_command_line in cli_message(error)
    assert in_the_app in app_message(error) and "--" not in app_message(error)


def tool_env(data_home: Path, database) -> dict:
    """Environment for running the tools (or the server) as subprocesses against this data folder and store."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DB_", "IMAGE_SEARCH_"))}
    env.update(IMAGE_SEARCH_HOME=str(data_home), IMAGE_SEARCH_MODEL=TEST_MODEL, IMAGE_SEARCH_DEVICE="cpu",
               PYTHONPATH=str(REPO), HF_HUB_OFFLINE="1")
    if database is not None:
        env.update(DB_HOST=database.host, DB_PORT=str(database.port), DB_USER=database.user or "",
                   DB_PASSWORD=database.password or "", DB_NAME=database.name)
    return env


def empty_cache_env(data_home: Path, caches: Path) -> dict:
    """tool_env for the default model (ViT-B-32:laion2b_s34b_b79k), with empty download caches under `caches` and
    this machine's real network: no HF_HUB_OFFLINE, no HF_ENDPOINT. Skips the test where the hub answers, for then
    the model would download its 600 MB."""
    from image_search.config import DEFAULT_HUB_ENDPOINT
    from image_search.models import hub_reachable

    if hub_reachable(DEFAULT_HUB_ENDPOINT):
        pytest.skip("this machine reaches the Hugging Face hub; the test needs a machine that cannot")
    env = tool_env(data_home, None)
    for name in ("IMAGE_SEARCH_MODEL", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_ENDPOINT", "HF_HUB_CACHE",
                 "HUGGINGFACE_HUB_CACHE"):
        env.pop(name, None)
    env.update(HF_HOME=str(caches / "huggingface"), XDG_CACHE_HOME=str(caches))
    return env


@pytest.fixture
def cli_env(backend, data_home) -> dict:
    """Environment for running the tools as subprocesses against the same store and data folder."""
    return tool_env(data_home, backend[1])


def run_tool(module: str, *args, env: dict, cwd=None, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", module, *map(str, args)], env=env, cwd=cwd or REPO,
                          capture_output=True, text=True, timeout=timeout)


def release_code(folder: Path, commit: str) -> Path:
    """The image_search and cli folders of an earlier commit, extracted into folder: the code that built the data
    users already have, to write such data the old way in a test. Skips when this checkout lacks the commit."""
    import io
    import tarfile

    archive = subprocess.run(["git", "-C", str(REPO), "archive", "--format=tar", commit, "image_search", "cli"],
                             capture_output=True)
    if archive.returncode != 0:
        pytest.skip(f"this checkout does not have commit {commit} to run: {archive.stderr.decode().strip()}")
    folder.mkdir(parents=True, exist_ok=True)
    with tarfile.open(fileobj=io.BytesIO(archive.stdout)) as tar:
        tar.extractall(folder)
    return folder


def ingest_with_release(code: Path, input_dir, name: str, env: dict, *flags: str) -> None:
    """Run that release's cli_preprocess on input_dir as dataset `name` (env: tool_env's, for the place)."""
    done = subprocess.run([sys.executable, "-m", "cli.cli_preprocess", "-i", str(input_dir), "-n", name, *flags],
                          cwd=code, env={**env, "PYTHONPATH": str(code)}, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr


@pytest.fixture(scope="session")
def photos(tmp_path_factory) -> Path:
    """A folder of 12 distinct photo-like JPEGs (read-only for tests: copy before changing)."""
    from evaluation.sample_images import write_photos

    folder = tmp_path_factory.mktemp("photos")
    write_photos(folder, 12, megapixels=0.1, seed=7)
    return folder


@pytest.fixture
def mixed_folder(tmp_path, photos) -> Path:
    """Good photos (one in a subfolder) mixed with broken files and a non-image."""
    import shutil

    folder = tmp_path / "mixed"
    (folder / "sub dir").mkdir(parents=True)
    for i, photo in enumerate(sorted(photos.iterdir())[:8]):
        target = folder / "sub dir" if i == 0 else folder
        shutil.copy(photo, target / photo.name)
    (folder / "empty.jpg").write_bytes(b"")
    (folder / "text.jpg").write_text("this is not a picture")
    data = (photos / "photo_00009.jpg").read_bytes()
    (folder / "truncated.jpg").write_bytes(data[: len(data) // 3])
    (folder / "notes.txt").write_text("case notes")
    return folder


def fresh_cpu_model(name: str, monkeypatch, precision: str):
    """A model built afresh on the CPU (not the process's cached one) under IMAGE_SEARCH_CPU_PRECISION=precision,
    both towers in their chosen forms."""
    from image_search.models import parse_model_name
    from image_search.models.clip import _build_clip

    monkeypatch.setenv("IMAGE_SEARCH_CPU_PRECISION", precision)
    embedder = _build_clip(parse_model_name(name), "cpu")
    embedder.prepare_image_tower()  # otherwise done on the first image, when the setting may be gone
    return embedder


# PyTorch's words where oneDNN cannot pack bf16 (reported from a 2-core AVX2 AMD EPYC)
BF16_PACKING_REFUSAL = ("mkldnn_reorder_linear_weight: bf16 path needs the cpu support avx_ne_convert or avx512bw, "
                        "avx512vl and avx512dq")


def cpu_without_bf16(monkeypatch) -> None:
    """Make this CPU look like an AVX2-only one, so that the fallback is tested on every machine: no native bf16,
    no packed bf16 (tower_forms.cpu_support), and oneDNN refusing to pack bf16 weights as PyTorch does there."""
    import torch

    from image_search.models.cpu import packed_weights, tower_forms

    real = tower_forms.cpu_support()
    monkeypatch.setattr(tower_forms, "cpu_support", lambda: tower_forms.CpuSupport(
        native_bf16=False, packing=real.packing, packed_bf16=False))
    pack = packed_weights._pack

    def refuse_bf16(weight):
        if weight.dtype == torch.bfloat16:
            raise RuntimeError(BF16_PACKING_REFUSAL)
        return pack(weight)

    monkeypatch.setattr(packed_weights, "_pack", refuse_bf16)
