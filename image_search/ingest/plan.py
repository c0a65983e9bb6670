"""Planning an ingest: what the folder holds against what the dataset has.

The caller holds the dataset's lock. make_plan reads the dataset's row once (every later step takes it from the
plan), finishes or rolls back an earlier ingest of it that was killed, chooses the model by the one model-match
rule (image_search/search/query.py), loads it, checks the committed index (a damaged one is repaired by embedding
every file again: the store has the files), and sorts the folder's files into unchanged (their vectors are
kept: see unchanged()), new or changed (to embed) and gone (their vectors are removed); of the unchanged ones,
those stored without facts (before schema 3) are read for their facts only (backfill.py). Of the files to embed,
those an interrupted ingest of the same dataset state had embedded, and that are unchanged since, come from its
checkpoints (checkpoint.py) instead.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

import numpy as np

from ..access.roots import check_allowed
from ..config import capture_requested
from ..errors import Fix, IndexCorruptError, InvalidInputError
from ..pipeline.scan import FileEntry, ScanResult, printable, scan_folder
from ..models import Embedder
from ..search.query import dataset_model
from ..store import DatasetRecord, ImageRecord
from ..vectors import VectorIndex
from . import kept
from .checkpoint import SavedWork, checkpoint_folder, discard_checkpoints, read_saved_work
from .commit import recover_interrupted
from .verify import Verification, verify_unchanged

if TYPE_CHECKING:
    from ..service import ImageSearch


@dataclass
class Plan:
    name: str
    root: str  # the folder, absolute and with links resolved
    existing: DatasetRecord | None  # the dataset's row as this ingest found it; None: the dataset is new
    rebuild: bool
    embedder: Embedder
    model_seconds: float  # loading the model (about 0 when the process had it loaded already)
    recovered: str | None  # what was done about an interrupted earlier ingest
    scan: ScanResult
    to_embed: list[FileEntry]  # new or changed files (every file for a new dataset or a rebuild), less `saved`'s
    reused: int  # unchanged files, whose vectors are kept
    removed_ids: list[int]  # vectors of files gone or changed (every vector, on a rebuild)
    # unchanged files whose rows have no facts (written before schema 3): (vector_id, file), filled in by backfill
    facts_missing: list[tuple[int, FileEntry]] = field(default_factory=list)
    saved: SavedWork = field(default_factory=SavedWork)  # of the files to embed, those checkpoints hold
    base_index: VectorIndex | None = None  # the committed index, checked, that an incremental ingest updates
    repair: str | None = None  # why the committed index cannot be used (then every file is embedded again)
    refreshed: list[tuple[int, int, int]] = field(default_factory=list)  # (vector_id, ctime_ns, inode) to fill
    #                                                                      in for kept rows that lack them
    verification: Verification | None = None  # what --verify found among the unchanged files

    @property
    def incremental(self) -> bool:
        """Whether the dataset's committed index is kept and updated (else the index is built anew)."""
        return self.existing is not None and not self.rebuild and self.repair is None


def unchanged(record: ImageRecord, entry: FileEntry) -> bool:
    """Whether a file is the one the dataset embedded: same size and modification time and, where the row has
    them, the same inode and change time. Content rewritten with its old size and time restored (a tool that keeps
    times, an edit meant to hide) gets a new change time, which no program can set back; rows written before
    change times were kept match on size and time, and get theirs filled in (Plan.refreshed)."""
    if record.size != entry.size or record.mtime_ns != entry.mtime_ns:
        return False
    if record.ctime_ns is None or record.inode is None:
        return True
    return record.ctime_ns == entry.ctime_ns and record.inode == entry.inode


def ids_problem(existing: DatasetRecord, index: VectorIndex, records) -> str | None:
    """What is wrong when the committed index does not hold exactly the vector ids the metadata lists (an index
    file without a seal, from a release before seals, that was trusted on loading: vectors/seal.py)."""
    stored = np.sort(index.stored_ids())
    listed = np.sort(np.fromiter((r.vector_id for r in records), dtype=np.int64))
    if np.array_equal(stored, listed):
        return None
    differ = len(np.setxor1d(stored, listed))
    return (f"The index of dataset '{existing.name}' holds other vector ids than its metadata lists ({differ} "
            "differ), so its file is not this dataset's current one.")


def committed_index(service: ImageSearch, existing: DatasetRecord) -> tuple[VectorIndex | None, str | None]:
    """The dataset's committed index, checked against its metadata and its seal; or (None, what is wrong with it)
    when it is missing, damaged or not this dataset's (then the ingest embeds everything again)."""
    try:
        return service.index_of(existing).index, None
    except IndexCorruptError as error:
        return None, error.problem


def check_input_folder(input_dir, allowed_roots: tuple[str, ...] = ()) -> str:
    """The folder to ingest, absolute with its links resolved, after checking that it may be read (allowed_roots:
    before anything is said about what is there) and is a readable folder."""
    if not input_dir or not str(input_dir).strip():
        raise InvalidInputError("No input folder was given; pass the folder of images to ingest.")
    check_allowed(input_dir, allowed_roots, "input folder")
    folder = os.path.abspath(os.path.expanduser(str(input_dir)))
    if not os.path.exists(folder):
        raise InvalidInputError(f"The input folder {printable(folder)} does not exist; check the path.")
    if not os.path.isdir(folder):
        raise InvalidInputError(f"The input path {printable(folder)} is a file, not a folder; give the folder "
                                "that holds the images.")
    try:
        with os.scandir(folder):
            pass
    except PermissionError:
        raise InvalidInputError(f"The input folder {printable(folder)} cannot be read (permission denied).") from None
    return os.path.realpath(folder)


def choose_model(service: ImageSearch, root: str, existing: DatasetRecord | None, requested: str | None,
                 rebuild: bool) -> str:
    """The model of this ingest: a new dataset's is the one asked for or the default; an existing one keeps its
    own (dataset_model), unless it is rebuilt, which may switch."""
    if existing is None:
        return requested or service.settings.default_model
    if rebuild:
        return requested or existing.model
    if existing.root != root:
        raise InvalidInputError(f"Dataset '{existing.name}' was built from {printable(existing.root)}, not "
                                f"{printable(root)}.", fix=Fix.REBUILD_WITH_FOLDER)
    return dataset_model(existing, requested, for_ingest=True)


def make_plan(service: ImageSearch, root: str, name: str, *, model_name: str | None, rebuild: bool,
              follow_symlinks: bool, verify: bool = False) -> Plan:
    """verify: compare the SHA-256 of every unchanged file with the recorded one (verify.py); those that differ
    are embedded again."""
    existing = service.store.get_dataset(name)  # the one read of the dataset's row
    finished = kept.finish(service, name, existing)  # work an earlier ingest kept for a database that was down
    if finished is not None:
        existing, recovered = finished
    else:
        recovered = recover_interrupted(service, name, existing)
    model = choose_model(service, root, existing, model_name, rebuild)
    model_started = time.perf_counter()
    embedder = service.model(model)
    model_seconds = time.perf_counter() - model_started

    base_index, repair = committed_index(service, existing) if existing is not None and not rebuild else (None, None)
    scan = scan_folder(root, follow_symlinks=follow_symlinks)
    incremental = existing is not None and not rebuild and repair is None
    known = {r.path: r for r in service.store.image_records(existing.id)} if incremental else {}
    if incremental:
        repair = ids_problem(existing, base_index, known.values())
        if repair is not None:
            incremental, known, base_index = False, {}, None
    without_facts = service.store.vector_ids_without_facts(existing.id) if incremental and capture_requested() \
        else set()
    same, to_embed = [], []  # (record, file) of the unchanged files; the files to embed
    for entry in scan.files:
        record = known.get(entry.path)
        if record is not None and unchanged(record, entry):
            same.append((record, entry))
        else:
            to_embed.append(entry)
    verification = verify_unchanged(same, service.store.recorded_sha256(existing.id)) if verify and same else None
    if verification is not None and verification.changed_ids:
        changed = verification.changed_ids
        to_embed = sorted(to_embed + [entry for record, entry in same if record.vector_id in changed],
                          key=lambda entry: os.fsencode(entry.path))
        same = [(record, entry) for record, entry in same if record.vector_id not in changed]
    keep_ids = {record.vector_id for record, _ in same}
    facts_missing = [(record.vector_id, entry) for record, entry in same if record.vector_id in without_facts]
    refreshed = [(record.vector_id, entry.ctime_ns, entry.inode) for record, entry in same
                 if record.inode is None and entry.inode is not None]
    removed_ids = [r.vector_id for r in known.values() if r.vector_id not in keep_ids]
    if existing is not None and not incremental:
        removed_ids = service.store.vector_ids(existing.id)
    saved = resume(service, name, existing, rebuild, embedder, root, to_embed)
    if saved.records:
        recovered_paths = {record.path for record in saved.records}
        to_embed = [entry for entry in to_embed if entry.path not in recovered_paths]
    return Plan(name=name, root=root, existing=existing, rebuild=rebuild, embedder=embedder,
                model_seconds=model_seconds, recovered=recovered, scan=scan, to_embed=to_embed,
                reused=len(keep_ids), removed_ids=removed_ids, facts_missing=facts_missing, saved=saved,
                base_index=base_index, repair=repair, refreshed=refreshed, verification=verification)


def resume(service: ImageSearch, name: str, existing: DatasetRecord | None, rebuild: bool, embedder: Embedder,
           root: str, to_embed: list[FileEntry]) -> SavedWork:
    """What the checkpoints of an interrupted ingest hold of the files to embed, unchanged since (a rebuild starts
    over: it discards them)."""
    if rebuild:
        if checkpoint_folder(service.data_home, name).is_dir():
            discard_checkpoints(service.data_home, name)
            return SavedWork(notes=[f"Discarded the checkpoints of an interrupted ingest of '{name}': a rebuild "
                                    "embeds everything again."])
        return SavedWork()
    saved = read_saved_work(service.data_home, name, existing, model=embedder.name, dim=embedder.dim, root=root)
    if not saved.records:
        return saved
    wanted = {entry.path: entry for entry in to_embed}
    keep = [i for i, record in enumerate(saved.records)
            if record.path in wanted and unchanged(record, wanted[record.path])]
    stale = len(saved.records) - len(keep)
    notes = list(saved.notes)
    if stale:
        notes.append(f"{stale} of the images in the checkpoints of '{name}' have changed or gone since; the ones "
                     "still there are embedded again.")
    return replace(saved, records=[saved.records[i] for i in keep], vectors=saved.vectors[keep], notes=notes)
