"""Model names, loading and the clear failure when weights are missing."""

from __future__ import annotations

import logging

import numpy as np
import pytest

from image_search.errors import InvalidInputError, ModelError
from image_search.models import load_model, parse_model_name


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


def test_missing_weights_file_says_how_to_fix(tmp_path):
    with pytest.raises(ModelError, match="does not exist; copy the checkpoint there"):
        load_model(f"ViT-B-32:{tmp_path / 'missing.bin'}", "cpu")


def test_undownloadable_pretrained_weights_say_how_to_fix(monkeypatch, caplog):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with caplog.at_level(logging.WARNING), pytest.raises(ModelError) as failure:
        load_model("ViT-B-32:laion2b_s34b_b79k", "cpu")
    assert caplog.records == []  # the failure is said once, by the error, not also by the libraries' logs
    message = str(failure.value)
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
    with pytest.raises(InvalidInputError, match="no CUDA GPU"):
        load_model("test-tiny", "cuda")
