"""Per-dataset locks that work across processes and threads.

An operating-system file lock is released by the kernel when its holder dies, so a killed ingest never blocks the
next one. The lock file records the holder's pid so that the message for a second ingest can name it.
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from pathlib import Path

from filelock import FileLock, Timeout

from ..data_folder import writes_in
from ..errors import DatasetBusyError


def _lock_path(data_home: Path, name: str) -> Path:
    folder = Path(data_home) / "locks"
    folder.mkdir(parents=True, exist_ok=True)
    return folder / f"{name}.lock"


@contextmanager
def dataset_lock(data_home: Path, name: str, *, action: str = "ingest"):
    with writes_in(Path(data_home), f"taking the lock of dataset '{name}'"):
        path = _lock_path(data_home, name)
        lock = FileLock(str(path), timeout=0, is_singleton=False, thread_local=False)
        owner_file = path.with_suffix(".owner")
        try:
            lock.acquire()
        except Timeout:
            try:
                owner = owner_file.read_text().strip() or "another process"
            except OSError:
                owner = "another process"
            raise DatasetBusyError(f"Dataset '{name}' is busy: {owner} is changing it right now; wait for it to "
                                   "finish and try again.") from None
    try:
        try:
            owner_file.write_text(f"an {action} (process {os.getpid()})")
        except OSError:
            pass  # only the busy message reads it; a full disk must not stop a delete that would free space
        yield
    finally:
        lock.release()
