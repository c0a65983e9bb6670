"""Exact copies in search results (collapse_duplicates): files with the same SHA-256 appear once, as the best
ranked of them, with the paths of the others.

Copies have the same bytes, hence the same vector and score, so they rank next to each other. A search that
collapses them asks the index for more than k (search/run.py doubles the depth until k distinct files came back or
there is nothing more to find) and then finds every copy of the files it keeps in the store: also those ranked
beyond the depth it searched, but only those the filter allows (each would otherwise have been a result too).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

import numpy as np

from ..vectors.base import AllowedIds

if TYPE_CHECKING:
    from ..store import DatasetRecord, ImageRecord, MetadataStore

Hit = tuple[int, float]  # (vector id, score)


def distinct_hits(row: Sequence[Hit], images: dict[int, ImageRecord]) -> list[Hit]:
    """The hits of one query with each file's copies after the first left out (files whose hashes were not
    captured yet are each their own)."""
    seen: set[str] = set()
    kept = []
    for vector_id, score in row:
        facts = images[vector_id].facts
        sha256 = facts.sha256 if facts is not None else None
        if sha256 is None or sha256 not in seen:
            kept.append((vector_id, score))
            if sha256 is not None:
                seen.add(sha256)
    return kept


def other_copies(store: MetadataStore, record: DatasetRecord, kept: list[ImageRecord],
                 allowed: AllowedIds | None) -> tuple[dict[int, tuple[str, ...]], int | None]:
    """The paths of the other copies of each kept image, by vector id (sorted; those `allowed`, when given), and
    the dataset's generation as the one query read it."""
    hashes = {image.facts.sha256 for image in kept if image.facts is not None and image.facts.sha256}
    copies, generation = store.lookup_copies(record.id, sorted(hashes), uid=record.uid)
    others = {}
    for image in kept:
        group = copies.get(image.facts.sha256, []) if image.facts is not None and image.facts.sha256 else []
        paths = sorted(path for vector_id, path in group
                       if vector_id != image.vector_id and (allowed is None or _allows(allowed, vector_id)))
        others[image.vector_id] = tuple(paths)
    return others, generation


def _allows(allowed: AllowedIds, vector_id: int) -> bool:
    position = int(np.searchsorted(allowed.ids, vector_id))
    return position < len(allowed.ids) and int(allowed.ids[position]) == vector_id
