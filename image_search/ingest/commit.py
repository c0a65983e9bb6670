"""Committing an ingest: a dataset's next generation, made visible in one transaction.

start_generation journals the ingest and makes the working index (the committed one without the removed
vectors, or a new one); NewGeneration.add takes each batch of embedded files; commit_generation fits the index to
its size, writes it beside the old generation, commits the rows and the new generation in one store transaction
and removes the old files. Nothing is visible before that transaction: a crash before it leaves the dataset as it
was, a crash after it leaves the new state, and the next ingest of that name tidies whatever the crash left
behind (recover_interrupted).
"""

from __future__ import annotations

import json
import os
import sys
import time
import uuid
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import numpy as np

from .. import vectors
from ..pipeline.scan import FileEntry
from ..store import DatasetRecord, ImageFacts, ImageRecord, NewDataset
from ..vectors import VectorIndex

if TYPE_CHECKING:
    from ..service import ImageSearch
    from .plan import Plan


def _pause_point(name: str) -> None:
    """Test hook: with IMAGE_SEARCH_TEST_PAUSE_AT=name, announce and wait here so a test can kill -9 us."""
    if os.environ.get("IMAGE_SEARCH_TEST_PAUSE_AT") == name:
        print(f"PAUSED AT {name}", file=sys.stderr, flush=True)
        time.sleep(3600)


# -- interrupted ingests ----------------------------------------------------------------------------------------
def _journal_path(service: ImageSearch, name: str) -> Path:
    return service.data_home / "journal" / f"{name}.json"


def _write_journal(service: ImageSearch, name: str, entry: dict) -> None:
    path = _journal_path(service, name)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_suffix(".tmp")
    temporary.write_text(json.dumps(entry))
    os.replace(temporary, path)


def recover_interrupted(service: ImageSearch, name: str, record: DatasetRecord | None) -> str | None:
    """Finish or roll back an ingest of this dataset that was killed; say which. Caller holds the lock; record is
    the dataset's row as it is now (None: there is none)."""
    path = _journal_path(service, name)
    try:
        entry = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        path.unlink(missing_ok=True)
        return None
    started = entry.get("started", "an earlier time")
    if record is not None and record.uid == entry["uid"] and record.generation == entry["new_generation"]:
        vectors.layout.remove_other_generations(service.data_home, record.uid, record.generation)
        message = (f"An earlier ingest of '{name}' (started {started}) was interrupted after it committed; "
                   "finished its clean-up.")
    else:
        if record is None or record.uid != entry["uid"]:
            vectors.layout.remove_dataset_folder(service.data_home, entry["uid"])
        else:
            vectors.layout.remove_other_generations(service.data_home, record.uid, record.generation)
        message = (f"An earlier ingest of '{name}' (started {started}) was interrupted before it committed; "
                   "rolled it back, the dataset is as it was before it.")
    path.unlink(missing_ok=True)
    return message


# -- the next generation ----------------------------------------------------------------------------------------
@dataclass
class NewGeneration:
    uid: str
    base_generation: int  # the committed generation it replaces (0: the dataset is new)
    number: int
    index: VectorIndex  # the working index: what the committed one keeps, plus every batch added
    next_id: int  # the next unused vector id
    added: list[ImageRecord] = field(default_factory=list)

    def add(self, vectors_of_files: np.ndarray, files: Sequence[FileEntry],
            facts: Sequence[ImageFacts | None] = ()) -> None:
        """Add the vectors of these files (one row per file) under new vector ids, with what was captured about
        each file (facts aligned with files; empty: nothing captured)."""
        ids = np.arange(self.next_id, self.next_id + len(files), dtype=np.int64)
        self.next_id += len(files)
        self.index.add(vectors_of_files, ids)
        facts = list(facts) or [None] * len(files)
        self.added.extend(ImageRecord(vector_id, entry.path, entry.size, entry.mtime_ns, file_facts)
                          for vector_id, entry, file_facts in zip(ids.tolist(), files, facts))


def start_generation(service: ImageSearch, plan: Plan) -> NewGeneration:
    """The working index and the journal entry that lets a later ingest undo or finish this one."""
    existing = plan.existing
    if plan.incremental:
        index = service.index_of(existing).index.without(plan.removed_ids)
    else:
        index = vectors.new_index(plan.embedder.dim)
    uid = existing.uid if existing else uuid.uuid4().hex
    base_generation = existing.generation if existing else 0
    generation = NewGeneration(uid, base_generation, base_generation + 1, index,
                               existing.next_vector_id if existing else 1)
    _write_journal(service, plan.name, {"uid": uid, "base_generation": base_generation,
                                        "new_generation": generation.number, "pid": os.getpid(),
                                        "started": time.strftime("%Y-%m-%d %H:%M:%S")})
    return generation


def end_journal(service: ImageSearch, plan: Plan) -> None:
    """The ingest committed, or wrote nothing: its journal entry goes."""
    _journal_path(service, plan.name).unlink(missing_ok=True)


def commit_generation(service: ImageSearch, plan: Plan, generation: NewGeneration,
                      refreshed_facts: Sequence[tuple[int, ImageFacts]] = ()) -> bool:
    """Make the new generation the dataset's, in one transaction, with the facts filled in for kept rows
    (refreshed_facts: (vector_id, facts)); False when the index would not change (then only those facts are
    written, in one transaction, and the dataset keeps its generation)."""
    # the kind that suits the new size (or the one IMAGE_SEARCH_INDEX asks for); converting counts as a change
    fitted_index = vectors.fit(generation.index, service.settings.index.kind)
    if not (generation.added or plan.removed_ids or not plan.incremental or fitted_index is not generation.index):
        if refreshed_facts:  # the index stays as it is: no new generation, no index file to write
            service.store.refresh_facts(plan.existing, refreshed_facts)
        end_journal(service, plan)
        return False
    _pause_point("before-index-write")
    fitted_index.save(vectors.layout.index_file(service.data_home, generation.uid, generation.number))
    _pause_point("before-commit")
    embedder, kind = plan.embedder, fitted_index.kind
    target = (NewDataset(plan.name, generation.uid, embedder.name, embedder.dim, plan.root, kind)
              if plan.existing is None
              else replace(plan.existing, model=embedder.name, dim=embedder.dim, root=plan.root, index_kind=kind))
    service.store.commit_generation(dataset=target, base_generation=generation.base_generation,
                                    new_generation=generation.number, added=generation.added,
                                    removed_ids=plan.removed_ids, image_count=fitted_index.count,
                                    next_vector_id=generation.next_id, refreshed_facts=refreshed_facts)
    _pause_point("after-commit")
    vectors.layout.remove_other_generations(service.data_home, generation.uid, generation.number)
    end_journal(service, plan)
    return True
