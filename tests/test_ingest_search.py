"""Ingest and search through the core, on SQLite and PostgreSQL."""

from __future__ import annotations

import os
import shutil

import numpy as np
import pytest

from image_search.errors import (DatasetNotFoundError, InvalidInputError, ModelMismatchError)
from image_search.ingest import ingest_folder
from image_search.search import search_by_image, search_by_text
from tests.conftest import assert_spelled_by_each_face


def test_ingest_reports_broken_files_and_indexes_the_rest(engine, mixed_folder):
    report = ingest_folder(engine, mixed_folder, "case1", progress=False)
    assert report.created and report.indexed == 8 and report.total == 8
    reasons = {os.path.basename(path): reason for path, reason in report.skipped}
    assert set(reasons) == {"empty.jpg", "text.jpg", "truncated.jpg"}
    assert "empty" in reasons["empty.jpg"] and "not an image" in reasons["text.jpg"]
    assert report.ignored == 1  # notes.txt
    assert report.images_per_second > 0
    text = "\n".join(report.lines())
    assert "Skipped 3 files" in text and "truncated.jpg" in text
    record = engine.dataset("case1")
    assert record.image_count == 8 and record.model == "test-tiny" and record.dim == 64
    assert record.root == os.path.realpath(mixed_folder)


def test_image_search_finds_the_same_image_first(engine, mixed_folder):
    ingest_folder(engine, mixed_folder, "case1", progress=False)
    query = mixed_folder / "sub dir" / "photo_00000.jpg"
    results = search_by_image(engine, "case1", query, 3)
    assert len(results) == 3
    assert results[0].path == str(query) and os.path.isabs(results[0].path)
    assert results[0].score == pytest.approx(1.0, abs=1e-3)
    assert results[0].title == os.path.join("sub dir", "photo_00000.jpg")
    assert results[0].score >= results[1].score >= results[2].score


def test_text_search_returns_k_results_and_k_is_capped(engine, mixed_folder):
    ingest_folder(engine, mixed_folder, "case1", progress=False)
    assert len(search_by_text(engine, "case1", "a red car at night", 5)) == 5
    everything = search_by_text(engine, "case1", "a red car at night", 100)
    assert len(everything) == 8 and len({r.path for r in everything}) == 8
    long_query = "a red car parked outside at night " * 300  # ~10,000 characters, far past the context
    assert len(search_by_text(engine, "case1", long_query, 3)) == 3


@pytest.mark.parametrize("k", [0, -1, "x", 2.5, None, True])
def test_bad_k_is_refused(engine, mixed_folder, k):
    ingest_folder(engine, mixed_folder, "case1", progress=False)
    with pytest.raises(InvalidInputError, match="number of results"):
        search_by_text(engine, "case1", "cat", k)


def test_unknown_dataset_and_bad_queries(engine, mixed_folder, tmp_path):
    with pytest.raises(DatasetNotFoundError, match="no dataset named 'nope'"):
        search_by_text(engine, "nope", "cat")
    ingest_folder(engine, mixed_folder, "case1", progress=False)
    with pytest.raises(InvalidInputError, match="empty"):
        search_by_text(engine, "case1", "   ")
    with pytest.raises(InvalidInputError, match="does not exist"):
        search_by_image(engine, "case1", tmp_path / "missing.jpg")
    with pytest.raises(InvalidInputError, match="cannot be used"):
        search_by_image(engine, "case1", mixed_folder / "truncated.jpg")
    with pytest.raises(InvalidInputError, match="not an image"):
        search_by_image(engine, "case1", mixed_folder / "notes.txt")


def test_query_with_another_model_is_refused(engine, mixed_folder):
    ingest_folder(engine, mixed_folder, "case1", progress=False)
    with pytest.raises(ModelMismatchError, match="built with model test-tiny") as mismatch:
        search_by_text(engine, "case1", "cat", model_name="ViT-B-32:random")
    assert_spelled_by_each_face(mismatch.value, "cannot be searched with ViT-B-32:random; leave out --model to use "
                                "test-tiny.", "search it with its own model, test-tiny.")


def test_bad_dataset_names_are_refused_and_store_untouched(engine, mixed_folder):
    for name in ["", "a/b", "../x", "x'; DROP TABLE datasets; --", "a" * 65, "-x", "name with space"]:
        with pytest.raises(InvalidInputError, match="not valid"):
            ingest_folder(engine, mixed_folder, name, progress=False)
    assert engine.datasets() == []


def test_bad_input_folder(engine, tmp_path, mixed_folder):
    with pytest.raises(InvalidInputError, match="does not exist"):
        ingest_folder(engine, tmp_path / "nope", "x", progress=False)
    with pytest.raises(InvalidInputError, match="is a file"):
        ingest_folder(engine, mixed_folder / "notes.txt", "x", progress=False)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(InvalidInputError, match="No usable images"):
        ingest_folder(engine, empty, "x", progress=False)
    assert engine.datasets() == []


def test_list_and_delete(engine, mixed_folder):
    ingest_folder(engine, mixed_folder, "one", progress=False)
    ingest_folder(engine, mixed_folder, "two", progress=False)
    assert [d.name for d in engine.datasets()] == ["one", "two"]
    index_folder = engine.data_home / "indexes" / engine.dataset("one").uid
    assert index_folder.is_dir()
    engine.delete("one")
    assert [d.name for d in engine.datasets()] == ["two"]
    assert not index_folder.exists()
    with pytest.raises(DatasetNotFoundError):
        engine.delete("one")
    assert len(search_by_text(engine, "two", "cat", 3)) == 3


def test_embeddings_are_normalised_and_deterministic(engine, photos):
    from image_search.pipeline.batches import embed_files

    embedder = engine.model("test-tiny")
    paths = [str(p) for p in sorted(photos.iterdir())[:4]]
    first = np.concatenate([b.vectors for b in embed_files(embedder, paths, workers=0)])
    again = np.concatenate([b.vectors for b in embed_files(embedder, paths, batch_size=1, workers=0)])
    assert np.allclose(np.linalg.norm(first, axis=1), 1.0, atol=1e-5)
    assert np.allclose(first, again, atol=1e-4)


def test_reingest_of_unchanged_folder_does_not_duplicate(engine, mixed_folder):
    ingest_folder(engine, mixed_folder, "case1", progress=False)
    report = ingest_folder(engine, mixed_folder, "case1", progress=False)
    assert not report.created and report.indexed == 0 and report.reused == 8 and report.total == 8
    assert engine.dataset("case1").image_count == 8
    assert len(search_by_text(engine, "case1", "cat", 50)) == 8
