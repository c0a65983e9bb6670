"""Retrieval metrics and the two evaluations of the original system.

Self-retrieval (cli_evaluation): every image of a folder is a query against a dataset built from that folder; a
query is a hit at k when its own file is among the top k results.
Category retrieval (evaluation.evaluate): a train/ folder is ingested and each val/ image is a query; a result is
relevant when its category (file stem without a trailing _N) equals the query's.
Near-duplicate retrieval (evaluation.benchmark_quality): edited copies of ingested originals are the queries; a
query is a hit at k when the original it was made from is among the top k results.
"""

from __future__ import annotations

import os
import re
import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING, Sequence

import numpy as np

from .pipeline.batches import embed_files
from .errors import Fix, InvalidInputError
from .pipeline.scan import scan_folder
from .ingest import check_input_folder, ingest_folder, printable
from .datasets.names import validate_dataset_name
from .search import SearchResult, search_vectors

if TYPE_CHECKING:
    from .service import ImageSearch

_TRAILING_NUMBER = re.compile(r"_\d+$")
KEPT_CATEGORY_DATASET = "evaluation-train"  # the original's name for the category evaluation's dataset


def category_of(path: str) -> str:
    stem = os.path.splitext(os.path.basename(path))[0]
    return _TRAILING_NUMBER.sub("", stem)


def average_precision(relevance: list[bool], total_relevant: int) -> float:
    if total_relevant == 0:
        return 0.0
    hits, precision_sum = 0, 0.0
    for rank, relevant in enumerate(relevance, 1):
        if relevant:
            hits += 1
            precision_sum += hits / rank
    return precision_sum / total_relevant


def hits_at(ranks: Sequence[int | None], k: int) -> float:
    """The fraction of queries whose target is among the top k; ranks count from 0, None is not found."""
    return sum(r is not None and r < k for r in ranks) / len(ranks) if ranks else 0.0


def mean_reciprocal_rank(ranks: Sequence[int | None]) -> float:
    return sum(1.0 / (r + 1) for r in ranks if r is not None) / len(ranks) if ranks else 0.0


def _embed_paths(engine: ImageSearch, paths: Sequence[str], model_name: str, *, batch_size=None, workers=None,
                 progress=False) -> tuple[list[int], np.ndarray]:
    """(positions of the readable paths, their vectors)."""
    embedder = engine.model(model_name)
    positions, vectors = [], [np.zeros((0, embedder.dim), dtype=np.float32)]
    for batch in embed_files(embedder, paths, batch_size=batch_size, workers=workers, progress=progress,
                             label="Querying"):
        positions.extend(batch.positions)
        vectors.append(batch.vectors)
    return positions, np.concatenate(vectors)


def _embed_folder(engine: ImageSearch, folder: str, model_name: str, *, batch_size=None, workers=None,
                  progress=False):
    paths = [entry.path for entry in scan_folder(folder).files]
    positions, vectors = _embed_paths(engine, paths, model_name, batch_size=batch_size, workers=workers,
                                      progress=progress)
    if not positions:
        raise InvalidInputError(f"No usable query images were found in {folder}.")
    return [paths[p] for p in positions], vectors


@dataclass
class SelfRetrievalResult:
    dataset: str
    queries: int
    hits_at_1: float
    hits_at_5: float
    recall_at_10: float

    def lines(self) -> list[str]:
        return [f"Self-retrieval on dataset '{self.dataset}' ({self.queries} queries)",
                f"Hits@1:    {self.hits_at_1:.4f}", f"Hits@5:    {self.hits_at_5:.4f}",
                f"Recall@10: {self.recall_at_10:.4f}"]


def evaluate_self_retrieval(engine: ImageSearch, folder, name: str, *, model_name: str | None = None,
                            batch_size=None, workers=None, progress=False) -> SelfRetrievalResult:
    root = check_input_folder(folder, engine.settings.allowed_roots)
    if engine.store.get_dataset(name) is None:
        ingest_folder(engine, root, name, model_name=model_name, batch_size=batch_size, workers=workers,
                      progress=progress)
    record = engine.dataset(name)
    paths, queries = _embed_folder(engine, root, record.model, batch_size=batch_size, workers=workers,
                                   progress=progress)
    results = search_vectors(engine, name, queries, 10)
    ranks = [_rank_of(os.path.realpath(path), row) for path, row in zip(paths, results)]
    count = len(ranks)
    return SelfRetrievalResult(
        dataset=name, queries=count,
        hits_at_1=hits_at(ranks, 1), hits_at_5=hits_at(ranks, 5), recall_at_10=hits_at(ranks, 10))


def _rank_of(path: str, results: list[SearchResult]) -> int | None:
    for rank, result in enumerate(results):
        if os.path.realpath(result.path) == path:
            return rank
    return None


@dataclass
class CategoryRetrievalResult:
    queries: int
    precision_at_1: float
    precision_at_5: float
    mean_average_precision: float
    per_query: list[dict]

    def lines(self) -> list[str]:
        return [f"Category retrieval ({self.queries} queries)",
                f"Precision@1: {self.precision_at_1:.4f}", f"Precision@5: {self.precision_at_5:.4f}",
                f"mAP:         {self.mean_average_precision:.4f}"]


def evaluate_categories(engine: ImageSearch, dataset_dir, name: str | None = None, *, keep: bool = False,
                        model_name: str | None = None, batch_size=None, workers=None,
                        progress=False) -> CategoryRetrievalResult:
    """Ingest DIR/train as dataset NAME, query it with every DIR/val image, and score by category.

    Without keep the dataset is a throwaway: NAME (by default a fresh unique name) must not exist yet, so no
    dataset of the user's is ever replaced, and it is deleted afterwards whatever happens. With keep it is
    (re)built as NAME (by default KEPT_CATEGORY_DATASET) and stays, to be searched with the other tools.
    """
    root = check_input_folder(dataset_dir, engine.settings.allowed_roots)
    train, val = os.path.join(root, "train"), os.path.join(root, "val")
    if not (os.path.isdir(train) and os.path.isdir(val)):
        raise InvalidInputError(f"{root} must hold a train/ and a val/ folder of images named CATEGORY_N.ext.")
    if name is None:
        name = KEPT_CATEGORY_DATASET if keep else f"evaluation-{uuid.uuid4().hex[:12]}"
    name = validate_dataset_name(name)
    if not keep and engine.store.get_dataset(name) is not None:
        raise InvalidInputError(f"Dataset '{name}' already exists, and the evaluation deletes its dataset when it "
                                "ends.", fix=Fix.KEEP_EVALUATION_DATASET)
    try:
        report = ingest_folder(engine, train, name, model_name=model_name, batch_size=batch_size, workers=workers,
                               progress=progress, rebuild=True)
        return _score_categories(engine, name, val, report.total, batch_size=batch_size, workers=workers,
                                 progress=progress)
    finally:
        if not keep and engine.store.get_dataset(name) is not None:
            engine.delete(name)


def _score_categories(engine: ImageSearch, name: str, val: str, depth: int, *, batch_size, workers,
                      progress) -> CategoryRetrievalResult:
    record = engine.dataset(name)
    paths, queries = _embed_folder(engine, val, record.model, batch_size=batch_size, workers=workers,
                                   progress=progress)
    results = search_vectors(engine, name, queries, depth)
    per_query, p1, p5, aps = [], [], [], []
    train_categories = [category_of(p) for p in (r.path for r in results[0])] if results else []
    for path, row in zip(paths, results):
        category = category_of(path)
        relevance = [category_of(r.path) == category for r in row]
        total_relevant = sum(c == category for c in train_categories)
        p1.append(float(relevance[0]) if relevance else 0.0)
        p5.append(sum(relevance[:5]) / 5)
        aps.append(average_precision(relevance, total_relevant))
        per_query.append({"query": os.path.basename(path), "category": category,
                          "top5": [os.path.basename(r.path) for r in row[:5]], "ap": aps[-1]})
    return CategoryRetrievalResult(len(paths), float(np.mean(p1)), float(np.mean(p5)), float(np.mean(aps)),
                                   per_query)


@dataclass(frozen=True)
class NearDuplicateQuery:
    edit: str  # what was done to the original, e.g. "downscale"
    path: str  # the edited copy
    original: str  # the ingested file it was made from


@dataclass
class RankMetrics:
    queries: int
    hits_at_1: float
    hits_at_5: float
    mrr: float

    @classmethod
    def of(cls, ranks: Sequence[int | None]) -> "RankMetrics":
        return cls(len(ranks), hits_at(ranks, 1), hits_at(ranks, 5), mean_reciprocal_rank(ranks))


@dataclass
class NearDuplicateResult:
    dataset: str
    per_edit: dict[str, RankMetrics]
    overall: RankMetrics
    depth: int  # results looked at per query: an original ranked lower counts as not found (reciprocal rank 0)
    misses: list[dict]  # every query whose original did not come first

    def lines(self) -> list[str]:
        rows = [(edit, m) for edit, m in self.per_edit.items()] + [("overall", self.overall)]
        width = max(len("edit"), *(len(edit) for edit, _ in rows))
        lines = [f"Near-duplicate retrieval on dataset '{self.dataset}' (MRR over the top {self.depth})",
                 f"{'edit':<{width}}  queries  Hits@1  Hits@5     MRR"]
        lines += [f"{edit:<{width}}  {m.queries:>7}  {m.hits_at_1:.4f}  {m.hits_at_5:.4f}  {m.mrr:.4f}"
                  for edit, m in rows]
        return lines

    def to_dict(self) -> dict:
        return {"dataset": self.dataset, "depth": self.depth,
                "per_edit": {edit: m.__dict__ for edit, m in self.per_edit.items()},
                "overall": self.overall.__dict__, "misses": self.misses}


def evaluate_near_duplicates(engine: ImageSearch, name: str, queries: Sequence[NearDuplicateQuery], *,
                             depth: int = 100, batch_size=None, workers=None,
                             progress=False) -> NearDuplicateResult:
    """Query dataset NAME (already ingested from the originals) with every edited copy and rank the originals."""
    if not queries:
        raise InvalidInputError("There are no near-duplicate queries to run; give a folder of readable photos.")
    record = engine.dataset(name)
    depth = max(1, min(depth, record.image_count))
    positions, vectors = _embed_paths(engine, [q.path for q in queries], record.model, batch_size=batch_size,
                                      workers=workers, progress=progress)
    results: list[list[SearchResult]] = [[] for _ in queries]  # an unreadable copy finds nothing
    if positions:
        for position, row in zip(positions, search_vectors(engine, name, vectors, depth)):
            results[position] = row
    ranks_by_edit: dict[str, list[int | None]] = {}
    misses = []
    for query, row in zip(queries, results):
        rank = _rank_of(os.path.realpath(query.original), row)
        ranks_by_edit.setdefault(query.edit, []).append(rank)
        if rank != 0:
            misses.append({"edit": query.edit, "query": printable(query.path), "original": printable(query.original),
                           "rank": None if rank is None else rank + 1,
                           "top": printable(row[0].path) if row else None})
    per_edit = {edit: RankMetrics.of(ranks) for edit, ranks in ranks_by_edit.items()}
    overall = RankMetrics.of([rank for ranks in ranks_by_edit.values() for rank in ranks])
    return NearDuplicateResult(record.name, per_edit, overall, depth, misses)
