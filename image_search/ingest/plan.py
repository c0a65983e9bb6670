"""Planning an ingest: what the folder holds against what the dataset has.

The caller holds the dataset's lock. make_plan reads the dataset's row once (every later step takes it from the
plan), finishes or rolls back an earlier ingest of it that was killed, chooses the model by the one model-match
rule (image_search/search/query.py), loads it, and sorts the folder's files into unchanged (same size and
modification time: their vectors are kept), new or changed (to embed) and gone (their vectors are removed).
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..access.roots import check_allowed
from ..errors import Fix, InvalidInputError
from ..pipeline.scan import FileEntry, ScanResult, printable, scan_folder
from ..models import Embedder
from ..search.query import dataset_model
from ..store import DatasetRecord
from .commit import recover_interrupted

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
    to_embed: list[FileEntry]  # new or changed files (every file for a new dataset or a rebuild)
    reused: int  # unchanged files, whose vectors are kept
    removed_ids: list[int]  # vectors of files gone or changed (every vector, on a rebuild)

    @property
    def incremental(self) -> bool:
        """Whether the dataset's committed index is kept and updated (else the index is built anew)."""
        return self.existing is not None and not self.rebuild


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
              follow_symlinks: bool) -> Plan:
    existing = service.store.get_dataset(name)  # the one read of the dataset's row
    recovered = recover_interrupted(service, name, existing)
    model = choose_model(service, root, existing, model_name, rebuild)
    model_started = time.perf_counter()
    embedder = service.model(model)
    model_seconds = time.perf_counter() - model_started

    scan = scan_folder(root, follow_symlinks=follow_symlinks)
    incremental = existing is not None and not rebuild
    known = {r.path: r for r in service.store.image_records(existing.id)} if incremental else {}
    keep_ids: set[int] = set()
    to_embed = []
    for entry in scan.files:
        record = known.get(entry.path)
        if record is not None and record.size == entry.size and record.mtime_ns == entry.mtime_ns:
            keep_ids.add(record.vector_id)
        else:
            to_embed.append(entry)
    removed_ids = [r.vector_id for r in known.values() if r.vector_id not in keep_ids]
    if existing is not None and rebuild:
        removed_ids = service.store.vector_ids(existing.id)
    return Plan(name=name, root=root, existing=existing, rebuild=rebuild, embedder=embedder,
                model_seconds=model_seconds, recovered=recovered, scan=scan, to_embed=to_embed,
                reused=len(keep_ids), removed_ids=removed_ids)
