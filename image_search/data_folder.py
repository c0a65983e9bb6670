"""Writing in the data folder: a full disk, a read-only folder or a missing permission as one sentence that names
the folder (and, for a full disk, the space needed and free), never an OSError traceback or a library's text.

Every write the core makes there goes through writes_in: the dataset locks, the ingest journal, the index files and
their seals, and (store/sqlite.py, through no_room and unwritable) the SQLite store.
"""

from __future__ import annotations

import errno
import shutil
from contextlib import contextmanager
from pathlib import Path

from .errors import DataFolderError

_FULL = {errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)}
_UNWRITABLE = {errno.EROFS, errno.EACCES, errno.EPERM}
_WHERE_ELSE = "or set IMAGE_SEARCH_HOME to a folder on a disk with more room"


def free_bytes(folder: Path) -> int | None:
    """Bytes this user may still write under folder (its nearest existing parent), or None when unknown."""
    folder = Path(folder)
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    try:
        return shutil.disk_usage(folder).free
    except OSError:
        return None


def size_in_words(size: int) -> str:
    if size >= 1 << 30:
        return f"{size / (1 << 30):.1f} GB"
    if size >= 1 << 20:
        return f"{size / (1 << 20):.1f} MB"
    if size >= 1024:
        return f"{size // 1024} kB"
    return f"{size} bytes"


def no_room(folder: Path, what: str, needed: int | None = None) -> DataFolderError:
    """The error for a full disk; `what` is the write that failed, as words such as "writing the index of
    dataset 'case'"."""
    free = free_bytes(folder)
    full = f"is full ({size_in_words(free)} free)" if free is not None else "is full"
    failed = f": {what} needs about {size_in_words(needed)}" if needed else f", so {what} failed"
    return DataFolderError(f"The disk of the data folder {folder} {full}{failed}; free some space there (deleting a "
                           f"dataset frees its index) {_WHERE_ELSE}.")


def unwritable(folder: Path, what: str, error: OSError | str) -> DataFolderError:
    reason = error if isinstance(error, str) else (error.strerror or str(error)).lower()
    return DataFolderError(f"The data folder {folder} cannot be written ({reason}), so {what} failed; make it "
                           "writable for this user, or set IMAGE_SEARCH_HOME to a folder that is.")


def is_full(error: OSError) -> bool:
    return error.errno in _FULL


@contextmanager
def writes_in(folder: Path, what: str, needed: int | None = None):
    """Turn the OSError of a write under folder into a DataFolderError saying what failed and why."""
    try:
        yield
    except OSError as error:
        if error.errno in _FULL:
            raise no_room(folder, what, needed) from None
        if error.errno in _UNWRITABLE:
            raise unwritable(folder, what, error) from None
        raise


def check_room(folder: Path, what: str, needed: int) -> None:
    """Refuse at once, before hours of work, when even `needed` bytes (a lower bound) will not fit."""
    free = free_bytes(folder)
    if free is not None and free < needed:
        raise no_room(folder, what, needed)

