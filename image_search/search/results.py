"""What a search returns: one SearchResult per image found, best first, with what the ingest captured about it."""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import datetime
from typing import Optional

from ..pipeline.scan import printable
from ..store.records import ImageFacts


@dataclass(frozen=True)
class SearchResult:
    path: str  # absolute
    score: float  # cosine similarity
    title: str  # the path relative to the dataset's folder
    size: Optional[int] = None  # bytes, as the last ingest saw the file
    mtime_ns: Optional[int] = None  # modification time, as the last ingest saw it
    facts: Optional[ImageFacts] = None  # hashes, pixels and EXIF (None: not captured yet)
    duplicates: tuple[str, ...] = ()  # other paths with the same SHA-256 (only when duplicates are collapsed)

    @property
    def date_taken(self) -> Optional[str]:
        """When the picture was taken, as ISO local time: EXIF DateTimeOriginal, else the file's modification time
        in this machine's time zone (date_source says which)."""
        if self.facts is not None and self.facts.taken_at:
            return self.facts.taken_at
        if self.mtime_ns is None:
            return None
        return datetime.fromtimestamp(self.mtime_ns / 1e9).isoformat(timespec="seconds")

    @property
    def date_source(self) -> Optional[str]:
        """'exif' or 'modified': where date_taken comes from (None when there is no date)."""
        if self.facts is not None and self.facts.taken_at:
            return "exif"
        return "modified" if self.mtime_ns is not None else None

    @property
    def camera(self) -> Optional[str]:
        """'Make Model' as EXIF names them; the make once when the model repeats it ('Canon Canon EOS 5D' is
        written by Canon's cameras)."""
        if self.facts is None:
            return None
        make, model = (self.facts.camera_make or "").strip(), (self.facts.camera_model or "").strip()
        if make and model.lower().startswith(make.lower()):
            make = ""
        return " ".join(part for part in (make, model) if part) or None

    def to_dict(self) -> dict:
        facts = self.facts or ImageFacts()
        gps = ({"lat": facts.gps_lat, "lon": facts.gps_lon}
               if facts.gps_lat is not None and facts.gps_lon is not None else None)
        return {"path": printable(self.path), "title": printable(self.title), "score": round(self.score, 6),
                "sha256": facts.sha256, "md5": facts.md5, "size": self.size, "width": facts.width,
                "height": facts.height, "format": facts.format, "date_taken": self.date_taken,
                "date_source": self.date_source, "camera": self.camera, "lens": facts.lens, "gps": gps,
                "orientation": facts.orientation, "duplicates": [printable(p) for p in self.duplicates],
                "duplicate_count": len(self.duplicates)}


def title_of(path: str, root: str) -> str:
    """The path inside the dataset's folder, or the file name for a path outside it."""
    try:
        relative = os.path.relpath(path, root)
    except ValueError:
        return os.path.basename(path)
    return os.path.basename(path) if relative.startswith("..") else relative


class SearchResults(list):
    """One query's SearchResults, best first, and `note`: why there are none (or fewer than asked for), as one
    sentence for people, e.g. that no image passes the filters; None when there is nothing to say."""

    def __init__(self, results=(), note: str | None = None) -> None:
        super().__init__(results)
        self.note = note
