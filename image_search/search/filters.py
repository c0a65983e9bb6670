"""Which images a search may return.

SearchFilter says it in a person's terms: a folder inside the dataset, a range of dates taken, a camera, a file
format, a minimum score. For one dataset, criteria() turns it into the store's terms (ImageCriteria) and
allowed_ids asks the store for the ids that meet them (one parameterised query), which VectorIndex.search takes as
`ids`: the index then searches only among them, so a search returns k results that all pass (not the top k,
filtered down to fewer). The minimum score is the one condition that can only be applied after the index search
(search/run.py drops the results below it).
"""

from __future__ import annotations

import math
import os
import threading
from collections import OrderedDict
from dataclasses import dataclass, fields
from datetime import date, datetime, time, timedelta
from typing import TYPE_CHECKING, Callable

from ..errors import Fix, InvalidInputError
from ..pipeline.scan import printable
from ..store.records import ImageCriteria
from ..vectors.base import AllowedIds

if TYPE_CHECKING:
    from ..store import DatasetRecord, MetadataStore

# Pillow opens many cameras' JPEG files (those with a second, preview image) as MPO: to a person they are JPEGs.
_SAME_FORMAT = {"JPEG": ("JPEG", "MPO")}


@dataclass(frozen=True)
class SearchFilter:
    """Conditions on the images a search returns; a condition left as None (or empty text) does not filter.

    folder: a folder inside the dataset's folder, relative to it (e.g. "DCIM/100APPLE") or in full.
    taken_from, taken_to: the first and last day (a date: the whole day) or moment (a datetime, to the second)
      the photo was taken: its EXIF date and time as the camera wrote it, or for an image without one its
      modification time in this machine's local time (SearchResult.date_source says which a result had). Text in
      ISO form (2023-03-01, 2023-03-01T14:30:00) is read as the date or datetime it names; a time with an offset is
      converted to local time.
    camera: a part of the camera's make and model, in any case ("canon", "iPhone 12").
    format: the file format, as Pillow names it or by a file extension ("JPEG", "png", "jpg").
    min_score: the lowest score (cosine similarity, -1 to 1) a result may have.

    Bad values raise InvalidInputError when the filter is made.
    """

    folder: str | None = None
    taken_from: date | None = None
    taken_to: date | None = None
    camera: str | None = None
    format: str | None = None
    min_score: float | None = None

    def __post_init__(self) -> None:
        def normalise(name: str, value) -> None:
            object.__setattr__(self, name, value)

        normalise("folder", _text(os.fspath(self.folder) if isinstance(self.folder, os.PathLike) else self.folder,
                                  "folder"))
        normalise("taken_from", _moment(self.taken_from, "start"))
        normalise("taken_to", _moment(self.taken_to, "end"))
        normalise("camera", _text(self.camera, "camera"))
        normalise("format", _format_name(self.format))
        normalise("min_score", _score(self.min_score))
        start, end = self.taken_range
        if start is not None and end is not None and start >= end:
            raise InvalidInputError(f"The start date {self.taken_from.isoformat()} is after the end date "
                                    f"{self.taken_to.isoformat()}; swap the two dates.")

    @property
    def is_empty(self) -> bool:
        return all(getattr(self, condition.name) is None for condition in fields(self))

    @property
    def selects_images(self) -> bool:
        """Whether it has a condition the store decides (all but the minimum score)."""
        return any(getattr(self, condition.name) is not None for condition in fields(self)
                   if condition.name != "min_score")

    @property
    def taken_range(self) -> tuple[datetime | None, datetime | None]:
        """[start, end) in local time: the end is the moment after the last day or second allowed."""
        start = end = None
        if self.taken_from is not None:
            start = (self.taken_from if isinstance(self.taken_from, datetime)
                     else datetime.combine(self.taken_from, time()))
        if self.taken_to is not None:
            end = (self.taken_to + timedelta(seconds=1) if isinstance(self.taken_to, datetime)
                   else datetime.combine(self.taken_to + timedelta(days=1), time()))
        return start, end

    def describe(self) -> str:
        """The conditions in words, e.g. "under DCIM, taken from 2023-03-01 to 2023-03-31, camera 'canon'"."""
        parts = []
        if self.folder is not None:
            parts.append(f"under {printable(self.folder)}")
        if self.taken_from is not None and self.taken_to is not None:
            parts.append(f"taken from {self.taken_from.isoformat()} to {self.taken_to.isoformat()}")
        elif self.taken_from is not None:
            parts.append(f"taken from {self.taken_from.isoformat()} on")
        elif self.taken_to is not None:
            parts.append(f"taken up to {self.taken_to.isoformat()}")
        if self.camera is not None:
            parts.append(f"camera '{self.camera}'")
        if self.format is not None:
            parts.append(f"format {self.format}")
        if self.min_score is not None:
            parts.append(f"score at least {self.min_score:g}")
        return ", ".join(parts)

    def criteria(self, record: DatasetRecord) -> ImageCriteria:
        """The store's conditions for this dataset (the minimum score is none of them)."""
        start, end = self.taken_range
        return ImageCriteria(
            folder=None if self.folder is None else folder_inside(self.folder, record),
            taken_from=_taken_at(start), taken_before=_taken_at(end),
            modified_from_ns=_local_ns(start), modified_before_ns=_local_ns(end),
            camera=None if self.camera is None else self.camera.lower(),
            formats=() if self.format is None else _SAME_FORMAT.get(self.format, (self.format,)))


def allowed_ids(store: MetadataStore, record: DatasetRecord, filters: SearchFilter | None,
                cache: Selections | None = None) -> AllowedIds | None:
    """The dataset's vector ids that `filters` allows, or None for every id (no filter, or none that the store
    decides), which searches the whole index. `cache`: the selections of the dataset state being searched."""
    if filters is None or not filters.selects_images:
        return None
    criteria = filters.criteria(record)
    if criteria.is_empty:  # the dataset's own folder
        return None

    def select() -> AllowedIds:
        ids = store.select_vector_ids(record.id, criteria)
        if len(ids) == 0 and criteria.folder is not None and not os.path.isdir(criteria.folder):
            # no image under it, and no such folder (the dataset's folder may be gone: then images still count)
            raise InvalidInputError(f"There is no folder '{printable(filters.folder)}' in dataset '{record.name}' "
                                    f"({printable(record.root)})", fix=Fix.FILTER_FOLDER,
                                    root=printable(record.root))
        return AllowedIds(ids)

    return cache.get(criteria, select) if cache is not None else select()


def folder_inside(folder: str, record: DatasetRecord) -> str:
    """The folder as an absolute path inside the dataset's folder (a relative one is relative to that)."""
    root = record.root
    path = os.path.normpath(os.path.join(root, os.path.expanduser(folder)))
    if not _inside(path, root) and os.path.exists(path):
        path = os.path.realpath(path)  # the dataset's folder by another name (a link to it or into it)
    if not _inside(path, root):
        raise InvalidInputError(f"The folder '{printable(folder)}' is not inside dataset '{record.name}' "
                                f"({printable(root)})", fix=Fix.FILTER_FOLDER, root=printable(root))
    if os.path.exists(path) and not os.path.isdir(path):
        raise InvalidInputError(f"'{printable(folder)}' in dataset '{record.name}' is a file, not a folder",
                                fix=Fix.FILTER_FOLDER, root=printable(root))
    return path


def nothing_passes(record: DatasetRecord, filters: SearchFilter) -> str:
    return f"No image of dataset '{record.name}' passes the filters ({filters.describe()}); widen or remove one."


class Selections:
    """The ids that recent filters allowed in one dataset state (each LoadedIndex has its own, so an ingest's new
    state starts empty): a filter used again, as when one folder or date range is searched with several queries,
    costs no store query. Selecting 500k of 1M rows took about 0.4 s on SQLite (evaluation/benchmark_search.py),
    a cached selection nothing; an entry holds 8 bytes per allowed id, and the bitmap FAISS tests them with."""

    SIZE = 8

    def __init__(self) -> None:
        self._entries: OrderedDict[ImageCriteria, AllowedIds] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, criteria: ImageCriteria, select: Callable[[], AllowedIds]) -> AllowedIds:
        with self._lock:
            if criteria in self._entries:
                self._entries.move_to_end(criteria)
                return self._entries[criteria]
        allowed = select()  # outside the lock: other filters need not wait for this query
        with self._lock:
            self._entries[criteria] = allowed
            while len(self._entries) > self.SIZE:
                self._entries.popitem(last=False)
        return allowed


# -- reading the conditions -----------------------------------------------------------------------------------
def _inside(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip(os.sep) + os.sep)


def _text(value, what: str) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise InvalidInputError(f"The {what} filter {value!r} is not text; give it as text, or none.")
    return value.strip() or None


def _moment(value, which: str) -> date | None:
    """A date or a datetime (naive, local time, to the second) from a date, a datetime or ISO text."""
    if isinstance(value, str):
        text = value.strip()
        if not text:
            return None
        try:
            value = date.fromisoformat(text) if len(text) <= 10 else datetime.fromisoformat(text)
        except ValueError:
            raise InvalidInputError(f"The {which} date {text!r} is not a date", fix=Fix.FILTER_DATE) from None
    if value is None:
        return None
    if isinstance(value, datetime):
        if value.tzinfo is not None:
            value = value.astimezone().replace(tzinfo=None)
        return value.replace(microsecond=0)
    if isinstance(value, date):
        return value
    raise InvalidInputError(f"The {which} date {value!r} is not a date", fix=Fix.FILTER_DATE)


def _score(value) -> float | None:
    if isinstance(value, str):
        if not value.strip():
            return None
        try:
            number = float(value.strip())
        except ValueError:
            raise InvalidInputError(f"The minimum score {value.strip()!r} is not a number",
                                    fix=Fix.FILTER_SCORE) from None
    elif value is None:
        return None
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        number = float(value)
    else:
        raise InvalidInputError(f"The minimum score {value!r} is not a number", fix=Fix.FILTER_SCORE)
    if not math.isfinite(number) or not -1.0 <= number <= 1.0:
        raise InvalidInputError(f"The minimum score {number:g} is not from -1 to 1", fix=Fix.FILTER_SCORE)
    return number


def _format_name(value) -> str | None:
    """Pillow's name of a format given by its name or a file extension, in any case ('jpg' -> 'JPEG')."""
    text = _text(value, "format")
    if text is None:
        return None
    name = text.lstrip(".").upper()
    from PIL import Image

    return Image.registered_extensions().get("." + name.lower(), name)


def _taken_at(moment: datetime | None) -> str | None:
    return None if moment is None else moment.isoformat(timespec="seconds")


def _local_ns(moment: datetime | None) -> int | None:
    return None if moment is None else int(moment.timestamp()) * 1_000_000_000
