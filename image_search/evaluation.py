"""Retrieval metrics and the two evaluations of the original system.

Self-retrieval (cli_evaluation): every image of a folder is a query against a dataset built from that folder; a
query is a hit at k when its own file is among the top k results.
Category retrieval (evaluation.evaluate): a train/ folder is ingested and each val/ image is a query; a result is
relevant when its category (file stem without a trailing _N) equals the query's.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass

import numpy as np

from .embedding import embed_files
from .engine import ImageSearch
from .errors import InvalidInputError
from .files import scan_folder
from .ingest import check_input_folder, ingest_folder
from .search import SearchResult, search_vectors

_TRAILING_NUMBER = re.compile(r"_\d+$")


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


def _embed_folder(engine: ImageSearch, folder: str, model_name: str, *, batch_size=None, workers=None,
                  progress=False):
    embedder = engine.model(model_name)
    paths = [entry.path for entry in scan_folder(folder).files]
    kept, vectors = [], []
    for batch in embed_files(embedder, paths, batch_size=batch_size, workers=workers, progress=progress,
                             label="Querying"):
        kept.extend(paths[p] for p in batch.positions)
        vectors.append(batch.vectors)
    if not kept:
        raise InvalidInputError(f"No usable query images were found in {folder}.")
    return kept, np.concatenate(vectors)


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
    root = check_input_folder(folder)
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
        hits_at_1=sum(r is not None and r < 1 for r in ranks) / count,
        hits_at_5=sum(r is not None and r < 5 for r in ranks) / count,
        recall_at_10=sum(r is not None and r < 10 for r in ranks) / count)


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


def evaluate_categories(engine: ImageSearch, dataset_dir, name: str, *, model_name: str | None = None,
                        batch_size=None, workers=None, progress=False) -> CategoryRetrievalResult:
    root = check_input_folder(dataset_dir)
    train, val = os.path.join(root, "train"), os.path.join(root, "val")
    if not (os.path.isdir(train) and os.path.isdir(val)):
        raise InvalidInputError(f"{root} must hold a train/ and a val/ folder of images named CATEGORY_N.ext.")
    report = ingest_folder(engine, train, name, model_name=model_name, batch_size=batch_size, workers=workers,
                           progress=progress, rebuild=True)
    record = engine.dataset(name)
    paths, queries = _embed_folder(engine, val, record.model, batch_size=batch_size, workers=workers,
                                   progress=progress)
    results = search_vectors(engine, name, queries, report.total)
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
