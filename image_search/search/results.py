"""What a search returns: one SearchResult per image found, best first."""

from __future__ import annotations

import os
from dataclasses import dataclass

from ..pipeline.scan import printable


@dataclass(frozen=True)
class SearchResult:
    path: str  # absolute
    score: float  # cosine similarity
    title: str  # the path relative to the dataset's folder

    def to_dict(self) -> dict:
        return {"path": printable(self.path), "score": round(self.score, 6), "title": printable(self.title)}


def title_of(path: str, root: str) -> str:
    """The path inside the dataset's folder, or the file name for a path outside it."""
    try:
        relative = os.path.relpath(path, root)
    except ValueError:
        return os.path.basename(path)
    return os.path.basename(path) if relative.startswith("..") else relative
