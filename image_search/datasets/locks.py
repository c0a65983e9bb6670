"""Per-dataset locks that work across processes and threads.

An operating-system file lock is released by the kernel when its holder dies, so a killed ingest never blocks the
next one. The lock file records the holder's pid so that the message for a second ingest can name it.
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from pathlib import Path

from filelock import FileLock, Timeout

from ..errors import DatasetBusyError
from ..store.failures import data_folder_failure


def _lock_path(data_home: Path, name: str) -> Path:
    folder = Path(data_home) / "locks"
    folder.mkdir(parents=True, exist_ok=True)
    return folder / f"{name}.lock"


def _unwritable(error: OSError, path: Path) -> Exception:
    """The data folder's failure as its sentence (a read-only or full data folder ends an ingest or a delete at
    its first write, the lock), or the error itself when it is something else."""
    return data_folder_failure(error, path) or error


@contextmanager
def dataset_lock(data_home: Path, name: str, *, action: str = "ingest"):
    path = Path(data_home) / "locks" / f"{name}.lock"
    owner_file = path.with_suffix(".owner")
    try:
        _lock_path(data_home, name)
        lock = FileLock(str(path), timeout=0, is_singleton=False, thread_local=False)
        lock.acquire()
    except Timeout:  # a TimeoutError, so an OSError too: first
        try:
            owner = owner_file.read_text().strip()
        except OSError:
            owner = "another process"
        raise DatasetBusyError(f"Dataset '{name}' is busy: {owner} is changing it right now; wait for it to "
                               "finish and try again.") from None
    except OSError as error:
        raise _unwritable(error, path) from None
    try:
        try:
            owner_file.write_text(f"an {action} (process {os.getpid()})")
        except OSError as error:
            raise _unwritable(error, owner_file) from None
        yield
    finally:
        lock.release()
