"""Checkpoints: what an ingest in progress has embedded so far, kept on disk so that a killed ingest resumes.

An ingest holds the vectors it makes in memory until its one commit (commit.py). So that a crash (kill -9, a
power cut, the out-of-memory killer) does not throw hours of embedding away, CheckpointWriter saves the finished
batches as they come, every so many images or seconds (config.CheckpointSettings), in a folder beside the journal:

    <data home>/journal/<dataset>.checkpoint/
        owner.json     whose work it is: the dataset's uid, the generation it builds on, the model, the folder
        000001.npy     chunk 1's vectors (float32, one row per image; numpy's format, read without pickle)
        000001.json    chunk 1's image records as columns: one JSON object with a list of values per field of
                       ImageRecord, in the records' order; a nested dataclass field as {"present": [true/false per
                       record], "columns": its own fields' lists over the records that have one}. So a field added
                       to ImageRecord is saved and read with no change here.
        000001.sum     written last: the chunk's image count and the SHA-256 of its two files

Checkpoints written before December 2026 hold their records as 000001.jsonl instead, one JSON object per record
and line; they are read as well, so an ingest interrupted before an upgrade resumes after it. Columns, because
the checkpoint thread holds the interpreter lock while it encodes, and a GPU ingest's reader threads need that
lock: 10,000 records took 0.13 s to encode as objects and 0.04 s as columns (Xeon, one core).

A chunk counts once its .sum is there and both files match it; one cut short or damaged is dropped, and only its
images are embedded again. The next ingest of the dataset reads the chunks (read_saved_work) and keeps them when
they were made for the same dataset state, model and folder; plan.py keeps each image whose file is unchanged.
The commit removes the folder (commit.end_journal), and so does a rebuild. Searches never read checkpoints: until
the commit they see the dataset as it was.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import io
import json
import operator
import queue
import re
import shutil
import threading
import time
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from ..config import CheckpointSettings
from ..durable_files import fsync_folder, replace_durably, write_synced
from ..pipeline.scan import printable
from ..store import DatasetRecord, ImageRecord

FORMAT = 1  # owner.json's "format": a checkpoint of another format is discarded, never misread
_OWNER = "owner.json"
_CHUNK = re.compile(r"^(\d{6,})\.(npy|json|jsonl|sum)$")
_RECORDS = "json"  # the records file's suffix: columns
_RECORDS_AS_ROWS = "jsonl"  # the same in checkpoints of earlier versions: an object per record
_QUEUED_CHUNKS = 2  # chunks waiting for the disk before the ingest waits too (memory stays bounded)


def checkpoint_folder(data_home: Path, name: str) -> Path:
    return Path(data_home) / "journal" / f"{name}.checkpoint"


def discard_checkpoints(data_home: Path, name: str) -> None:
    shutil.rmtree(checkpoint_folder(data_home, name), ignore_errors=True)


@dataclass(frozen=True)
class CheckpointOwner:
    """The dataset state an ingest builds on: its checkpoints are valid for an ingest that builds on the same."""
    uid: str  # the dataset's uid (for a new dataset: the one the ingest gave it)
    base_generation: int  # the committed generation the ingest replaces (0: the dataset is new)
    model: str
    dim: int
    root: str  # the folder (surrogate escapes survive JSON, as paths do)

    def mismatch(self, existing: DatasetRecord | None, model: str, dim: int, root: str) -> str | None:
        """Why these checkpoints cannot serve an ingest into `existing` (its row now; None: no dataset yet) with
        this model and folder; None when they can."""
        if existing is None and self.base_generation != 0:
            return "the dataset it was updating has been deleted since"
        if existing is not None and self.base_generation == 0:
            return "it was creating the dataset, which has been created by another ingest since"
        if existing is not None and self.uid != existing.uid:
            return "it was for an earlier dataset of that name, deleted since"
        if existing is not None and self.base_generation != existing.generation:
            return "the dataset has been changed by another ingest since"
        if (self.model, self.dim) != (model, dim):
            return f"it was embedding with model {self.model}, not {model}"
        if self.root != root:
            return f"it was reading {printable(self.root)}"
        return None


@dataclass
class SavedWork:
    """What read_saved_work found: the records and vectors of every intact chunk (for each path the latest), and
    what it had to drop, in words."""
    owner: CheckpointOwner | None = None  # None: no checkpoint to continue (none, or discarded)
    records: list[ImageRecord] = field(default_factory=list)
    vectors: np.ndarray | None = None  # float32 [len(records), dim]
    last_chunk: int = 0  # the highest chunk number on disk (a continuing writer numbers on from it)
    highest_id: int = 0  # the highest vector id in any chunk kept on disk (new ids go above it)
    notes: list[str] = field(default_factory=list)


def read_saved_work(data_home: Path, name: str, existing: DatasetRecord | None, *, model: str, dim: int,
                    root: str) -> SavedWork:
    """The checkpoints of an interrupted ingest of dataset `name`, when they suit an ingest into `existing` (its row
    now) with this model and folder; unsuitable ones are removed, and damaged chunks, each with a note."""
    folder = checkpoint_folder(data_home, name)
    if not folder.is_dir():
        return SavedWork()
    try:
        owner = _read_owner(folder / _OWNER)
        chunks = _chunk_files(folder)
    except FileNotFoundError:  # killed as it started them, before it saved anything
        discard_checkpoints(data_home, name)
        return SavedWork()
    except (OSError, ValueError, TypeError, KeyError) as error:
        discard_checkpoints(data_home, name)
        reason = error.strerror if isinstance(error, OSError) else "their owner.json is damaged"
        return SavedWork(notes=[f"The checkpoints of an interrupted ingest of '{name}' could not be read ({reason}); "
                                "discarded them."])
    reason = owner.mismatch(existing, model, dim, root)
    if reason:
        discard_checkpoints(data_home, name)
        return SavedWork(notes=[f"Discarded the checkpoints of an interrupted ingest of '{name}': {reason}."])

    saved = SavedWork(owner=owner)
    latest: dict[str, tuple[ImageRecord, np.ndarray]] = {}  # path -> (record, vector) of the latest chunk
    for number, files in sorted(chunks.items()):
        saved.last_chunk = max(saved.last_chunk, number)
        try:
            records, vectors = _read_chunk(folder, number, files, dim)
        except _Unsealed:  # the ingest was killed while writing it: those images were never saved
            _remove(files)
            continue
        except _Damaged as damage:
            _remove(files)
            saved.notes.append(f"Checkpoint chunk {number} of '{name}' is damaged ({damage}); "
                               f"{damage.images_text} embedded again.")
            continue
        for record, vector in zip(records, vectors):
            latest[record.path] = (record, vector)
            saved.highest_id = max(saved.highest_id, record.vector_id)
    if latest:
        saved.records = [record for record, _ in latest.values()]
        saved.vectors = np.stack([vector for _, vector in latest.values()]).astype(np.float32, copy=False)
    return saved


# -- writing ----------------------------------------------------------------------------------------------------
def checkpoint_writer(data_home: Path, name: str, owner: CheckpointOwner, settings: CheckpointSettings | None,
                      saved: SavedWork) -> CheckpointWriter | NoCheckpoints:
    """The writer of this ingest's checkpoints (settings None: none are written), going on from `saved` when they
    are this owner's."""
    if settings is None:
        return NoCheckpoints()
    return CheckpointWriter(checkpoint_folder(data_home, name), owner, every_images=settings.images,
                            every_seconds=settings.seconds, continues=saved)


class NoCheckpoints:
    """What an ingest uses when checkpoints are off (to measure what they cost)."""
    chunks_written = images_written = 0
    write_seconds = 0.0
    failure = None

    def __enter__(self) -> NoCheckpoints:
        return self

    def __exit__(self, *_exception) -> None:
        pass

    def add(self, vectors: np.ndarray, records: Sequence[ImageRecord]) -> None:
        pass


class CheckpointWriter:
    """Saves an ingest's embedded batches as checkpoint chunks: a chunk when `every_images` images are waiting or
    `every_seconds` have passed since the last, whichever comes first, written on a thread of its own so that the
    model does not wait for the disk. As a context manager, leaving it saves what is waiting and waits for the disk,
    also when the ingest fails: the work is then there for the next run. A failure to write (a full disk) stops
    checkpointing with a note, never the ingest."""

    def __init__(self, folder: Path, owner: CheckpointOwner, *, every_images: int, every_seconds: float,
                 continues: SavedWork | None = None, clock: Callable[[], float] = time.monotonic) -> None:
        """continues: the checkpoints read for this ingest when they are its owner's (they are kept, and numbering
        goes on after them); otherwise the folder is started afresh."""
        self.folder, self.owner = folder, owner
        self.every_images, self.every_seconds, self._clock = every_images, every_seconds, clock
        self.chunks_written = 0
        self.images_written = 0
        self.write_seconds = 0.0  # spent writing on the checkpoint thread (serialising, hashing, writing, syncing)
        self.failure: str | None = None  # the note when writing failed
        self._next = (continues.last_chunk + 1) if continues and continues.owner == owner else 1
        self._pending: list[tuple[np.ndarray, Sequence[ImageRecord]]] = []
        self._pending_images = 0
        self._since = clock()
        self._queue: queue.Queue = queue.Queue(maxsize=_QUEUED_CHUNKS)
        self._thread: threading.Thread | None = None
        if self._next == 1:
            self._start_folder()

    def __enter__(self) -> CheckpointWriter:
        self._thread = threading.Thread(target=self._write_chunks, name="ingest-checkpoints", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *_exception) -> None:
        self._hand_over()
        self._queue.put(None)
        self._thread.join()

    def add(self, vectors: np.ndarray, records: Sequence[ImageRecord]) -> None:
        """A batch the ingest has added to its working index (one vector row per record)."""
        if records:
            self._pending.append((vectors, records))
            self._pending_images += len(records)
        if self._pending_images >= self.every_images or self._clock() - self._since >= self.every_seconds:
            self._hand_over()

    def _hand_over(self) -> None:
        self._since = self._clock()
        if not self._pending or self.failure:
            return
        vectors = np.concatenate([part for part, _ in self._pending]) if len(self._pending) > 1 \
            else self._pending[0][0]
        records = [record for _, part in self._pending for record in part]
        self._pending, self._pending_images = [], 0
        self._queue.put((self._next, vectors, records))
        self._next += 1

    def _start_folder(self) -> None:
        try:
            shutil.rmtree(self.folder, ignore_errors=True)
            self.folder.mkdir(parents=True)
            replace_durably(self.folder / _OWNER, json.dumps({"format": FORMAT, **dataclasses.asdict(self.owner)})
                            .encode("ascii"))
            fsync_folder(self.folder.parent)
            fsync_folder(self.folder.parent.parent)  # the journal folder may be new too
        except OSError as error:
            self._fail(error)

    def _write_chunks(self) -> None:
        while (item := self._queue.get()) is not None:
            number, vectors, records = item
            if self.failure:
                continue
            started = time.perf_counter()
            try:
                _write_chunk(self.folder, number, vectors, records)
                self.chunks_written += 1
                self.images_written += len(records)
            except Exception as error:  # noqa: BLE001 - a full disk, a field JSON cannot hold: never the ingest's end
                _remove(_chunk_paths(self.folder, number))
                self._fail(error)
            self.write_seconds += time.perf_counter() - started

    def _fail(self, error: Exception) -> None:
        reason = error.strerror if isinstance(error, OSError) and error.strerror else str(error)
        self.failure = (f"Could not save checkpoints in {printable(str(self.folder))} ({reason}); this ingest goes "
                        "on without them, and if it is interrupted the next one starts over.")


def _chunk_paths(folder: Path, number: int) -> list[Path]:
    return [folder / f"{number:06d}.{kind}" for kind in ("npy", _RECORDS, _RECORDS_AS_ROWS, "sum")]


def _write_chunk(folder: Path, number: int, vectors: np.ndarray, records: Sequence[ImageRecord]) -> None:
    stem = f"{number:06d}"
    header, vector_data = _npy_parts(vectors)
    vector_sum = hashlib.sha256(header)
    vector_sum.update(vector_data)  # (hashlib lets go of the interpreter lock over large buffers)
    # ensure_ascii: a path that is not valid UTF-8 keeps its surrogate escapes (store/records.py) as \udcXX
    record_bytes = json.dumps(_columns(ImageRecord, records), check_circular=False).encode("ascii")
    write_synced(folder / f"{stem}.npy", header, vector_data)
    write_synced(folder / f"{stem}.{_RECORDS}", record_bytes)
    seal = {"chunk": number, "images": len(records), "npy_sha256": vector_sum.hexdigest(),
            f"{_RECORDS}_sha256": hashlib.sha256(record_bytes).hexdigest()}
    replace_durably(folder / f"{stem}.sum", json.dumps(seal).encode("ascii"))  # the chunk counts from here


def _npy_parts(vectors: np.ndarray) -> tuple[bytes, memoryview]:
    """The bytes np.save writes for these vectors as float32, as its header and the array's own memory (no copy
    of the array is made: the thread holds the interpreter lock while it copies)."""
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, np.lib.format.header_data_from_array_1_0(vectors))
    return header.getvalue(), memoryview(vectors).cast("B")


def _columns(cls, items: Sequence) -> dict:
    """Dataclass items as columns: a list of values per field (operator.attrgetter over the items keeps the
    work in C, and json encodes lists of plain values without calling back into Python)."""
    columns = {}
    for name, nested in _nested_dataclasses(cls):
        values = list(map(operator.attrgetter(name), items))
        if nested is None:
            columns[name] = values
        else:
            present = [value is not None for value in values]
            columns[name] = {"present": present,
                             "columns": _columns(nested, [value for value in values if value is not None])}
    return columns


# -- reading ----------------------------------------------------------------------------------------------------
class _Unsealed(Exception):
    pass


class _Damaged(Exception):
    def __init__(self, reason: str, images: int | None) -> None:
        super().__init__(reason)
        self.images_text = f"its {images} images are" if images is not None else "its images are"


def _read_owner(path: Path) -> CheckpointOwner:
    data = json.loads(path.read_text(encoding="ascii"))
    if data.pop("format") != FORMAT:
        raise ValueError("another format")
    return CheckpointOwner(**data)


def _chunk_files(folder: Path) -> dict[int, list[Path]]:
    chunks: dict[int, list[Path]] = {}
    for entry in folder.iterdir():
        match = _CHUNK.match(entry.name)
        if match:
            chunks.setdefault(int(match.group(1)), []).append(entry)
        elif entry.name != _OWNER:  # a seal's temporary file, left by a kill while it was being renamed
            entry.unlink(missing_ok=True)
    return chunks


def _read_chunk(folder: Path, number: int, files: list[Path], dim: int) -> tuple[list[ImageRecord], np.ndarray]:
    stem = f"{number:06d}"
    try:
        seal = json.loads((folder / f"{stem}.sum").read_bytes())
    except FileNotFoundError:
        raise _Unsealed() from None
    except (OSError, ValueError) as error:
        raise _Damaged(f"its checksum file cannot be read: {error}", None) from None
    if not isinstance(seal, dict):
        raise _Damaged("its checksum file holds no checksums", None)
    images = seal.get("images")
    # the seal names the records file it checks: columns, or an earlier version's rows
    form = next((suffix for suffix in (_RECORDS, _RECORDS_AS_ROWS) if f"{suffix}_sha256" in seal), None)
    if form is None:
        raise _Damaged("its checksum file holds no checksum of its image records", images)
    try:
        vector_bytes = (folder / f"{stem}.npy").read_bytes()
        record_bytes = (folder / f"{stem}.{form}").read_bytes()
    except OSError as error:
        raise _Damaged(f"a file of it is missing: {error.strerror}", images) from None
    if hashlib.sha256(vector_bytes).hexdigest() != seal.get("npy_sha256"):
        raise _Damaged("its vectors do not match their checksum", images)
    if hashlib.sha256(record_bytes).hexdigest() != seal.get(f"{form}_sha256"):
        raise _Damaged("its image records do not match their checksum", images)
    try:
        vectors = np.load(io.BytesIO(vector_bytes), allow_pickle=False)
        if form == _RECORDS:
            records = _items(ImageRecord, json.loads(record_bytes), images)
        else:
            records = [_build(ImageRecord, json.loads(line)) for line in record_bytes.decode("ascii").splitlines()]
    except (ValueError, TypeError, KeyError, AttributeError) as error:  # intact, yet not what this version writes
        raise _Damaged(f"it was written in another form: {error}", images) from None
    if vectors.shape != (len(records), dim) or len(records) != images:
        raise _Damaged(f"it holds {vectors.shape} vectors for {len(records)} records", images)
    return records, vectors


def _items(cls, columns: dict, count) -> list:
    """The `count` dataclass items of these columns (_columns); a field the columns lack (written before the field
    existed) takes its default."""
    if not isinstance(count, int):
        raise ValueError("the checksum file gives no image count")
    values = {}
    for name, nested in _nested_dataclasses(cls):
        if name not in columns:
            continue
        column = columns[name]
        if nested is not None:
            present = column["present"]
            inner = iter(_items(nested, column["columns"], sum(map(bool, present))))
            column = [next(inner) if here else None for here in present]
        if len(column) != count:
            raise ValueError(f"{len(column)} values of {name} for {count} images")
        values[name] = column
    return [cls(**dict(zip(values, row))) for row in zip(*values.values())] if values else [cls()] * count


def _build(cls, data: dict):
    """A dataclass from its JSON object (an earlier version's rows), nested dataclasses included (their types
    come from the annotations); a field the object lacks (written before the field existed) takes its default."""
    values = {}
    for name, nested in _nested_dataclasses(cls):
        if name in data:
            value = data[name]
            values[name] = _build(nested, value) if nested is not None and isinstance(value, dict) else value
    return cls(**values)


@functools.lru_cache(maxsize=None)
def _nested_dataclasses(cls) -> tuple[tuple[str, type | None], ...]:
    """Each field's name, with the dataclass its type names (X, or X | None), else None."""
    hints = typing.get_type_hints(cls)
    found = []
    for item in dataclasses.fields(cls):
        hint = hints[item.name]
        nested = next((candidate for candidate in (hint, *typing.get_args(hint))
                       if isinstance(candidate, type) and dataclasses.is_dataclass(candidate)), None)
        found.append((item.name, nested))
    return tuple(found)


def _remove(files: Sequence[Path]) -> None:
    for path in files:
        path.unlink(missing_ok=True)
