"""What a search for duplicates returns: groups of exact copies and groups of near-copies, largest first."""

from __future__ import annotations

from dataclasses import dataclass, field

from ..search.results import SearchResult

EXACT = "exact"  # the same bytes: one SHA-256
NEAR = "near"  # embeddings at least the threshold apart: edited, resized, recompressed copies


@dataclass(frozen=True)
class DuplicateGroup:
    """Images that are copies of each other. Each member is a SearchResult whose score is its cosine similarity
    to the most similar other member (1.0 for exact copies), members ordered by path."""

    kind: str  # EXACT or NEAR
    members: tuple[SearchResult, ...]

    @property
    def size(self) -> int:
        return len(self.members)

    @property
    def sha256(self) -> str | None:
        """The SHA-256 all members share (exact groups); None for near-copies."""
        if self.kind != EXACT or self.members[0].facts is None:
            return None
        return self.members[0].facts.sha256

    def paths(self) -> list[str]:
        return [member.path for member in self.members]

    def to_dict(self) -> dict:
        return {"kind": self.kind, "size": self.size, "sha256": self.sha256,
                "members": [member.to_dict() for member in self.members]}


@dataclass(frozen=True)
class Duplicates:
    """The duplicates of one dataset, as found at found_at. exact_groups: images with the same SHA-256 (images
    ingested before hashes were captured, `unhashed`, take part only once the dataset is ingested again);
    near_groups: images linked by embeddings at least `threshold` similar (None when only exact copies were
    asked for), each holding more than one exact group or image."""

    dataset: str
    model: str
    images: int  # in the dataset
    threshold: float | None
    exact_groups: tuple[DuplicateGroup, ...]
    near_groups: tuple[DuplicateGroup, ...]
    unhashed: int
    seconds: float
    found_at: str  # ISO local time with its offset
    version: str = field(default="")  # of image_search

    @property
    def exact_only(self) -> bool:
        return self.threshold is None

    def to_dict(self) -> dict:
        return {"kind": "duplicates", "dataset": self.dataset, "model": self.model, "images": self.images,
                "threshold": self.threshold, "exact_only": self.exact_only, "unhashed": self.unhashed,
                "found_at": self.found_at, "version": self.version, "seconds": round(self.seconds, 3),
                "exact_groups": [group.to_dict() for group in self.exact_groups],
                "near_groups": [group.to_dict() for group in self.near_groups]}
