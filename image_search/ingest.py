"""Ingesting a folder into a dataset: find files, embed what is new or changed, commit one new generation.

Re-ingesting the same folder is incremental: unchanged files (same size and modification time) keep their
vectors, new and changed files are embedded, vanished files are removed. Nothing becomes visible until the final
commit; a crash before it leaves the dataset as it was, a crash after it leaves the new state, and the next ingest
of that name tidies whatever the crash left behind (see recover_interrupted).
"""

from __future__ import annotations

import json
import os
import sys
import time
import uuid
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from . import vectors
from .config import DEFAULT_MODEL
from .errors import InvalidInputError, ModelMismatchError
from .files import printable, scan_folder
from .models import parse_model_name
from .names import validate_dataset_name
from .embedding import embed_files
from .store import DatasetRecord, ImageRecord, NewDataset

if TYPE_CHECKING:
    from .service import ImageSearch


@dataclass
class IngestReport:
    dataset: str
    root: str
    model: str
    indexed: int = 0  # embedded in this run
    to_embed: int = 0  # new or changed files read for embedding (indexed, or skipped as unreadable)
    model_seconds: float = 0.0  # loading the model (about 0 when the process had it loaded already)
    embed_seconds: float = 0.0  # reading and embedding only (no model loading, scanning or committing)
    reused: int = 0  # unchanged since the last ingest, not embedded again
    removed: int = 0  # gone from the folder (or changed) since the last ingest
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (path, reason)
    ignored: int = 0  # files that are not images
    symlinks_skipped: int = 0
    total: int = 0  # images in the dataset afterwards
    seconds: float = 0.0
    created: bool = False
    changed: bool = False
    recovered: str | None = None

    @property
    def images_per_second(self) -> float:
        return self.indexed / self.embed_seconds if self.embed_seconds > 0 else 0.0

    def lines(self, max_skipped: int = 10) -> list[str]:
        lines = []
        if self.recovered:
            lines.append(self.recovered)
        verb = "Created" if self.created else ("Updated" if self.changed else "Checked")
        lines.append(f"{verb} dataset '{self.dataset}' from {self.root} with model {self.model}: "
                     f"{self.total} images in the dataset.")
        lines.append(f"Indexed {self.indexed} images in {self.seconds:.1f} s ({self._time_split()}); "
                     f"reused {self.reused} unchanged; removed {self.removed}.")
        if self.skipped:
            lines.append(f"Skipped {len(self.skipped)} files that could not be read:")
            for path, reason in self.skipped[:max_skipped]:
                lines.append(f"  {printable(path)}: {reason}")
            if len(self.skipped) > max_skipped:
                lines.append(f"  ... and {len(self.skipped) - max_skipped} more")
        if self.ignored:
            lines.append(f"Ignored {self.ignored} files that are not images.")
        if self.symlinks_skipped:
            lines.append(f"Did not follow {self.symlinks_skipped} symbolic links (use --follow-symlinks to follow "
                         "links that stay inside the folder).")
        return lines

    def _time_split(self) -> str:
        """Where the time went: model loading apart from embedding, and a rate only when images were embedded."""
        parts = [] if self.to_embed else ["nothing new or changed to embed"]
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
            "reused": self.reused, "removed": self.removed, "total": self.total, "seconds": round(self.seconds, 3),
            "model_seconds": round(self.model_seconds, 3), "to_embed": self.to_embed,
            "embed_seconds": round(self.embed_seconds, 3),
            "images_per_second": round(self.images_per_second, 2) if self.indexed else None, "ignored": self.ignored,
            "skipped": [{"path": printable(p), "reason": r} for p, r in self.skipped],
            "symlinks_skipped": self.symlinks_skipped, "created": self.created, "changed": self.changed,
            "recovered": self.recovered,
        }


def _pause_point(name: str) -> None:
    """Test hook: with IMAGE_SEARCH_TEST_PAUSE_AT=name, announce and wait here so a test can kill -9 us."""
    if os.environ.get("IMAGE_SEARCH_TEST_PAUSE_AT") == name:
        print(f"PAUSED AT {name}", file=sys.stderr, flush=True)
        time.sleep(3600)


# -- interrupted ingests ----------------------------------------------------------------------------------------
def _journal_path(engine: ImageSearch, name: str) -> Path:
    return engine.data_home / "journal" / f"{name}.json"


def _write_journal(engine: ImageSearch, name: str, entry: dict) -> None:
    path = _journal_path(engine, name)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_suffix(".tmp")
    temporary.write_text(json.dumps(entry))
    os.replace(temporary, path)


def recover_interrupted(engine: ImageSearch, name: str) -> str | None:
    """Finish or roll back an ingest of this dataset that was killed; say which. Caller holds the lock."""
    path = _journal_path(engine, name)
    try:
        entry = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        path.unlink(missing_ok=True)
        return None
    record = engine.store.get_dataset(name)
    started = entry.get("started", "an earlier time")
    if record is not None and record.uid == entry["uid"] and record.generation == entry["new_generation"]:
        vectors.layout.remove_other_generations(engine.data_home, record.uid, record.generation)
        message = (f"An earlier ingest of '{name}' (started {started}) was interrupted after it committed; "
                   "finished its clean-up.")
    else:
        if record is None or record.uid != entry["uid"]:
            vectors.layout.remove_dataset_folder(engine.data_home, entry["uid"])
        else:
            vectors.layout.remove_other_generations(engine.data_home, record.uid, record.generation)
        message = (f"An earlier ingest of '{name}' (started {started}) was interrupted before it committed; "
                   "rolled it back, the dataset is as it was before it.")
    path.unlink(missing_ok=True)
    return message


# -- ingest -----------------------------------------------------------------------------------------------------
def check_input_folder(input_dir) -> str:
    if not input_dir or not str(input_dir).strip():
        raise InvalidInputError("No input folder was given; pass the folder of images to ingest.")
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


def ingest_folder(engine: ImageSearch, input_dir, name: str, *, model_name: str | None = None,
                  batch_size: int | None = None, workers: int | None = None, rebuild: bool = False,
                  follow_symlinks: bool = False, progress: bool = True) -> IngestReport:
    name = validate_dataset_name(name)
    root = check_input_folder(input_dir)
    if batch_size is not None and batch_size < 1:
        raise InvalidInputError(f"Batch size {batch_size} is not valid; use a positive number.")
    # Only a model named for this call constrains an existing dataset; the configured model (IMAGE_SEARCH_MODEL)
    # is the default for new datasets, so one setting never locks a server out of datasets built otherwise.
    explicit_model = parse_model_name(model_name).name if model_name else None
    started = time.perf_counter()
    with engine.lock(name, "ingest"):
        recovered = recover_interrupted(engine, name)
        existing = engine.store.get_dataset(name)
        if existing is not None and not rebuild:
            if existing.root != root:
                raise InvalidInputError(
                    f"Dataset '{name}' was built from {printable(existing.root)}, not {printable(root)}; use "
                    "--rebuild to replace it with this folder, or choose another name.")
            if explicit_model and explicit_model != existing.model:
                raise ModelMismatchError(
                    f"Dataset '{name}' was built with model {existing.model}, not {explicit_model}; use --rebuild "
                    "to re-embed it with the new model, or leave out --model.")
            model_id = existing.model
        elif existing is not None:
            model_id = explicit_model or existing.model
        else:
            model_id = explicit_model or engine.settings.model_name or DEFAULT_MODEL
        model_started = time.perf_counter()
        embedder = engine.model(model_id)
        report = IngestReport(dataset=name, root=root, model=embedder.name, recovered=recovered,
                              model_seconds=time.perf_counter() - model_started)

        scan = scan_folder(root, follow_symlinks=follow_symlinks)
        report.skipped.extend(scan.problems)
        report.symlinks_skipped = scan.symlinks_skipped

        incremental = existing is not None and not rebuild
        known = {r.path: r for r in engine.store.image_records(existing.id)} if incremental else {}
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
            removed_ids = engine.store.vector_ids(existing.id)
        report.reused = len(keep_ids)
        report.to_embed = len(to_embed)

        if incremental:
            working_index = engine.load_index(name).index.without(removed_ids)
        else:
            working_index = vectors.new_index(embedder.dim)
        uid = existing.uid if existing else uuid.uuid4().hex
        base_generation = existing.generation if existing else 0
        new_generation = base_generation + 1
        next_id = existing.next_vector_id if existing else 1
        _write_journal(engine, name, {"uid": uid, "base_generation": base_generation,
                                      "new_generation": new_generation, "pid": os.getpid(),
                                      "started": time.strftime("%Y-%m-%d %H:%M:%S")})
        added: list[ImageRecord] = []
        paths = [entry.path for entry in to_embed]
        embed_started = time.perf_counter()
        for batch in embed_files(embedder, paths, batch_size=batch_size, workers=workers, progress=progress):
            report.skipped.extend((paths[position], reason) for position, reason in batch.skipped)
            report.ignored += len(batch.ignored)
            if batch.positions:
                ids = np.arange(next_id, next_id + len(batch.positions), dtype=np.int64)
                next_id += len(batch.positions)
                working_index.add(batch.vectors, ids)
                for vector_id, position in zip(ids.tolist(), batch.positions):
                    entry = to_embed[position]
                    added.append(ImageRecord(vector_id, entry.path, entry.size, entry.mtime_ns))
        report.embed_seconds = time.perf_counter() - embed_started
        report.indexed = len(added)
        report.removed = len(removed_ids)
        report.total = working_index.count
        report.created = existing is None
        # the kind that suits the new size (or the one IMAGE_SEARCH_INDEX asks for); converting counts as a change
        fitted_index = vectors.fit(working_index, engine.settings.index.kind)
        report.changed = bool(added or removed_ids or rebuild or existing is None or fitted_index is not working_index)
        working_index = fitted_index

        if report.total == 0 and (existing is None or rebuild):
            _journal_path(engine, name).unlink(missing_ok=True)
            first = f" (first: {printable(report.skipped[0][0])}: {report.skipped[0][1]})" if report.skipped else ""
            raise InvalidInputError(
                f"No usable images were found in {printable(root)}: {len(report.skipped)} files could not be read"
                f"{first} and {report.ignored} are not images; nothing was saved.")
        if not report.changed:
            _journal_path(engine, name).unlink(missing_ok=True)
            report.seconds = time.perf_counter() - started
            return report

        _pause_point("before-index-write")
        working_index.save(vectors.layout.index_file(engine.data_home, uid, new_generation))
        _pause_point("before-commit")
        kind = working_index.kind
        target = (NewDataset(name, uid, embedder.name, embedder.dim, root, kind)
                  if existing is None else _updated(existing, embedder, root, kind))
        engine.store.commit_generation(dataset=target, base_generation=base_generation,
                                       new_generation=new_generation, added=added, removed_ids=removed_ids,
                                       image_count=report.total, next_vector_id=next_id)
        _pause_point("after-commit")
        vectors.layout.remove_other_generations(engine.data_home, uid, new_generation)
        _journal_path(engine, name).unlink(missing_ok=True)
    engine.forget_index(name)
    report.seconds = time.perf_counter() - started
    return report


def _updated(existing: DatasetRecord, embedder, root: str, kind: str) -> DatasetRecord:
    return replace(existing, model=embedder.name, dim=embedder.dim, root=root, index_kind=kind)
