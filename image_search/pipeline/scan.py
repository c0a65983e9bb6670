"""Finding the files under a folder, and printable(): how a path found there is shown to people.

Symbolic links are not followed by default: on a seized drive they can loop or point anywhere on the machine.
With follow_symlinks, links are followed only while they stay inside the folder, and each directory is visited
once, so loops end. Each file found also carries the path the readers open (links resolved as the scan found
them), so that a link put in a file's place after the scan is refused rather than followed (pipeline/safe_open.py).
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass, field


# The store keeps times and inode numbers as 64-bit signed integers. A file touched to the year 2300 (a seized
# drive can carry any timestamp) has more nanoseconds than that holds, and an inode number may use all 64 bits.
_INT64_MIN, _INT64_MAX = -(2 ** 63), 2 ** 63 - 1


def storable_ns(nanoseconds: int) -> int:
    """A time in nanoseconds as the store keeps it: clamped to the years 1677-2262. Two times beyond that compare
    equal, so a far-future file touched again is told apart by its change time, which the kernel sets."""
    return min(max(int(nanoseconds), _INT64_MIN), _INT64_MAX)


def storable_inode(inode: int) -> int:
    """An inode number (unsigned, up to 64 bits) as a signed 64-bit integer, without loss (two's complement)."""
    inode = int(inode) & 0xFFFF_FFFF_FFFF_FFFF
    return inode - 2 ** 64 if inode > _INT64_MAX else inode


@dataclass(frozen=True)
class FileEntry:
    path: str  # absolute: what the dataset records
    size: int
    mtime_ns: int  # storable_ns
    ctime_ns: int | None = None  # storable_ns of the inode's change time
    inode: int | None = None  # storable_inode
    source: str | None = None  # the path the readers open: `path` with any followed links resolved

    @property
    def read_path(self) -> str:
        return self.source or self.path

    @classmethod
    def from_stat(cls, path: str, info: os.stat_result, source: str | None = None) -> "FileEntry":
        return cls(path, info.st_size, storable_ns(info.st_mtime_ns), storable_ns(info.st_ctime_ns),
                   storable_inode(info.st_ino), source if source and source != path else None)


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
    stack = [(root, root)]  # (the folder as found, its real path: the same unless reached through a link)
    while stack:
        directory, real_directory = stack.pop()
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
                    real = os.path.realpath(entry.path)
                    if not _inside(real, root):
                        result.symlinks_skipped += 1
                        continue
                    info = os.stat(entry.path)
                else:
                    real = os.path.join(real_directory, entry.name)
                    info = entry.stat(follow_symlinks=False)
            except OSError as error:  # broken link, vanished file, permission denied on stat
                result.problems.append((entry.path, f"cannot read file information: {error.strerror or error}"))
                continue
            if stat.S_ISDIR(info.st_mode):
                subdirs.append((entry.path, real))
            elif stat.S_ISREG(info.st_mode):
                result.files.append(FileEntry.from_stat(os.path.abspath(entry.path), info, real))
        stack.extend(sorted(subdirs, reverse=True))
    result.files.sort(key=lambda f: os.fsencode(f.path))
    return result
