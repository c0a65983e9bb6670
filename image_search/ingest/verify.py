"""An ingest's --verify: whether the files it would keep as unchanged (the same size, times and inode) still hold
the bytes that were embedded, by their SHA-256 against the one recorded when they were ingested (pipeline/facts.py).

Size, modification time, inode and change time catch every change a program makes through the file system; a
disk image edited offline, or a file system restored with its metadata, can change content under all four. Reading
every file costs what reading them for an ingest costs (about 1.3 GB/s of hashing on the 2-core machine, plus the
disk), so it is asked for, not done by default. A file whose content changed is embedded again; one that cannot be
read now, or has no recorded SHA-256 (ingested before hashes were kept, or with capture off), is counted and kept.
"""

from __future__ import annotations

import hashlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Mapping, Sequence

from ..pipeline.safe_open import open_scanned_file
from ..pipeline.scan import FileEntry, printable
from ..runtime.threads import usable_cores
from ..store import ImageRecord

_BLOCK = 1 << 20
# Threads that read and hash: hashlib and file reads let go of the GIL, so a few overlap the disk's latency.
_THREADS = 4


@dataclass
class Verification:
    checked: int = 0  # files whose SHA-256 was compared
    changed: list[str] = field(default_factory=list)  # paths whose content is not what was embedded
    changed_ids: set[int] = field(default_factory=set)  # their vector ids
    without_hash: int = 0  # files with no recorded SHA-256 to compare with
    unreadable: list[tuple[str, str]] = field(default_factory=list)  # (path, reason): kept, not verified

    def lines(self, shown: int = 10) -> list[str]:
        lines = [f"Verified {self.checked} unchanged files against their recorded SHA-256: "
                 + (f"{len(self.changed)} had new content under the same size and times and were embedded again."
                    if self.changed else "all hold the content that was embedded.")]
        lines.extend(f"  {printable(path)}" for path in self.changed[:shown])
        if len(self.changed) > shown:
            lines.append(f"  ... and {len(self.changed) - shown} more")
        if self.without_hash:
            lines.append(f"{self.without_hash} unchanged files have no recorded SHA-256 (ingested before hashes were "
                         "kept) and could not be verified.")
        if self.unreadable:
            path, reason = self.unreadable[0]
            lines.append(f"{len(self.unreadable)} unchanged files could not be read to verify them (first: "
                         f"{printable(path)}: {reason}); they were kept as they are.")
        return lines


def sha256_of_file(path: str) -> str:
    """The SHA-256 of a file the scan found, read as the ingest's readers read it (pipeline/safe_open.py)."""
    digest = hashlib.sha256()
    with open_scanned_file(path) as handle:
        while block := handle.read(_BLOCK):
            digest.update(block)
    return digest.hexdigest()


def verify_unchanged(kept: Sequence[tuple[ImageRecord, FileEntry]], recorded: Mapping[int, str]) -> Verification:
    """Compare each kept file's SHA-256 with the one recorded for its vector id."""
    result = Verification()
    to_hash = [(record, entry) for record, entry in kept if recorded.get(record.vector_id)]
    result.without_hash = len(kept) - len(to_hash)

    def outcome(pair):
        record, entry = pair
        try:
            return record, entry, sha256_of_file(entry.read_path), None
        except OSError as error:
            return record, entry, None, error.strerror or str(error)

    with ThreadPoolExecutor(max_workers=min(_THREADS, usable_cores()),
                            thread_name_prefix="verify") as pool:
        for record, entry, sha256, problem in pool.map(outcome, to_hash):
            if problem is not None:
                result.unreadable.append((entry.path, problem))
                continue
            result.checked += 1
            if sha256 != recorded[record.vector_id]:
                result.changed.append(entry.path)
                result.changed_ids.add(record.vector_id)
    return result
