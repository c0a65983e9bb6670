"""An ingest's finished work, kept when its database could not be reached at the commit, and committed by the next
ingest of that dataset.

The new generation's index file is written and sealed beside the old one by then; what is kept is the rest of the
commit (the rows of the newly embedded files, the removed vector ids, the dataset's new state) in
<data home>/journal/<name>.commit.json, written atomically beside the ingest's journal. The next ingest of the name
commits it when the dataset is still as that ingest found it and the index file still matches its seal, then goes
on as usual (and finds those files unchanged); otherwise the kept work is discarded and the interrupted ingest
rolled back (commit.recover_interrupted).
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

from .. import vectors
from ..errors import StoreUnreachableError
from ..store import DatasetRecord, ImageFacts, ImageRecord, NewDataset, decode_path, encode_path

if TYPE_CHECKING:
    from ..service import ImageSearch

_FORMAT = 2  # 2: each row's facts (hashes, EXIF) and the facts filled in for kept rows


@dataclass
class Commit:
    """The arguments of the store's commit_generation for one ingest."""
    dataset: DatasetRecord | NewDataset
    base_generation: int
    new_generation: int
    added: Sequence[ImageRecord]
    removed_ids: Sequence[int]
    image_count: int
    next_vector_id: int
    refreshed_facts: Sequence[tuple[int, ImageFacts]] = ()  # facts filled in for kept rows (ingest/backfill.py)

    def arguments(self) -> dict:
        return {"dataset": self.dataset, "base_generation": self.base_generation,
                "new_generation": self.new_generation, "added": self.added, "removed_ids": self.removed_ids,
                "image_count": self.image_count, "next_vector_id": self.next_vector_id,
                "refreshed_facts": self.refreshed_facts}


def _path(service: ImageSearch, name: str) -> Path:
    return service.data_home / "journal" / f"{name}.commit.json"


def keep(service: ImageSearch, name: str, commit: Commit) -> bool:
    """Write the commit for the next ingest; False when the data folder cannot take it."""
    target = commit.dataset
    data = {"format": _FORMAT, "kept": time.strftime("%Y-%m-%d %H:%M:%S"), "new": isinstance(target, NewDataset),
            "uid": target.uid, "model": target.model, "dim": target.dim, "root": encode_path(target.root).hex(),
            "index_kind": target.index_kind, "base_generation": commit.base_generation,
            "new_generation": commit.new_generation, "image_count": commit.image_count,
            "next_vector_id": commit.next_vector_id, "removed_ids": [int(i) for i in commit.removed_ids],
            "added": [[r.vector_id, encode_path(r.path).hex(), r.size, r.mtime_ns, r.ctime_ns, r.inode,
                       _facts_row(r.facts)] for r in commit.added],
            "refreshed_facts": [[int(v), _facts_row(f)] for v, f in commit.refreshed_facts]}
    path = _path(service, name)
    temporary = path.with_name(path.name + f".tmp-{os.getpid()}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(temporary, "w", encoding="utf-8") as handle:
            json.dump(data, handle, separators=(",", ":"))
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
        return True
    except OSError:
        return False
    finally:
        temporary.unlink(missing_ok=True)


def size(service: ImageSearch, name: str) -> int:
    """Bytes the kept work takes in the data folder: the kept commit and the index file it refers to."""
    path = _path(service, name)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        index = vectors.layout.index_file(service.data_home, data["uid"], int(data["new_generation"]))
        return path.stat().st_size + index.stat().st_size
    except (OSError, ValueError, KeyError):
        return 0


def discard(service: ImageSearch, name: str) -> None:
    _path(service, name).unlink(missing_ok=True)


def went_through(service: ImageSearch, commit: Commit) -> bool:
    """Whether the dataset is at the commit's new generation already (its transaction committed even though the
    connection was lost before the answer came); False while the database cannot be reached."""
    try:
        current = service.store.get_dataset(commit.dataset.name)
    except StoreUnreachableError:
        return False
    return current is not None and (current.uid, current.generation) == (commit.dataset.uid, commit.new_generation)


def finish(service: ImageSearch, name: str, record: DatasetRecord | None) -> tuple[DatasetRecord, str] | None:
    """Commit the work an earlier ingest of this dataset kept: (the dataset's new record, what was done), or None
    when there is none or it no longer fits (then it is discarded). The caller holds the dataset's lock; record is
    the dataset as it is committed now. Raises StoreUnreachableError, keeping the work, while the database is down."""
    path = _path(service, name)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        commit = _commit_from(data, name, record)
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError):
        commit = None
    index_path = (vectors.layout.index_file(service.data_home, commit.dataset.uid, commit.new_generation)
                  if commit is not None else None)
    if commit is None or not _sealed(index_path, commit):
        discard(service, name)
        return None
    committed = service.store.commit_generation(**commit.arguments())
    vectors.layout.remove_other_generations(service.data_home, committed.uid, committed.generation)
    (service.data_home / "journal" / f"{name}.json").unlink(missing_ok=True)
    discard(service, name)
    service.forget_index(name)
    return committed, (f"An earlier ingest of '{name}' could not reach the database to commit (work kept "
                       f"{data.get('kept', 'earlier')}); committed its {len(commit.added)} embedded images now.")


def _commit_from(data: dict, name: str, record: DatasetRecord | None) -> Commit | None:
    """The kept commit, when the dataset is still in the state it was made on; else None."""
    if data.get("format") != _FORMAT:
        return None
    root = decode_path(bytes.fromhex(data["root"]))
    if data["new"]:
        if record is not None:
            return None
        target = NewDataset(name, data["uid"], data["model"], int(data["dim"]), root, data["index_kind"])
    else:
        if record is None or (record.uid, record.generation) != (data["uid"], int(data["base_generation"])):
            return None
        target = replace(record, model=data["model"], dim=int(data["dim"]), root=root, index_kind=data["index_kind"])
    added = [ImageRecord(int(v), decode_path(bytes.fromhex(p)), int(s), int(m), c, i, _facts_of(f))
             for v, p, s, m, c, i, f in data["added"]]
    refreshed = [(int(v), _facts_of(f)) for v, f in data.get("refreshed_facts", [])]
    return Commit(target, int(data["base_generation"]), int(data["new_generation"]), added,
                  [int(i) for i in data["removed_ids"]], int(data["image_count"]), int(data["next_vector_id"]),
                  [(v, f) for v, f in refreshed if f is not None])


def _facts_row(facts: ImageFacts | None) -> list | None:
    return None if facts is None else list(facts.as_row())


def _facts_of(row: list | None) -> ImageFacts | None:
    return None if row is None else ImageFacts.from_row(row)


def _sealed(index_path: Path, commit: Commit) -> bool:
    """Whether the index file is still the one the ingest wrote (its seal, its SHA-256)."""
    try:
        if vectors.seal.read_seal(index_path) is None:
            return False
        digest = vectors.seal.digest_of_file(index_path)
    except (OSError, vectors.seal.DamagedSeal):
        return False
    return vectors.seal.seal_problem(index_path, commit.dataset.uid, commit.new_generation, digest) is None
