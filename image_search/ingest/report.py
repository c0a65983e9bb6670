"""What an ingest did, for people (lines) and for programs (to_dict)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping

from ..errors import API_FIXES, Fix, spell
from ..pipeline.scan import printable


@dataclass
class IngestReport:
    dataset: str
    root: str
    model: str
    indexed: int = 0  # embedded in this run
    to_embed: int = 0  # new or changed files read for embedding (indexed, or skipped as unreadable)
    recovered_images: int = 0  # new or changed files whose vectors came from an interrupted ingest's checkpoints
    model_seconds: float = 0.0  # loading the model (about 0 when the process had it loaded already)
    embed_seconds: float = 0.0  # reading and embedding only (no model loading, scanning or committing)
    reused: int = 0  # unchanged since the last ingest, not embedded again
    removed: int = 0  # gone from the folder (or changed) since the last ingest
    facts_updated: int = 0  # unchanged images stored without hashes and EXIF that got them (not embedded again)
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (path, reason)
    ignored: int = 0  # files that are not images
    symlinks_skipped: int = 0
    total: int = 0  # images in the dataset afterwards
    seconds: float = 0.0
    created: bool = False
    changed: bool = False
    recovered: str | None = None  # what was done about an interrupted earlier ingest
    notes: list[str] = field(default_factory=list)  # checkpoints discarded or damaged, or not written; an index repaired, a wait
    checkpoints_written: int = 0  # chunks this run saved (ingest/checkpoint.py)
    content_changed: list[str] = field(default_factory=list)  # --verify: files whose SHA-256 differs from the one
    #                                                           recorded, under the same size and times
    checkpoint_seconds: float = 0.0  # spent writing them, on a thread beside the embedding

    @property
    def images_per_second(self) -> float:
        return self.indexed / self.embed_seconds if self.embed_seconds > 0 else 0.0

    def lines(self, max_skipped: int = 10, *, fixes: Mapping[Fix, str] = API_FIXES) -> list[str]:
        """The summary for people; fixes: how the face that shows it spells what they can do (errors.Fix)."""
        lines = []
        if self.recovered:
            lines.append(self.recovered)
        lines.extend(self.notes)
        if self.recovered_images:
            lines.append(f"Recovered {self.recovered_images} images that the interrupted ingest had embedded (from "
                         "its checkpoints); they were not embedded again.")
        verb = "Created" if self.created else ("Updated" if self.changed else "Checked")
        lines.append(f"{verb} dataset '{self.dataset}' from {self.root} with model {self.model}: "
                     f"{self.total} images in the dataset.")
        lines.append(f"Indexed {self.indexed} images in {self.seconds:.1f} s ({self._time_split()}); "
                     f"reused {self.reused} unchanged; removed {self.removed}.")
        if self.facts_updated:
            lines.append(f"Recorded the hashes and EXIF of {self.facts_updated} unchanged images indexed by an "
                         "earlier version (without embedding them again).")
        if self.skipped:
            lines.append(f"Skipped {len(self.skipped)} files that could not be read:")
            for path, reason in self.skipped[:max_skipped]:
                lines.append(f"  {printable(path)}: {reason}")
            if len(self.skipped) > max_skipped:
                lines.append(f"  ... and {len(self.skipped) - max_skipped} more")
        if self.ignored:
            lines.append(f"Ignored {self.ignored} files that are not images.")
        if self.symlinks_skipped:
            lines.append(f"Did not follow {self.symlinks_skipped} symbolic links "
                         f"({spell(Fix.FOLLOW_SYMLINKS, fixes)}).")
        return lines

    def _time_split(self) -> str:
        """Where the time went: model loading apart from embedding, and a rate only when images were embedded."""
        parts = [] if self.to_embed else [
            "nothing else to embed" if self.recovered_images else "nothing new or changed to embed"]
        if self.model_seconds >= 0.05:  # a server has its model loaded already: nothing to report
            parts.append(f"model loading {self.model_seconds:.1f} s")
        if self.indexed:
            parts.append(f"embedding {self.embed_seconds:.1f} s at {self.images_per_second:.1f} images/s")
        elif self.to_embed:
            parts.append(f"reading {self.embed_seconds:.1f} s, no file usable")
        return ", ".join(parts)

    def to_dict(self) -> dict:
        return {
            "dataset": self.dataset, "root": printable(self.root), "model": self.model, "indexed": self.indexed,
            "reused": self.reused, "removed": self.removed, "facts_updated": self.facts_updated, "total": self.total,
            "seconds": round(self.seconds, 3),
            "model_seconds": round(self.model_seconds, 3), "to_embed": self.to_embed,
            "embed_seconds": round(self.embed_seconds, 3),
            "images_per_second": round(self.images_per_second, 2) if self.indexed else None, "ignored": self.ignored,
            "skipped": [{"path": printable(p), "reason": r} for p, r in self.skipped],
            "symlinks_skipped": self.symlinks_skipped, "created": self.created, "changed": self.changed,
            "recovered": self.recovered, "recovered_images": self.recovered_images, "notes": list(self.notes),
            "checkpoints_written": self.checkpoints_written,
            "checkpoint_seconds": round(self.checkpoint_seconds, 3),
            "content_changed": [printable(p) for p in self.content_changed],
        }
