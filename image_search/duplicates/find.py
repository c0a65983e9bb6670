"""Finding a dataset's duplicates: exact copies from the store, near-copies from the vectors' neighbour graph.

Exact copies are the images that share a SHA-256, asked of the store with one query. Near-copies are found
without comparing every pair: each stored vector asks the index for its NEIGHBOURS most similar others
(VectorIndex.similar_pairs), the pairs that reach the threshold are edges, exact copies are joined too, and the
groups are the connected components of those edges (components.py). On 1M vectors that is one approximate
search per vector (evaluation/benchmark_duplicates.py measures the time).
"""

from __future__ import annotations

import math
import time
from datetime import datetime
from itertools import groupby
from typing import TYPE_CHECKING, Iterable

import numpy as np

from ..errors import DatasetChangedError, ImageSearchError, InvalidInputError
from ..models import parse_model_name
from ..search.run import result_of
from .components import components
from .results import EXACT, NEAR, DuplicateGroup, Duplicates

if TYPE_CHECKING:
    from ..service import ImageSearch
    from ..store import DatasetRecord, ImageRecord

# How many of its most similar images each image is linked to, when they reach the threshold. Few: an edited
# copy's nearest images are its original and the original's other copies, while a photo's unrelated look-alikes
# (two photos of the Eiffel tower from one spot) come after them, and linking to them chains groups together. On the
# quality benchmark's 110 photos with their 770 edited copies (efficientnet-lite0 at its threshold 0.76,
# evaluation/results/duplicates-efficientnet-lite0-seed-eval.json): 3 neighbours grouped 95.7% of edit pairs and 5
# pairs of different photos; 32 (all that reach the threshold) 95.8% and 93 pairs; 1 neighbour only 89.2%.
NEIGHBOURS = 3

# How often the search reads a dataset that keeps changing under it before it gives up (as a search does).
ATTEMPTS = 5
_LOOKUP_BATCH = 10_000  # ids per store lookup: a statement's parameters stay well under SQLite's limit


def check_threshold(value) -> float | None:
    """The similarity threshold as a float in (0, 1], or None for the model's default (None or '')."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    problem = (f"The similarity threshold {value!r} is not valid; use a number above 0 and at most 1 (1: only "
               "identical pictures; lower values also group more heavily edited copies).")
    if isinstance(value, bool):
        raise InvalidInputError(problem)
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise InvalidInputError(problem) from None
    if not math.isfinite(number) or not 0 < number <= 1:
        raise InvalidInputError(problem)
    return number


def default_threshold(model: str) -> float:
    """The near-duplicate threshold of the model's family (image_search/models: each family's measured value)."""
    return parse_model_name(model).family.duplicate_threshold


def find_duplicates(service: ImageSearch, name: str, threshold=None, *, exact_only: bool = False,
                    neighbours: int = NEIGHBOURS) -> Duplicates:
    """The dataset's groups of exact copies and (unless exact_only) of near-copies at `threshold` (default: the
    model family's), each list largest first, from one state of the dataset."""
    from .. import __version__

    threshold = check_threshold(threshold)
    for _ in range(ATTEMPTS):
        started = time.perf_counter()
        record = service.dataset(name)
        chosen = None if exact_only else threshold if threshold is not None else default_threshold(record.model)
        try:
            exact_groups, near_groups = _groups_of(service, record, chosen, neighbours)
        except DatasetChangedError:
            service.forget_index(name)
            continue
        return Duplicates(dataset=record.name, model=record.model, images=record.image_count, threshold=chosen,
                          exact_groups=exact_groups, near_groups=near_groups,
                          unhashed=service.store.count_without_hashes(record.id),
                          seconds=time.perf_counter() - started,
                          found_at=datetime.now().astimezone().isoformat(timespec="seconds"), version=__version__)
    raise ImageSearchError(f"Dataset '{name}' kept changing while its duplicates were being found; try again.")


def _groups_of(service: ImageSearch, record: DatasetRecord, threshold: float | None,
               neighbours: int) -> tuple[tuple[DuplicateGroup, ...], tuple[DuplicateGroup, ...]]:
    hashed, generation = service.store.images_sharing_hashes(record.id, uid=record.uid)
    if generation != record.generation:
        raise DatasetChangedError(f"Dataset '{record.name}' changed while it was being read; try again.")
    same_hash = [np.array([vector_id for _, vector_id in rows], dtype=np.int64)
                 for _, rows in groupby(hashed, key=lambda row: row[0])]
    near: list[np.ndarray] = []
    best = {}
    if threshold is not None and record.image_count > 1:
        near, best = _near_copies(service, record, threshold, neighbours, same_hash)
    wanted = sorted({int(i) for group in [*same_hash, *near] for i in group})
    images = _lookup(service, record, wanted)
    exact_groups = _as_groups(EXACT, same_hash, images, record.root, {})
    near_groups = _as_groups(NEAR, near, images, record.root, best)
    return exact_groups, near_groups


def _near_copies(service: ImageSearch, record: DatasetRecord, threshold: float, neighbours: int,
                 same_hash: list[np.ndarray]) -> tuple[list[np.ndarray], dict[int, float]]:
    """The components of the neighbour graph cut at threshold, with exact copies joined, that are more than one
    exact group; and each member's best similarity to another member."""
    index = service.index_of(record).index
    # exact copies have the same vector: one of each group asks for neighbours, for itself and the others
    others = np.sort(np.concatenate([group[1:] for group in same_hash])) if same_hash else np.zeros(0, np.int64)

    def wanted(ids: np.ndarray) -> np.ndarray:
        return ~np.isin(ids, others, assume_unique=False) if len(others) else np.ones(len(ids), dtype=bool)

    firsts, seconds, scores = [], [], []
    for queries, found, found_scores in index.similar_pairs(threshold, neighbours, wanted):
        firsts.append(queries)
        seconds.append(found)
        scores.append(found_scores)
    for group in same_hash:  # each copy joined to the group's first
        firsts.append(np.full(len(group) - 1, group[0], dtype=np.int64))
        seconds.append(group[1:])
        scores.append(np.ones(len(group) - 1, dtype=np.float32))
    if not firsts:
        return [], {}
    first, second, score = np.concatenate(firsts), np.concatenate(seconds), np.concatenate(scores)
    if not len(first):
        return [], {}
    nodes = np.unique(np.concatenate([first, second]))
    best_scores = np.full(len(nodes), -np.inf, dtype=np.float32)
    np.maximum.at(best_scores, np.searchsorted(nodes, first), score)
    np.maximum.at(best_scores, np.searchsorted(nodes, second), score)
    best = dict(zip(nodes.tolist(), best_scores.tolist()))
    group_of_copy = {int(i): number for number, group in enumerate(same_hash) for i in group}
    near = []
    for component in components(nodes, first, second):
        exact = {group_of_copy.get(int(i), ("alone", int(i))) for i in component}
        if len(exact) > 1:  # a component that is one exact group is listed as that exact group only
            near.append(component)
    return near, best


def _lookup(service: ImageSearch, record: DatasetRecord, vector_ids: list[int]) -> dict[int, ImageRecord]:
    images: dict[int, ImageRecord] = {}
    for start in range(0, max(1, len(vector_ids)), _LOOKUP_BATCH):
        batch = vector_ids[start:start + _LOOKUP_BATCH]
        found, generation = service.store.lookup_images(record.id, batch, uid=record.uid)
        if generation != record.generation or len(found) != len(batch):
            raise DatasetChangedError(f"Dataset '{record.name}' changed while it was being read; try again.")
        images.update(found)
    return images


def _as_groups(kind: str, groups: Iterable[np.ndarray], images: dict[int, ImageRecord], root: str,
               best: dict[int, float]) -> tuple[DuplicateGroup, ...]:
    made = []
    for group in groups:
        members = sorted((result_of(images[int(i)], best.get(int(i), 1.0), root) for i in group),
                         key=lambda member: member.path)
        made.append(DuplicateGroup(kind, tuple(members)))
    made.sort(key=lambda group: (-group.size, group.members[0].path))
    return tuple(made)
