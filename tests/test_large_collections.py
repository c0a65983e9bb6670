"""Index kinds, the warm search path and the search benchmark (issue 7)."""

from __future__ import annotations

import copy
import json
import shutil
import sys
from dataclasses import replace

import numpy as np
import pytest

from evaluation.sample_images import write_photos
from image_search import vectors
from image_search.config import IndexSettings, load_settings
from image_search.service import ImageSearch
from image_search.errors import DatasetChangedError, DatasetNotFoundError, InvalidInputError
from image_search.ingest import ingest_folder
from image_search.search import (SearchFilter, TextVectorCache, allowed_ids, search_by_image, search_by_text,
                                 search_vectors)
from tests.conftest import run_tool


def engine_with(settings, kind: str) -> ImageSearch:
    return ImageSearch(replace(settings, index=IndexSettings(kind=kind)))


# -- choosing the index ------------------------------------------------------------------------------------------
def test_index_settings_from_the_environment(monkeypatch):
    monkeypatch.setenv("IMAGE_SEARCH_INDEX", "IVF-SQ8")
    monkeypatch.setenv("IMAGE_SEARCH_NPROBE", "32")
    monkeypatch.setenv("IMAGE_SEARCH_EF_SEARCH", "")
    assert load_settings().index == IndexSettings(kind="ivf-sq8", nprobe=32, ef_search=None)
    monkeypatch.setenv("IMAGE_SEARCH_INDEX", "annoy")
    with pytest.raises(InvalidInputError, match="IMAGE_SEARCH_INDEX='annoy' is not an index kind; use one of auto"):
        load_settings()
    monkeypatch.setenv("IMAGE_SEARCH_INDEX", "auto")
    for bad in ("0", "-4", "many"):
        monkeypatch.setenv("IMAGE_SEARCH_NPROBE", bad)
        with pytest.raises(InvalidInputError, match="IMAGE_SEARCH_NPROBE"):
            load_settings()


# -- through ingest ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", [vectors.IVF, vectors.HNSW])
def test_incremental_ingest_on_an_approximate_index(settings, photos, tmp_path, kind):
    folder = tmp_path / "case"
    shutil.copytree(photos, folder)
    engine = engine_with(settings, kind)
    try:
        report = ingest_folder(engine, folder, "case1", progress=False)
        record = engine.dataset("case1")
        assert report.total == 12 and record.index_kind == kind
        assert engine.load_index("case1").index.kind == kind
        gone = sorted(folder.iterdir())[:3]
        for path in gone:
            path.unlink()
        new = write_photos(folder, 2, megapixels=0.1, seed=99, prefix="new")
        report = ingest_folder(engine, folder, "case1", progress=False)
        assert (report.indexed, report.removed, report.reused, report.total) == (2, 3, 9, 11)
        assert engine.dataset("case1").index_kind == kind
        results = search_by_text(engine, "case1", "a photo", 50)
        paths = {r.path for r in results}
        assert len(results) == 11 and {str(p) for p in new} <= paths and not {str(p) for p in gone} & paths
        top = search_vectors(engine, "case1", engine.model("test-tiny").encode_texts(["x"]), 1)  # batch path too
        assert len(top[0]) == 1
    finally:
        engine.close()


def test_changing_the_setting_converts_an_unchanged_dataset(settings, photos):
    exact_engine = engine_with(settings, "auto")
    ingest_folder(exact_engine, photos, "case1", progress=False)
    assert exact_engine.dataset("case1").index_kind == vectors.FLAT
    before = {r.path for r in search_by_text(exact_engine, "case1", "a photo", 50)}
    ivf_engine = engine_with(settings, vectors.IVF)
    report = ingest_folder(ivf_engine, photos, "case1", progress=False)
    assert report.changed and report.indexed == 0 and report.reused == 12
    assert ivf_engine.dataset("case1").index_kind == vectors.IVF
    # the warm exact engine notices the new generation and searches the converted index
    assert {r.path for r in search_by_text(exact_engine, "case1", "a photo", 50)} == before
    assert exact_engine.cached_index("case1").index.kind == vectors.IVF
    exact_engine.close()
    ivf_engine.close()


def test_index_setting_through_the_command_line_tools(cli_env, photos):
    env = dict(cli_env, IMAGE_SEARCH_INDEX="ivf-sq8")
    done = run_tool("cli.cli_preprocess", "-i", photos, "-n", "case1", "--no-progress", env=env)
    assert done.returncode == 0, done.stderr
    done = run_tool("cli.cli_search", "-q", "a photo", "-n", "case1", "-k", "3", "--json", env=cli_env)
    assert done.returncode == 0, done.stderr
    assert len(json.loads(done.stdout)) == 3
    done = run_tool("cli.cli_datasets", "list", env=dict(cli_env, IMAGE_SEARCH_INDEX="bogus"))
    assert done.returncode == 2 and done.stderr.count("\n") == 1 and "IMAGE_SEARCH_INDEX='bogus'" in done.stderr


@pytest.mark.parametrize("kind", ["auto", vectors.IVF, vectors.HNSW])
def test_a_mapped_index_answers_like_a_read_one(settings, photos, kind):
    engine = engine_with(settings, kind)
    mapped = ImageSearch(settings, map_indexes=True)
    try:
        ingest_folder(engine, photos, "case1", progress=False)
        assert search_by_text(mapped, "case1", "a photo", 5) == search_by_text(engine, "case1", "a photo", 5)
    finally:
        engine.close()
        mapped.close()


# -- the warm search path ----------------------------------------------------------------------------------------
class QueryCounter:
    def __init__(self, store, monkeypatch):
        self.statements: list[str] = []
        original = store._execute

        def counting(cursor, statement, params=()):
            self.statements.append(statement)
            return original(cursor, statement, params)

        monkeypatch.setattr(store, "_execute", counting)


def test_a_warm_search_makes_one_query_and_reads_no_file(engine, photos, monkeypatch):
    ingest_folder(engine, photos, "case1", progress=False)
    search_by_text(engine, "case1", "a photo", 3)
    counter = QueryCounter(engine.store, monkeypatch)
    monkeypatch.setattr(vectors.FaissIndex, "load",
                        classmethod(lambda cls, path, **_: pytest.fail(f"read {path} on a warm search")))
    results = search_by_text(engine, "case1", "another photo", 3)
    assert len(results) == 3 and len(counter.statements) == 1 and "JOIN images" in counter.statements[0]


def test_a_warm_engine_notices_changes_and_deletion(settings, photos, tmp_path):
    folder = tmp_path / "case"
    shutil.copytree(photos, folder)
    warm, other = ImageSearch(settings), ImageSearch(settings)  # two processes sharing the store
    try:
        ingest_folder(other, folder, "case1", progress=False)
        assert len(search_by_text(warm, "case1", "a photo", 50)) == 12
        new = write_photos(folder, 1, megapixels=0.1, seed=42, prefix="added")
        ingest_folder(other, folder, "case1", progress=False)
        assert str(new[0]) in {r.path for r in search_by_text(warm, "case1", "a photo", 50)}

        other.delete("case1")
        with pytest.raises(DatasetNotFoundError):
            search_by_text(warm, "case1", "a photo", 3)
    finally:
        warm.close()
        other.close()


def test_a_warm_engine_is_not_fooled_by_a_new_dataset_of_the_same_name(settings, photos, tmp_path):
    """SQLite hands a deleted dataset's id to the next one, which starts again at generation 1."""
    second = tmp_path / "second"
    write_photos(second, 5, megapixels=0.1, seed=77, prefix="other")
    warm, other = ImageSearch(settings), ImageSearch(settings)
    try:
        ingest_folder(other, photos, "case1", progress=False)
        first_record = other.dataset("case1")
        assert len(search_by_text(warm, "case1", "a photo", 50)) == 12
        other.delete("case1")
        ingest_folder(other, second, "case1", progress=False)
        record = other.dataset("case1")
        assert record.generation == first_record.generation  # only the uid tells them apart
        results = search_by_text(warm, "case1", "a photo", 50)
        assert len(results) == 5 and all(r.path.startswith(str(second)) for r in results)
    finally:
        warm.close()
        other.close()


def test_an_empty_cached_dataset_is_still_checked(settings, photos, tmp_path):
    folder = tmp_path / "case"
    shutil.copytree(photos, folder)
    warm, other = ImageSearch(settings), ImageSearch(settings)
    try:
        ingest_folder(other, folder, "case1", progress=False)
        for path in folder.iterdir():
            path.unlink()
        ingest_folder(other, folder, "case1", progress=False)
        assert search_by_text(warm, "case1", "a photo", 5) == []
        write_photos(folder, 2, megapixels=0.1, seed=5)
        ingest_folder(other, folder, "case1", progress=False)
        assert len(search_by_text(warm, "case1", "a photo", 5)) == 2
    finally:
        warm.close()
        other.close()


def test_every_kind_of_search_reads_the_new_state_when_the_one_it_began_with_was_replaced(settings, photos,
                                                                                        tmp_path, monkeypatch):
    """A cold search reads the dataset's row, then its index file; when an ingest elsewhere replaced that
    generation in between (and removed its file), the search's one retry loop reads the new state."""
    folder = tmp_path / "case"
    shutil.copytree(photos, folder)
    searcher, other = ImageSearch(settings), ImageSearch(settings)
    try:
        ingest_folder(other, folder, "case1", progress=False)
        stale = other.dataset("case1")
        write_photos(folder, 1, megapixels=0.1, seed=42, prefix="added")
        ingest_folder(other, folder, "case1", progress=False)
        with pytest.raises(DatasetChangedError):
            searcher.index_of(stale)
        vectors_of_one = other.model("test-tiny").encode_texts(["a photo"])
        searches = {"text": lambda: search_by_text(searcher, "case1", "a photo", 50),
                    "image": lambda: search_by_image(searcher, "case1", folder / "photo_00001.jpg", 50),
                    "vectors": lambda: search_vectors(searcher, "case1", vectors_of_one, 50)[0]}
        current = searcher.dataset
        for kind, search in searches.items():
            reads = []
            monkeypatch.setattr(searcher, "dataset", lambda name: reads.append(name) or (
                stale if len(reads) == 1 else current(name)))
            searcher.forget_index("case1")
            assert len(search()) == 13 and len(reads) == 2, kind
    finally:
        searcher.close()
        other.close()


def test_a_search_filter_without_conditions_allows_every_image(engine, photos):
    ingest_folder(engine, photos, "case1", progress=False)
    record = engine.dataset("case1")
    assert SearchFilter().is_empty
    assert allowed_ids(engine.store, record, None) is None
    assert allowed_ids(engine.store, record, SearchFilter()) is None
    unfiltered = search_by_text(engine, "case1", "a photo", 5)
    assert search_by_text(engine, "case1", "a photo", 5, filters=SearchFilter()) == unfiltered


def test_repeated_text_queries_are_embedded_once(engine, photos, monkeypatch):
    ingest_folder(engine, photos, "case1", progress=False)
    embedder = engine.model("test-tiny")
    calls = []
    original = type(embedder).encode_texts
    monkeypatch.setattr(type(embedder), "encode_texts", lambda self, texts: calls.append(list(texts))
                        or original(self, texts))
    engine.text_vectors.clear()
    first = search_by_text(engine, "case1", "a red car", 5)
    again = search_by_text(engine, "case1", "  a red car ", 5)
    assert first == again and calls == [["a red car"]]
    search_by_text(engine, "case1", "a blue car", 5)
    assert calls == [["a red car"], ["a blue car"]]


def test_text_vector_cache_is_bounded_and_read_only():
    embedder = type("Fake", (), {"name": "fake", "device": "cpu",
                                 "encode_texts": lambda self, texts: np.ones((1, 4), dtype=np.float32)})()
    cache = TextVectorCache(size=2)
    for text in ("a", "b", "a", "c"):  # "a" was used last before "c", so "b" is the one dropped
        cache.get(embedder, text)
    assert [key[2] for key in cache._vectors] == ["a", "c"]
    with pytest.raises(ValueError):
        cache.get(embedder, "a")[0, 0] = 5.0


# -- the text tower over the tokens that matter ------------------------------------------------------------------
@pytest.mark.parametrize("model_name", ["test-tiny", "ViT-B-32:random"])
def test_trimmed_text_encoding_equals_the_full_context(model_name, monkeypatch):
    import torch

    from image_search.models import build_reference_model, parse_model_name
    from image_search.models.clip import _build_clip, _trimmable

    reference = build_reference_model(model_name, "cpu")  # open_clip's own model and encode_text
    monkeypatch.setenv("IMAGE_SEARCH_CPU_PRECISION", "fp32")  # bf16 has its own test (test_query_threads.py)
    embedder = _build_clip(parse_model_name(model_name), "cpu")
    assert _trimmable(reference.model) and embedder.runs_own_text_path
    texts = ["a red car at night", "dog", "", "a photo of " + "a very long description " * 40,
             "tokens: !@#$%^&*() émoji 🚗 中文"]
    with torch.inference_mode():
        full = reference.model.encode_text(reference.tokenizer(texts)).float()
    full = torch.nn.functional.normalize(full, dim=-1).numpy()
    for batch in (texts, texts[:1], texts[1:2]):  # batches mix lengths: trimmed to the longest
        trimmed = embedder.encode_texts(batch)
        cosine = np.sum(trimmed * full[[texts.index(t) for t in batch]], axis=1)
        assert cosine.min() > 0.9999, (model_name, batch, cosine)


def test_models_without_a_causal_text_tower_use_open_clip_itself(monkeypatch):
    from image_search.models import build_reference_model, clip, parse_model_name

    reference = build_reference_model("test-tiny", "cpu")
    bidirectional = copy.deepcopy(reference.model)
    bidirectional.attn_mask = None
    assert clip._trimmable(reference.model) and not clip._trimmable(bidirectional)
    pooled_first = copy.deepcopy(reference.model)
    pooled_first.text_pool_type = "first"
    assert not clip._trimmable(pooled_first)
    # a model it cannot trim: open_clip's encode_text, on a text tower left as open_clip built it
    monkeypatch.setattr(clip, "_trimmable", lambda model: False)
    embedder = clip._build_clip(parse_model_name("test-tiny"), "cpu")
    assert not embedder.runs_own_text_path and embedder.text_form == "fp32"
    calls = []
    original = embedder.model.encode_text
    monkeypatch.setattr(embedder.model, "encode_text", lambda tokens: calls.append(tokens) or original(tokens))
    expected = reference.encode_texts(["a red car"])
    assert np.allclose(embedder.encode_texts(["a red car"]), expected, atol=1e-6) and len(calls) == 1


# -- the benchmark -----------------------------------------------------------------------------------------------
def test_benchmark_runs_end_to_end_and_writes_json(tmp_path):
    import importlib.util
    import subprocess

    from tests.conftest import REPO

    out = tmp_path / "bench.json"
    done = subprocess.run([sys.executable, "-m", "evaluation.benchmark_search", "--sizes", "2000", "--quick",
                           "--model", "test-tiny", "--json", str(out)], cwd=REPO, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads(out.read_text())
    rows = report["results"]["2000"]
    assert set(rows) == set(vectors.KINDS)
    for kind, row in rows.items():
        assert {"recall_at_10", "p50_ms", "p99_ms", "build_s", "bytes_per_vector"} <= set(row)
        assert 0.9 <= row["recall_at_10"] <= 1.0 and row["p50_ms"] > 0 and row["bytes_per_vector"] > 0
    assert rows["flat"]["recall_at_10"] == 1.0
    assert rows["ivf-sq8"]["bytes_per_vector"] < rows["ivf"]["bytes_per_vector"] / 3
    end_to_end = report["end_to_end"]["2000"]
    assert end_to_end["index"] == "flat" and end_to_end["text_p50_ms"] > 0
    if importlib.util.find_spec("server") and importlib.util.find_spec("server.server"):
        assert end_to_end["http_text_p50_ms"] > 0, report.get("http")
    else:
        assert report["http"].startswith("skipped")
    assert "recall@10" in done.stdout and "Wrote" in done.stdout
