"""Committing an ingest: a dataset's next generation, made visible in one transaction.

start_generation journals the ingest and makes the working index (the committed one without the removed
vectors, or a new one); NewGeneration.add takes each batch of embedded files; commit_generation fits the index to
its size, writes it (sealed: vectors/seal.py) beside the old generation, commits the rows and the new generation
in one store transaction and removes the old files. Nothing is visible before that transaction: a crash before it
leaves the dataset as it was, a crash after it leaves the new state, and the next ingest of that name tidies
whatever the crash left behind (recover_interrupted).

A commit that fails for good (a full disk, another process's change) removes what it wrote and leaves the dataset
as it was. One that cannot reach the database waits for it up to COMMIT_WAIT_SECONDS (a PostgreSQL restart takes
seconds) and then keeps its work (ingest/kept.py) for the next ingest to commit, so finished embeddings are never
thrown away for a database that is down for a while.
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
from ..data_folder import check_room, size_in_words, writes_in
from ..errors import ImageSearchError, StoreUnreachableError
from ..pipeline.scan import FileEntry
from ..store import DatasetRecord, ImageFacts, ImageRecord, NewDataset
from ..vectors import VectorIndex
from . import kept
from .checkpoint import discard_checkpoints

# How long a commit waits for a database it cannot reach, trying every COMMIT_RETRY_SECONDS, before it keeps its
# work for the next ingest: a PostgreSQL restart takes a few seconds, a failover up to a minute.
COMMIT_WAIT_SECONDS = 120.0
COMMIT_RETRY_SECONDS = 2.0

if TYPE_CHECKING:
    from ..service import ImageSearch
    from .plan import Plan


def _pause_point(name: str) -> None:
    """Test hook: with IMAGE_SEARCH_TEST_PAUSE_AT=name, announce and wait here so a test can kill -9 us, or, with
    IMAGE_SEARCH_TEST_RESUME_FILE too, go on once that file exists (a test that stops a database meanwhile)."""
    if os.environ.get("IMAGE_SEARCH_TEST_PAUSE_AT") == name:
        print(f"PAUSED AT {name}", file=sys.stderr, flush=True)
        resume = os.environ.get("IMAGE_SEARCH_TEST_RESUME_FILE")
        deadline = time.monotonic() + 3600
        while time.monotonic() < deadline and not (resume and os.path.exists(resume)):
            time.sleep(0.1 if resume else 3600)


# -- interrupted ingests ----------------------------------------------------------------------------------------
def _journal_path(service: ImageSearch, name: str) -> Path:
    return service.data_home / "journal" / f"{name}.json"


def _write_journal(service: ImageSearch, name: str, entry: dict) -> None:
    path = _journal_path(service, name)
    with writes_in(service.data_home, f"starting the ingest of '{name}' (its journal)"):
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary = path.with_suffix(".tmp")
        try:
            temporary.write_text(json.dumps(entry))
            os.replace(temporary, path)
        finally:
            temporary.unlink(missing_ok=True)


def _roll_back_files(service: ImageSearch, uid: str, record: DatasetRecord | None) -> None:
    """Remove every index file of dataset uid but the committed generation's (all of them when record, the
    dataset as it is committed now, is None or another dataset)."""
    if record is None or record.uid != uid:
        vectors.layout.remove_dataset_folder(service.data_home, uid)
    else:
        vectors.layout.remove_other_generations(service.data_home, record.uid, record.generation)


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
        discard_checkpoints(service.data_home, name)  # they are in the committed generation
        message = (f"An earlier ingest of '{name}' (started {started}) was interrupted after it committed; "
                   "finished its clean-up.")
    else:
        _roll_back_files(service, entry["uid"], record)
        message = (f"An earlier ingest of '{name}' (started {started}) was interrupted before it committed; "
                   "rolled it back, the dataset is as it was before it.")
    path.unlink(missing_ok=True)
    kept.discard(service, name)
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
    notes: list[str] = field(default_factory=list)  # what the report should say about the commit

    def add(self, vectors_of_files: np.ndarray, files: Sequence[FileEntry],
            facts: Sequence[ImageFacts | None] = ()) -> list[ImageRecord]:
        """Add the vectors of these files (one row per file) under new vector ids, with what was captured about
        each file (facts aligned with files; empty: nothing captured); their records."""
        ids = range(self.next_id, self.next_id + len(files))
        facts = list(facts) or [None] * len(files)
        records = [ImageRecord(vector_id, entry.path, entry.size, entry.mtime_ns, entry.ctime_ns, entry.inode,
                               file_facts)
                   for vector_id, entry, file_facts in zip(ids, files, facts)]
        self.add_records(vectors_of_files, records)
        return records

    def add_records(self, vectors_of_files: np.ndarray, records: Sequence[ImageRecord]) -> None:
        """Add vectors under the ids their records carry (one row per record): new ones, or ones an interrupted
        ingest of the same base generation gave them (its checkpoints)."""
        if not records:
            return
        ids = np.fromiter((record.vector_id for record in records), dtype=np.int64, count=len(records))
        self.index.add(vectors_of_files, ids)
        self.added.extend(records)
        self.next_id = max(self.next_id, int(ids.max()) + 1)


def start_generation(service: ImageSearch, plan: Plan) -> NewGeneration:
    """The working index and the journal entry that lets a later ingest undo or finish this one."""
    existing = plan.existing
    if plan.incremental:
        index = plan.base_index.without(plan.removed_ids)
    else:
        index = vectors.new_index(plan.embedder.dim)
    # a full disk is refused before the embedding, not after it: the new index is written beside the old one and
    # takes at least a byte per dimension and 8 bytes of id per vector, whatever its kind
    count = plan.reused + len(plan.to_embed)
    check_room(service.data_home, f"the ingest of '{plan.name}' ({count} images; its new index is written beside "
               "the old one)", count * (plan.embedder.dim + 8))
    saved = plan.saved
    # a new dataset keeps the uid an interrupted ingest of it gave it, whose checkpoints this one goes on with
    uid = existing.uid if existing else (saved.owner.uid if saved.owner else uuid.uuid4().hex)
    base_generation = existing.generation if existing else 0
    # new ids go above every id in the checkpoints kept on disk, used here or not
    generation = NewGeneration(uid, base_generation, base_generation + 1, index,
                               max(existing.next_vector_id if existing else 1, saved.highest_id + 1))
    if saved.records:
        generation.add_records(saved.vectors, saved.records)
    _write_journal(service, plan.name, {"uid": uid, "base_generation": base_generation,
                                        "new_generation": generation.number, "pid": os.getpid(),
                                        "started": time.strftime("%Y-%m-%d %H:%M:%S")})
    return generation


def end_journal(service: ImageSearch, plan: Plan) -> None:
    """The ingest committed, or wrote nothing: its checkpoints and then its journal entry go (a crash between the
    two leaves the entry, and the next ingest finds the commit and removes the checkpoints)."""
    discard_checkpoints(service.data_home, plan.name)
    _journal_path(service, plan.name).unlink(missing_ok=True)


def commit_generation(service: ImageSearch, plan: Plan, generation: NewGeneration,
                      refreshed_facts: Sequence[tuple[int, ImageFacts]] = ()) -> bool:
    """Make the new generation the dataset's, in one transaction, with the facts filled in for kept rows
    (refreshed_facts: (vector_id, facts)); False when the index would not change (then only those facts are
    written, in one transaction, and the dataset keeps its generation)."""
    if plan.refreshed:  # rows from before change times were kept: filled in, no new generation needed
        service.store.record_file_identity(plan.existing.id, plan.refreshed)
    # the kind that suits the new size (or the one IMAGE_SEARCH_INDEX asks for); converting counts as a change
    fitted_index = vectors.fit(generation.index, service.settings.index.kind)
    if not (generation.added or plan.removed_ids or not plan.incremental or fitted_index is not generation.index):
        if refreshed_facts:  # the index stays as it is: no new generation, no index file to write
            service.store.refresh_facts(plan.existing, refreshed_facts)
        end_journal(service, plan)
        return False
    _pause_point("before-index-write")
    index_path = vectors.layout.index_file(service.data_home, generation.uid, generation.number)
    try:
        with writes_in(service.data_home, f"writing the index of dataset '{plan.name}'",
                       fitted_index.estimated_file_bytes()):
            vectors.seal.save_sealed(fitted_index, index_path, generation.uid, generation.number)
    except ImageSearchError:
        _give_up(service, plan, generation.uid)
        raise
    _pause_point("before-commit")
    embedder, kind = plan.embedder, fitted_index.kind
    target = (NewDataset(plan.name, generation.uid, embedder.name, embedder.dim, plan.root, kind)
              if plan.existing is None
              else replace(plan.existing, model=embedder.name, dim=embedder.dim, root=plan.root, index_kind=kind))
    commit = kept.Commit(dataset=target, base_generation=generation.base_generation,
                         new_generation=generation.number, added=generation.added, removed_ids=plan.removed_ids,
                         image_count=fitted_index.count, next_vector_id=generation.next_id,
                         refreshed_facts=list(refreshed_facts))
    try:
        waited = _commit_waiting(service, commit)
    except StoreUnreachableError as error:
        raise _kept_for_later(service, plan, commit, error) from None
    except ImageSearchError:  # refused for good (a full disk, another process's change): rolled back
        _give_up(service, plan, generation.uid)
        raise
    if waited:
        generation.notes.append(f"The database could not be reached for {waited:.0f} s at the commit; committed "
                                "once it was back.")
    _pause_point("after-commit")
    vectors.layout.remove_other_generations(service.data_home, generation.uid, generation.number)
    end_journal(service, plan)
    return True


def _give_up(service: ImageSearch, plan: Plan, uid: str) -> None:
    """The commit failed for good: the files this ingest wrote go, the dataset stays as it was."""
    _roll_back_files(service, uid, plan.existing)
    end_journal(service, plan)


def _commit_waiting(service: ImageSearch, commit: kept.Commit) -> float:
    """Commit, waiting for a database that cannot be reached (up to COMMIT_WAIT_SECONDS); the seconds waited."""
    started = time.monotonic()
    waited = False
    while True:
        try:
            service.store.commit_generation(**commit.arguments())
            return time.monotonic() - started if waited else 0.0
        except StoreUnreachableError:
            if time.monotonic() - started >= COMMIT_WAIT_SECONDS:
                raise
        waited = True
        time.sleep(COMMIT_RETRY_SECONDS)
        if kept.went_through(service, commit):  # the connection died after the transaction committed
            return time.monotonic() - started


def _kept_for_later(service: ImageSearch, plan: Plan, commit: kept.Commit,
                    error: StoreUnreachableError) -> StoreUnreachableError:
    """Keep the written index and the commit's rows for the next ingest; the error that says so."""
    problem = str(error).rstrip(".")
    count = len(commit.added)
    if kept.keep(service, plan.name, commit):
        return StoreUnreachableError(
            f"{problem}; waited {COMMIT_WAIT_SECONDS:.0f} s to commit the ingest of '{plan.name}' and kept its work "
            f"({count} newly embedded images, {size_in_words(kept.size(service, plan.name))} in the data folder): "
            "run the same ingest again once the database is back and it commits them without embedding again.")
    _give_up(service, plan, commit.dataset.uid)
    return StoreUnreachableError(f"{problem}; waited {COMMIT_WAIT_SECONDS:.0f} s to commit the ingest of "
                                 f"'{plan.name}', and its work could not be kept either (the data folder cannot "
                                 "be written), so nothing was changed: run the ingest again once the database is "
                                 "back.")
