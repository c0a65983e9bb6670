"""Model names, loading and the clear failure when weights are missing."""

from __future__ import annotations

import logging
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

from cli.common import cli_message
from image_search.errors import InvalidInputError, ModelError
from image_search.models import WeightsSource, load_model, model_supports_text, parse_model_name
from tests.conftest import REPO, assert_spelled_by_each_face, empty_cache_env, run_tool

DEFAULT_MODEL = "ViT-B-32:laion2b_s34b_b79k"


def test_model_names_are_parsed():
    assert parse_model_name("test-tiny").name == "test-tiny"
    spec = parse_model_name("ViT-B-32:laion2b_s34b_b79k")
    assert (spec.architecture, spec.weights, spec.random_weights) == ("ViT-B-32", "laion2b_s34b_b79k", False)
    assert parse_model_name("ViT-B-32:random").random_weights
    local = parse_model_name("ViT-B-32:/models/clip.bin")
    assert local.weights == "/models/clip.bin" and local.name == "ViT-B-32:/models/clip.bin"
    for bad in ["", "ViT-B-32", ":openai", "ViT-B-32:"]:
        with pytest.raises(InvalidInputError, match="not valid"):
            parse_model_name(bad)


def test_a_new_family_is_one_line_in_the_name_table(monkeypatch):
    """A family plugs in through the registry alone: its names parse, load and refuse text like any other's."""
    import re

    import torch

    from image_search.models import Embedder, ModelFamily, ModelSpec, registry

    class MeanColour(Embedder):  # a whole family: an image's mean colour, L2-normalised
        def __init__(self, spec, device):
            self.spec, self.device, self.dim, self.input_size = spec, device, 3, 8
            self.mean = self.std = (0.5, 0.5, 0.5)
            self.geometry = lambda image: image.resize((8, 8))

        def _encode_pixels(self, pixels):
            return torch.nn.functional.normalize(pixels.float().mean(dim=(2, 3)), dim=-1).numpy()

    family = ModelFamily(kind="mean-colour", supports_text=False, build=MeanColour)
    form = registry.NameForm(re.compile("mean-colour"), lambda name: ModelSpec(name, name, "built in", family),
                             "mean-colour")
    monkeypatch.setattr(registry, "NAME_FORMS", (*registry.NAME_FORMS, form))
    assert parse_model_name(" mean-colour ").kind == "mean-colour" and not model_supports_text("mean-colour")
    embedder = load_model("mean-colour", "cpu")
    red = torch.zeros(1, 3, 8, 8, dtype=torch.uint8)
    red[:, 0] = 200
    assert isinstance(embedder, MeanColour) and np.allclose(embedder.encode_pixels(red), [[1, 0, 0]])
    with pytest.raises(ModelError, match="embeds images only; it cannot embed text"):
        embedder.encode_texts(["red"])
    with pytest.raises(InvalidInputError, match=r"ARCH:random, efficientnet-lite0 \(offline, image search only\), "
                                                r"test-tiny or mean-colour\.$"):
        parse_model_name("colour")


def test_naming_a_model_imports_neither_torch_nor_open_clip():
    """Tools read and check model names before any model loads; torch and open_clip take 4 s to import."""
    code = ("import sys\n"
            "from image_search.models import model_supports_text, parse_model_name\n"
            "assert model_supports_text('ViT-B-32:laion2b_s34b_b79k') and parse_model_name('efficientnet-lite0')\n"
            "print(sorted(m for m in ('torch', 'torchvision', 'open_clip') if m in sys.modules))\n")
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and result.stdout.strip() == "[]", result.stderr + result.stdout


def test_missing_weights_file_says_how_to_fix(tmp_path):
    with pytest.raises(ModelError, match="does not exist; copy the checkpoint there") as missing:
        load_model(f"ViT-B-32:{tmp_path / 'missing.bin'}", "cpu")
    assert_spelled_by_each_face(missing.value, "does not exist; copy the checkpoint there or fix the path in --model "
                                "/ IMAGE_SEARCH_MODEL.", "ask whoever runs the server to copy the checkpoint there")


def test_undownloadable_pretrained_weights_say_how_to_fix(monkeypatch, caplog):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with caplog.at_level(logging.WARNING), pytest.raises(ModelError) as failure:
        load_model("ViT-B-32:laion2b_s34b_b79k", "cpu")
    assert caplog.records == []  # the failure is said once, by the error, not also by the libraries' logs
    assert "laion2b_s34b_b79k" in str(failure.value) and "--" not in str(failure.value)  # the fix is the face's
    message = cli_message(failure.value)
    assert "laion2b_s34b_b79k" in message and "connect to the internet once" in message
    assert "--model ViT-B-32:/path/to/checkpoint" in message and "\n" not in message


def test_local_checkpoint_file_is_loaded(tmp_path):
    """ARCH:/path loads weights from a file: save test-tiny's weights and load them under its architecture."""
    import torch

    from image_search.models import build_reference_model

    tiny = load_model("test-tiny", "cpu")
    checkpoint = tmp_path / "tiny.pt"
    torch.save(build_reference_model("test-tiny", "cpu").model.state_dict(), checkpoint)
    loaded = load_model(f"test-tiny:{checkpoint}", "cpu")
    assert loaded.name == f"test-tiny:{checkpoint}"
    texts = ["a dog", "a city at night"]
    assert np.allclose(loaded.encode_texts(texts), tiny.encode_texts(texts), atol=1e-5)


def test_unknown_architecture():
    with pytest.raises(ModelError, match="Unknown CLIP architecture"):
        load_model("NoSuchNet:random", "cpu")


def test_text_is_truncated_not_refused():
    tiny = load_model("test-tiny", "cpu")
    vectors = tiny.encode_texts(["word " * 5000, ""])
    assert vectors.shape == (2, tiny.dim)
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)


def test_cuda_request_without_gpu_is_a_clear_error():
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    with pytest.raises(InvalidInputError, match="no CUDA GPU") as no_gpu:
        load_model("test-tiny", "cuda")
    assert_spelled_by_each_face(no_gpu.value, "no CUDA GPU is available; use --device cpu.",
                                "ask whoever runs the server to restart it on the CPU")


def test_text_support_is_known_without_loading_the_model():
    assert model_supports_text("test-tiny") and model_supports_text(DEFAULT_MODEL)
    assert model_supports_text("ViT-B-32:random") and model_supports_text("ViT-B-32:/models/clip.bin")
    assert not model_supports_text("efficientnet-lite0")
    assert load_model("test-tiny", "cpu").supports_text


# -- weights that cannot be had are reported at once ---------------------------------------------------------
@pytest.mark.parametrize("offline", [False, True], ids=["real network", "HF_HUB_OFFLINE"])
def test_default_model_without_weights_fails_fast_naming_both_fixes(offline, data_home, tmp_path, photos):
    env = empty_cache_env(data_home, tmp_path / "caches")
    if offline:
        env["HF_HUB_OFFLINE"] = "1"
    started = time.monotonic()
    result = run_tool("cli.cli_preprocess", "-i", photos, "-n", "case", "--no-progress", env=env, timeout=60)
    elapsed = time.monotonic() - started
    assert result.returncode == 2, result.stderr
    assert elapsed < 5, f"took {elapsed:.1f} s"  # was 56 s (46 s of download retries), 9.8 s with HF_HUB_OFFLINE
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    line = lines[0]
    assert f"'{DEFAULT_MODEL}'" in line and "not on this machine" in line
    assert ("HF_HUB_OFFLINE" if offline else "huggingface.co cannot be reached") in line
    assert "copy the checkpoint file to this machine and use --model ViT-B-32:/path/to/checkpoint.bin" in line
    assert "--model efficientnet-lite0" in line and "no text search" in line


def weights_check(env: dict, model: str = DEFAULT_MODEL) -> str:
    """check_weights_obtainable in a fresh process (huggingface_hub reads its cache folder when imported): the
    WeightsSource's value, or the error's message."""
    code = ("from image_search.errors import ModelError\n"
            "from image_search.models import check_weights_obtainable, parse_model_name\n"
            "try:\n"
            f"    print(check_weights_obtainable(parse_model_name({model!r})).value)\n"
            "except ModelError as error:\n"
            "    print(error)\n")
    started = time.monotonic()
    result = subprocess.run([sys.executable, "-c", code], env=env, cwd=REPO, capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0 and time.monotonic() - started < 5, result.stderr
    return result.stdout.strip()


@pytest.fixture
def listening_port():
    """A port on which something accepts connections, standing in for a reachable hub."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        yield listener.getsockname()[1]


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_the_check_passes_when_the_hub_answers(data_home, tmp_path, listening_port):
    env = empty_cache_env(data_home, tmp_path / "caches")
    assert "huggingface.co cannot be reached" in weights_check(env)
    env["HF_ENDPOINT"] = f"http://127.0.0.1:{listening_port}"
    assert weights_check(env) == WeightsSource.DOWNLOAD.value
    env["HF_ENDPOINT"] = f"http://127.0.0.1:{closed_port()}"
    assert "127.0.0.1 cannot be reached" in weights_check(env)


def test_the_check_goes_through_the_configured_proxy(data_home, tmp_path, listening_port):
    env = empty_cache_env(data_home, tmp_path / "caches")
    env.update(HTTPS_PROXY=f"http://127.0.0.1:{listening_port}", NO_PROXY="")
    assert weights_check(env) == WeightsSource.DOWNLOAD.value  # huggingface.co is unknown here, the proxy answers
    env["NO_PROXY"] = "huggingface.co"
    assert "huggingface.co cannot be reached" in weights_check(env)


def test_cached_weights_need_no_network(data_home, tmp_path):
    """Weights in the Hugging Face cache (laid out as huggingface_hub writes it) pass offline and unreachable."""
    env = empty_cache_env(data_home, tmp_path / "caches")
    repo = tmp_path / "caches" / "huggingface" / "hub" / "models--laion--CLIP-ViT-B-32-laion2B-s34B-b79K"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("0123abcd")
    (repo / "snapshots" / "0123abcd").mkdir(parents=True)
    (repo / "snapshots" / "0123abcd" / "open_clip_model.safetensors").write_bytes(b"weights")
    assert weights_check(env) == WeightsSource.CACHED.value
    assert weights_check({**env, "HF_HUB_OFFLINE": "1"}) == WeightsSource.CACHED.value
    assert weights_check(env, "ViT-B-32:openai") != WeightsSource.CACHED.value  # another tag's weights are not


def test_url_weights_are_looked_up_in_open_clips_folder(monkeypatch, tmp_path):
    from image_search.models.weights import _cached_weights

    url = "https://openaipublic.azureedge.net/clip/models/40d3657/ViT-B-32.pt"
    monkeypatch.setenv("HOME", str(tmp_path))
    assert _cached_weights({"url": url, "hf_hub": ""}) == (False, url)
    (tmp_path / ".cache" / "clip").mkdir(parents=True)
    (tmp_path / ".cache" / "clip" / "ViT-B-32.pt").write_bytes(b"weights")
    assert _cached_weights({"url": url, "hf_hub": ""}) == (True, url)


def test_unknown_pretrained_tag_lists_the_known_ones():
    with pytest.raises(ModelError, match="'nosuchtag' is not a pretrained tag of ViT-B-32.*laion2b_s34b_b79k"):
        load_model("ViT-B-32:nosuchtag", "cpu")


def test_the_pretrained_table_falls_back_to_open_clip_when_it_cannot_be_read_alone(monkeypatch):
    """If a future open_clip's table needs more than the light load allows, the real module is used instead."""
    import sys

    from image_search.models import weights

    for name in [n for n in sys.modules if n.startswith(weights._PRETRAINED_TABLE)]:
        monkeypatch.delitem(sys.modules, name)

    def refuse_everything(name, *args, **kwargs):
        raise ImportError(f"{name} refused by the test")

    monkeypatch.setattr(weights, "_import_without_torch", refuse_everything)
    table = weights._open_clip_pretrained()
    assert table.__name__ == "open_clip.pretrained"
    assert "laion2b_s34b_b79k" in table.list_pretrained_tags_by_model("ViT-B-32")


FAKE_TRANSFORMERS = '''
import os, pathlib
pathlib.Path(os.environ["TRANSFORMERS_IMPORTED"]).write_text("imported")
raise ImportError("this stand-in only records that it was imported")
'''


def _process_importing_open_clip(tmp_path, architecture: str) -> bool:
    """In a new process with a transformers package installed (a stand-in that records its import), import
    open_clip as a model load does for this architecture; whether transformers was imported."""
    fake = tmp_path / "site"
    (fake / "transformers").mkdir(parents=True, exist_ok=True)
    (fake / "transformers" / "__init__.py").write_text(FAKE_TRANSFORMERS)
    marker = tmp_path / f"imported-{architecture}"
    code = ("from image_search.models.open_clip_import import import_open_clip; "
            f"import_open_clip({architecture!r}).list_models()")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          env={"PATH": "/usr/bin:/bin", "PYTHONPATH": f"{fake}:{REPO}",
                               "TRANSFORMERS_IMPORTED": str(marker)})
    assert done.returncode == 0, done.stderr
    return marker.exists()


def test_open_clip_is_imported_without_transformers_unless_the_text_tower_needs_it(tmp_path):
    from image_search.models.open_clip_import import text_tower_from_transformers

    assert not text_tower_from_transformers("ViT-B-32") and text_tower_from_transformers("roberta-ViT-B-32")
    assert text_tower_from_transformers("no-such-architecture")  # unknown: open_clip's own way
    assert not _process_importing_open_clip(tmp_path, "ViT-B-32")
    assert _process_importing_open_clip(tmp_path, "roberta-ViT-B-32")  # an installed one is then used
    # and a model load keeps out of it as well (test-tiny's config is ours)
    fake_env_code = ("from image_search.models import load_model; load_model('test-tiny', 'cpu'); import sys; "
                     "assert 'transformers' not in sys.modules")
    done = subprocess.run([sys.executable, "-c", fake_env_code], capture_output=True, text=True, timeout=120,
                          env={"PATH": "/usr/bin:/bin", "PYTHONPATH": f"{tmp_path / 'site'}:{REPO}",
                               "TRANSFORMERS_IMPORTED": str(tmp_path / "by-load"), "HF_HUB_OFFLINE": "1"})
    assert done.returncode == 0, done.stderr
    assert not (tmp_path / "by-load").exists()
