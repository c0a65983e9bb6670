"""The vector index package: kinds by size, IVF layout, add/remove/recall of each kind, search effort."""

from __future__ import annotations

import math

from dataclasses import replace

import numpy as np
import pytest

from evaluation.synthetic_vectors import SyntheticCollection
from image_search import vectors
from image_search.config import IndexSettings
from image_search.service import ImageSearch
from image_search.ingest import ingest_folder
from image_search.vectors import policy


def synthetic_index(count: int, dim: int = 64):
    points = SyntheticCollection(dim).all_vectors(count)
    ids = np.arange(100, 100 + count, dtype=np.int64)
    exact = vectors.new_index(dim)
    exact.add(points, ids)
    return exact, ids, points


def all_vectors(index) -> dict[int, np.ndarray]:
    return {int(i): v for ids, points in index.export() for i, v in zip(ids, points)}


def found_ids(rows) -> list[np.ndarray]:
    return [row.ids for row in rows]


# -- choosing the index ------------------------------------------------------------------------------------------
def test_kind_follows_size_with_hysteresis_and_setting_overrides():
    line = policy.APPROXIMATE_FROM
    assert policy.choose_kind(line - 1) == vectors.FLAT
    assert policy.choose_kind(line) == policy.APPROXIMATE_KIND
    # an approximate dataset that shrinks a little stays approximate; one that halves goes back to exact
    assert policy.choose_kind(line - 1, current=vectors.IVF) == vectors.IVF
    assert policy.choose_kind(line // 2 - 1, current=vectors.IVF) == vectors.FLAT
    # from COMPACT_FROM, 8-bit codes; a compact (or hand-picked) kind stays until the dataset is small again
    compact = policy.COMPACT_FROM
    assert policy.choose_kind(compact - 1) == vectors.IVF
    assert policy.choose_kind(compact) == policy.COMPACT_KIND == vectors.IVF_SQ8
    assert policy.choose_kind(compact, current=vectors.IVF) == vectors.IVF_SQ8
    assert policy.choose_kind(compact, current=vectors.FLAT) == vectors.IVF_SQ8
    for kept in (vectors.IVF_SQ8, vectors.HNSW):
        assert policy.choose_kind(line // 2, current=kept) == kept
        assert policy.choose_kind(line // 2 - 1, current=kept) == vectors.FLAT
    for kind in vectors.KINDS:
        assert policy.choose_kind(10, kind) == kind
        assert policy.choose_kind(10 * line, kind) == kind
    assert policy.choose_kind(0, vectors.IVF) == vectors.FLAT  # nothing to train on


def test_fit_converts_by_size_and_keeps_every_vector(monkeypatch):
    exact, ids, points = synthetic_index(3000)
    assert vectors.fit(exact) is exact  # small: stays exact, untouched
    monkeypatch.setattr(policy, "APPROXIMATE_FROM", 2000)
    approximate = vectors.fit(exact)
    assert approximate.kind == vectors.IVF and approximate is not exact
    assert approximate.lists == policy.lists_for(3000) and approximate.nprobe >= 1
    stored = all_vectors(approximate)
    assert sorted(stored) == ids.tolist()
    assert np.allclose(np.stack([stored[i] for i in ids.tolist()]), points)  # IVF-Flat keeps vectors exactly
    # shrinking below half the line brings back the exact index, with the same content
    smaller = approximate.without(ids[:2001])
    back = vectors.fit(smaller)
    assert back.kind == vectors.FLAT and sorted(all_vectors(back)) == ids[2001:].tolist()


def test_ivf_is_laid_out_again_when_the_dataset_outgrows_it():
    exact, ids, points = synthetic_index(2000)
    ivf = vectors.fit(exact, vectors.IVF)
    small_lists = ivf.lists
    assert vectors.fit(ivf, vectors.IVF) is ivf
    more = SyntheticCollection(64, seed=5).all_vectors(30_000)
    ivf.add(more, np.arange(10_000, 40_000))
    grown = vectors.fit(ivf, vectors.IVF)
    assert grown is not ivf and grown.lists > small_lists and grown.count == 32_000


@pytest.mark.parametrize("kind", [vectors.IVF, vectors.IVF_SQ8, vectors.HNSW])
def test_approximate_index_add_remove_and_recall(kind):
    exact, ids, points = synthetic_index(5000)
    index = vectors.fit(exact, kind)
    assert index.kind == kind
    queries = SyntheticCollection(64).queries(100)
    truth = found_ids(exact.search(queries, 10))
    found = found_ids(index.search(queries, 10))
    recall = np.mean([len(set(f) & set(t)) / 10 for f, t in zip(found, truth)])
    assert recall >= 0.9, f"{kind} recall@10 {recall:.3f} against exact search"

    removed = ids[:50]
    smaller = index.without(removed)
    assert index.count == 5000  # the original (perhaps serving searches) is untouched
    assert smaller.count == 4950 and not set(removed.tolist()) & set(smaller.stored_ids().tolist())
    found = found_ids(smaller.search(points[:50], 10))
    assert not set(np.concatenate(found).tolist()) & set(removed.tolist())
    added = SyntheticCollection(64, seed=9).all_vectors(20)
    smaller.add(added, np.arange(90_000, 90_020))
    top = found_ids(smaller.search(added, 1))
    assert [int(row[0]) for row in top] == list(range(90_000, 90_020))


def test_search_settings_override_the_built_effort():
    exact, _, _ = synthetic_index(3000)
    ivf = vectors.fit(exact, vectors.IVF)
    ivf.set_search_effort(nprobe=3)
    assert ivf.nprobe == 3
    ivf.set_search_effort(nprobe=10 ** 6)
    assert ivf.nprobe == ivf.lists
    hnsw = vectors.fit(exact, vectors.HNSW)
    hnsw.set_search_effort(ef_search=77)
    assert "efSearch 77" in hnsw.describe()


def test_the_engine_applies_the_search_effort_settings(settings, photos):
    builder = ImageSearch(replace(settings, index=IndexSettings(kind=vectors.HNSW)))
    searcher = ImageSearch(replace(settings, index=IndexSettings(ef_search=77)))
    try:
        ingest_folder(builder, photos, "case1", progress=False)
        assert builder.load_index("case1").index.ef_search == vectors.faiss_index.HNSW_EF_SEARCH
        assert searcher.load_index("case1").index.ef_search == 77
    finally:
        builder.close()
        searcher.close()


# -- searching among allowed ids only -----------------------------------------------------------------------------
def allowed_sample(ids: np.ndarray, count: int) -> np.ndarray:
    return np.sort(np.random.default_rng(3).choice(ids, count, replace=False))


def recall(rows, truth) -> float:
    return float(np.mean([len(set(row.ids.tolist()) & set(best.ids.tolist())) / len(best.ids)
                          for row, best in zip(rows, truth)]))


@pytest.mark.parametrize("kind", vectors.KINDS)
def test_a_search_with_ids_returns_the_best_allowed_ids_only(kind):
    exact, ids, _ = synthetic_index(3000)
    index = exact if kind == vectors.FLAT else vectors.fit(exact, kind)
    index.set_search_effort(nprobe=index.lists, ef_search=index.count)  # exhaustive: exact among the allowed
    queries = SyntheticCollection(64).queries(20)
    allowed = allowed_sample(ids, 150)
    stored = all_vectors(index)  # as the index holds them: decoded 8-bit codes for ivf-sq8
    scores = queries @ np.stack([stored[i] for i in allowed.tolist()]).T
    rows = index.search(queries, 10, ids=allowed)
    assert len(rows) == len(queries)
    for row, expected in zip(rows, scores):
        best = np.argsort(-expected)[:10]
        assert row.ids.tolist() == allowed[best].tolist()
        assert np.allclose(row.scores, expected[best], atol=1e-4)
    one = index.search(queries[:1], 10, ids=allowed)  # one query runs on one thread: the same answer
    assert one[0].ids.tolist() == rows[0].ids.tolist()

    few = allowed[:7]  # more results asked for than there are allowed ids: all of them, no -1 padding
    for row in index.search(queries, 50, ids=few) + index.search(queries[:1], 50, ids=few):
        assert sorted(row.ids.tolist()) == few.tolist() and np.all(np.diff(row.scores) <= 0)
    absent = np.arange(10 ** 9, 10 ** 9 + 5)  # allowed, but not in the index: FAISS pads the rows with -1
    for row in index.search(queries, 50, ids=np.concatenate([few, absent])):
        assert sorted(row.ids.tolist()) == few.tolist()
    nothing = np.zeros(0, dtype=np.int64)
    assert [len(row.ids) for row in index.search(queries, 5, ids=nothing)] == [0] * len(queries)
    assert [len(row.ids) for row in index.search(queries[:1], 5, ids=nothing)] == [0]


@pytest.mark.parametrize("kind", [vectors.IVF, vectors.IVF_SQ8])
def test_a_filtered_ivf_search_scans_more_lists_until_they_hold_enough_allowed_ids(kind):
    exact, ids, _ = synthetic_index(3000)
    index = vectors.fit(exact, kind)
    queries = SyntheticCollection(64).queries(20)
    allowed = allowed_sample(ids, 600)  # a fifth: 3 of 64 lists hold ~28 allowed vectors, 40 lists ~375
    wanted = vectors.policy.MIN_ALLOWED_SCANNED
    for nprobe in (3, 40):
        widened = vectors.policy.filtered_nprobe(nprobe, index.lists, index.count, len(allowed), 10)
        assert widened == max(nprobe, math.ceil(wanted * index.lists / len(allowed)))
        # asked for every vector, a search returns those of the lists it scans; a filtered search finds the best
        # allowed ids among exactly the lists an unfiltered search with the widened nprobe scans
        index.set_search_effort(nprobe=widened)
        scanned = index.search(queries, index.count)
        index.set_search_effort(nprobe=nprobe)
        for row, everything in zip(index.search(queries, 10, ids=allowed), scanned):
            assert row.ids.tolist() == everything.ids[np.isin(everything.ids, allowed)][:10].tolist()
    assert vectors.policy.filtered_nprobe(3, index.lists, index.count, len(allowed), 10) > 3
    assert vectors.policy.filtered_nprobe(40, index.lists, index.count, len(allowed), 10) == 40
    assert vectors.policy.filtered_nprobe(3, index.lists, index.count, index.count, 10) == 3


@pytest.mark.parametrize("kind", [vectors.IVF, vectors.IVF_SQ8, vectors.HNSW])
def test_a_filtered_search_returns_k_allowed_ids_even_when_its_lists_hold_fewer(kind):
    exact, ids, _ = synthetic_index(3000)
    index = vectors.fit(exact, kind)
    index.set_search_effort(nprobe=1, ef_search=8)
    queries = SyntheticCollection(64).queries(20)
    allowed = vectors.AllowedIds(allowed_sample(ids, 40))  # fewer than 40 in the few lists one nprobe reaches
    for k in (10, 40):
        rows = index.search(queries, k, ids=allowed) + index.search(queries[:1], k, ids=allowed)
        for row in rows:
            assert len(row.ids) == k and set(row.ids.tolist()) <= set(allowed.ids.tolist())
            assert np.all(np.diff(row.scores) <= 1e-6)


def test_a_filtered_hnsw_search_widens_its_walk_or_scores_every_allowed_id():
    exact, ids, _ = synthetic_index(3000)
    hnsw = vectors.fit(exact, vectors.HNSW)
    queries = SyntheticCollection(64).queries(20)

    def filtered_recall(ef_search: int, allowed: np.ndarray) -> float:
        hnsw.set_search_effort(ef_search=ef_search)
        return recall(hnsw.search(queries, 10, ids=allowed), exact.search(queries, 10, ids=allowed))

    few = allowed_sample(ids, 150)
    assert vectors.policy.hnsw_scores_every_allowed(len(few), 16, vectors.faiss_index.HNSW_M)
    assert filtered_recall(16, few) == 1.0  # exact: a walk with FAISS' own default (16) would miss some
    many = allowed_sample(ids, 1500)
    assert not vectors.policy.hnsw_scores_every_allowed(len(many), 16, vectors.faiss_index.HNSW_M)
    assert vectors.policy.filtered_ef_search(16, hnsw.count, len(many), 10) == 2 * vectors.policy.MIN_ALLOWED_SCANNED
    assert filtered_recall(16, many) >= 0.9


@pytest.mark.parametrize("kind", vectors.KINDS)
def test_a_filtered_search_of_a_saved_index_read_or_mapped(kind, tmp_path):
    exact, ids, _ = synthetic_index(2000)
    index = exact if kind == vectors.FLAT else vectors.fit(exact, kind)
    queries = SyntheticCollection(64).queries(5)
    allowed = allowed_sample(ids, 300)
    expected = [row.ids.tolist() for row in index.search(queries, 10, ids=allowed)]
    index.save(tmp_path / "index.faiss")
    for mapped in (False, True):
        loaded = vectors.load_index(tmp_path / "index.faiss", mapped=mapped)
        assert [row.ids.tolist() for row in loaded.search(queries, 10, ids=allowed)] == expected
