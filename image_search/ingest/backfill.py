"""Filling in the facts of unchanged images that were stored without them: rows written before schema version 3
(by an image-search that captured nothing), or by an embedding runner that captured none.

Their vectors are kept; each file is read once more, hashed and its header parsed (pipeline/facts.py), and the
facts go into the ingest's one commit transaction. No pixel is decoded and nothing is embedded, so it runs on
threads: reading and hashing let go of the GIL, and parsing a header is a small part of the work.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Sequence

from ..pipeline.batches import progress_bar
from ..pipeline.decode import NotAnImage, UnreadableImage, read_image_file
from ..pipeline.facts import facts_from_bytes
from ..pipeline.scan import FileEntry
from ..runtime.threads import usable_cores
from ..store import ImageFacts

CHUNK = 256  # files in flight at once: bounds memory (their bytes) however many files need facts


def facts_of_file(path: str) -> ImageFacts | None:
    """The facts of one file, or None when it cannot be read now (its row keeps NULL facts, tried next time)."""
    try:
        data, _ = read_image_file(path, scanned=True)  # a path the scan found, opened safely (safe_open.py)
    except (NotAnImage, UnreadableImage):
        return None
    return facts_from_bytes(data)


def backfill_facts(missing: Sequence[tuple[int, FileEntry]], *, workers: int | None = None,
                   progress: bool = False) -> list[tuple[int, ImageFacts]]:
    """(vector_id, facts) for each (vector_id, file) whose file could be read."""
    if not missing:
        return []
    found: list[tuple[int, ImageFacts]] = []
    bar = progress_bar(len(missing), progress, "Recording hashes and EXIF")
    try:
        with ThreadPoolExecutor(max_workers=workers or usable_cores(),
                                thread_name_prefix="facts") as pool:
            for start in range(0, len(missing), CHUNK):
                chunk = missing[start:start + CHUNK]
                for (vector_id, _), facts in zip(chunk, pool.map(facts_of_file, [e.read_path for _, e in chunk])):
                    if facts is not None:
                        found.append((vector_id, facts))
                bar.update(len(chunk))
    finally:
        bar.close()
    return found
