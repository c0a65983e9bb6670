"""Writing files so that a crash or a power cut leaves each one whole or not there at all.

os.fsync of a file makes its bytes survive a power cut; fsync of its folder makes its name survive (a new or
renamed file is an entry in the folder). A file that must never be seen half-written is written under a temporary
name and renamed over the old one, which readers and crashes see happen at once.
"""

from __future__ import annotations

import os
from pathlib import Path


def fsync_folder(folder: Path) -> None:
    if os.name == "nt":  # Windows cannot open a folder to flush it; its file system journals names itself
        return
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_synced(path: Path, *parts: bytes | memoryview) -> None:
    """Write the file, its bytes in these parts, and flush them to the disk (its name is durable once its folder
    is synced)."""
    with open(path, "wb") as handle:
        for part in parts:
            handle.write(part)
        handle.flush()
        os.fsync(handle.fileno())


def replace_durably(path: Path, data: bytes) -> None:
    """Put `data` at `path` at once: a reader or a crash sees the old file or the whole new one, never a part."""
    temporary = path.with_name(path.name + f".tmp-{os.getpid()}")
    try:
        write_synced(temporary, data)
        os.replace(temporary, path)
        fsync_folder(path.parent)
    finally:
        temporary.unlink(missing_ok=True)
