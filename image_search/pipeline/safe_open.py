"""Opening a file that must be a regular file: never blocking on a FIFO or a device, never following a link the
caller did not ask to follow.

Between the scan of a folder and the read of a file, the file can be replaced: by a FIFO (an open() of it waits
for a writer for ever) or by a symbolic link to anything on the machine. So a file is opened without blocking and
without following a final link, and the descriptor that was opened, not the name, is checked to be a regular file.
open_scanned_file also checks that the file opened lies exactly at the path the scan found (no link in any part
of it), which stops a folder swapped for a link after the scan too.
"""

from __future__ import annotations

import errno
import os
import stat
from typing import BinaryIO

_KINDS = ((stat.S_ISDIR, "a folder"), (stat.S_ISFIFO, "a FIFO (named pipe)"), (stat.S_ISSOCK, "a socket"),
          (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"))


class NotARegularFile(OSError):
    """The path is not (or no longer) a regular file; str() is the reason in words."""


def open_regular_file(path, *, follow_symlinks: bool = False) -> BinaryIO:
    """The file at path, opened for reading in binary, when it is a regular file; raises NotARegularFile (a link
    not followed, a FIFO, a device, a folder) or the OSError of the open (missing, permission denied)."""
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_BINARY", 0)
    if not follow_symlinks:
        flags |= getattr(os, "O_NOFOLLOW", 0)
    try:
        descriptor = os.open(path, flags)
    except OSError as error:
        # O_NOFOLLOW on a link fails with ELOOP (Linux, macOS) or EMLINK (FreeBSD)
        if not follow_symlinks and error.errno in (errno.ELOOP, errno.EMLINK) and os.path.islink(path):
            raise NotARegularFile("it is a symbolic link, which is not followed") from None
        raise
    try:
        mode = os.fstat(descriptor).st_mode
        if not stat.S_ISREG(mode):
            kind = next((name for test, name in _KINDS if test(mode)), "not a regular file")
            raise NotARegularFile(f"it is {kind}, not a regular file")
        if hasattr(os, "set_blocking"):
            os.set_blocking(descriptor, True)  # reads of a regular file never wait anyway; this keeps it plain
        return os.fdopen(descriptor, "rb")
    except BaseException:
        os.close(descriptor)
        raise


def open_scanned_file(path: str) -> BinaryIO:
    """A file the scan found (pipeline/scan.py: FileEntry.read_path, an absolute path without links), opened
    with open_regular_file, and refused when what was opened is not exactly there: some part of the path was
    replaced by a link since the scan."""
    handle = open_regular_file(path)
    try:
        opened = _opened_path(handle.fileno())
        if opened is not None and opened.endswith(" (deleted)") and opened != path:
            raise FileNotFoundError(errno.ENOENT, "file disappeared while reading", path)
        if opened is not None and opened != path:
            raise NotARegularFile("a folder on its path was replaced by a symbolic link after the folder was "
                                  "scanned; not followed")
        return handle
    except BaseException:
        handle.close()
        raise


def read_scanned_file(path: str, *, whole: bool, head: int = 16) -> bytes:
    """The bytes of a file the scan found, with open_scanned_file's checks, in the fewest system calls: open,
    fstat, readlink, one read, close. The threaded reader (thread_reader.py) reads thousands of files a second, and
    each system call hands the interpreter lock to another thread and waits to get it back: through
    open_scanned_file and a file object a read takes eleven. whole: read the whole file; otherwise only its first
    `head` bytes (a file whose name does not claim an image: its content decides whether the rest is read)."""
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_BINARY", 0) \
        | getattr(os, "O_NOFOLLOW", 0)
    try:
        descriptor = os.open(path, flags)
    except OSError as error:
        if error.errno in (errno.ELOOP, errno.EMLINK) and os.path.islink(path):
            raise NotARegularFile("it is a symbolic link, which is not followed") from None
        raise
    try:
        status = os.fstat(descriptor)
        if not stat.S_ISREG(status.st_mode):
            kind = next((name for test, name in _KINDS if test(status.st_mode)), "not a regular file")
            raise NotARegularFile(f"it is {kind}, not a regular file")
        opened = _opened_path(descriptor)
        if opened is not None and opened.endswith(" (deleted)") and opened != path:
            raise FileNotFoundError(errno.ENOENT, "file disappeared while reading", path)
        if opened is not None and opened != path:
            raise NotARegularFile("a folder on its path was replaced by a symbolic link after the folder was "
                                  "scanned; not followed")
        if not whole:
            return os.read(descriptor, head)
        data = os.read(descriptor, status.st_size + 1)  # one more byte: a file that grew since is read to its end
        if len(data) > status.st_size:
            rest = [data]
            while chunk := os.read(descriptor, 1 << 20):
                rest.append(chunk)
            data = b"".join(rest)
        return data
    finally:
        os.close(descriptor)


def _opened_path(descriptor: int) -> str | None:
    """Where an open descriptor's file lies, with every link resolved (Linux: /proc/self/fd); None where the
    system does not say."""
    try:
        return os.readlink(f"/proc/self/fd/{descriptor}")
    except OSError:
        return None
