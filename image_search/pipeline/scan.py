"""Finding the files under a folder, and printable(): how a path found there is shown to people.

Symbolic links are not followed by default: on a seized drive they can loop or point anywhere on the machine.
With follow_symlinks, links are followed only while they stay inside the folder, and each directory is visited
once, so loops end.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass, field


@dataclass(frozen=True)
class FileEntry:
    path: str  # absolute
    size: int
    mtime_ns: int


@dataclass
class ScanResult:
    files: list[FileEntry] = field(default_factory=list)
    problems: list[tuple[str, str]] = field(default_factory=list)  # (path, reason)
    symlinks_skipped: int = 0


def printable(path: str) -> str:
    """A path as text for people: bytes that are not UTF-8 become U+FFFD."""
    return os.fsencode(path).decode("utf-8", "replace")


def absolute_path(path) -> str:
    """A path as a person gave it (~ expanded), made absolute against this process's working folder."""
    return os.path.abspath(os.path.expanduser(str(path)))


def _inside(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip(os.sep) + os.sep)


def scan_folder(root: str, *, follow_symlinks: bool = False) -> ScanResult:
    root = os.path.realpath(root)
    result = ScanResult()
    visited: set[tuple[int, int]] = set()
    stack = [root]
    while stack:
        directory = stack.pop()
        try:
            info = os.stat(directory)
            key = (info.st_dev, info.st_ino)
            if key in visited:
                continue
            visited.add(key)
            with os.scandir(directory) as entries:
                children = list(entries)
        except OSError as error:
            result.problems.append((directory, f"cannot list folder: {error.strerror or error}"))
            continue
        subdirs = []
        for entry in children:
            try:
                if entry.is_symlink():
                    if not follow_symlinks:
                        result.symlinks_skipped += 1
                        continue
                    target = os.path.realpath(entry.path)
                    if not _inside(target, root):
                        result.symlinks_skipped += 1
                        continue
                    info = os.stat(entry.path)
                else:
                    info = entry.stat(follow_symlinks=False)
            except OSError as error:  # broken link, vanished file, permission denied on stat
                result.problems.append((entry.path, f"cannot read file information: {error.strerror or error}"))
                continue
            if stat.S_ISDIR(info.st_mode):
                subdirs.append(entry.path)
            elif stat.S_ISREG(info.st_mode):
                result.files.append(FileEntry(os.path.abspath(entry.path), info.st_size, info.st_mtime_ns))
        stack.extend(sorted(subdirs, reverse=True))
    result.files.sort(key=lambda f: os.fsencode(f.path))
    return result
