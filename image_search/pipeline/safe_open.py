"""Opening a file for reading only if it is a regular file, without ever blocking (open_regular_file).

A plain open() of a FIFO waits for a writer for ever, and one of a device file may wait, rewind a tape or read
without end; a server thread or an ingest reader that meets one (a query path naming it, or a file of a seized
drive swapped for one after the scan) would hang for good. So the path is looked at first (lstat: no device is
opened in the usual case), then opened with O_NONBLOCK (a FIFO opens at once instead of waiting) and, unless asked
to follow links, O_NOFOLLOW (a file swapped for a link since it was looked at is refused, not followed), and the
opened file is checked to be the same regular file. Every refusal is an UnreadableImage whose text is the reason,
as the readers report it.
"""

from __future__ import annotations

import errno
import os
import stat
from typing import BinaryIO

from .unusable import UnreadableImage

_KINDS = ((stat.S_ISFIFO, "a FIFO (named pipe)"), (stat.S_ISCHR, "a character device"),
          (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"), (stat.S_ISDIR, "a folder"),
          (stat.S_ISLNK, "a symbolic link"))


def kind_of(mode: int) -> str:
    """What a file that is not a regular file is, in words."""
    return next((name for test, name in _KINDS if test(mode)), "a special file")


PERMISSION_DENIED = "permission denied"  # the reason given for a file this process may not read


def _os_reason(error: OSError) -> str:
    if isinstance(error, PermissionError):
        return PERMISSION_DENIED
    if isinstance(error, FileNotFoundError):
        return "file disappeared while reading"
    return error.strerror or str(error)


def open_regular_file(path, *, follow_symlinks: bool = False) -> BinaryIO:
    """The regular file at path, open for reading in binary (blocking reads, as usual for a regular file).

    follow_symlinks: open what a symbolic link at path points to (its target must be a regular file too); without
    it a link is refused. Raises UnreadableImage with the reason: not a regular file (FIFO, device, socket,
    folder, link), permission denied, gone, or another OS error.
    """
    try:
        before = os.stat(path) if follow_symlinks else os.lstat(path)
    except OSError as error:
        raise UnreadableImage(_os_reason(error)) from None
    if not stat.S_ISREG(before.st_mode):
        raise UnreadableImage(f"it is {kind_of(before.st_mode)}, not a regular file")
    flags = os.O_RDONLY | getattr(os, "O_BINARY", 0) | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOCTTY", 0)
    if not follow_symlinks:
        flags |= getattr(os, "O_NOFOLLOW", 0)
    try:
        descriptor = os.open(path, flags)
    except OSError as error:
        if error.errno == errno.ELOOP and not follow_symlinks:  # became a link after the lstat above
            raise UnreadableImage("it is a symbolic link, not a regular file") from None
        raise UnreadableImage(_os_reason(error)) from None
    try:
        after = os.fstat(descriptor)
        if not stat.S_ISREG(after.st_mode):
            raise UnreadableImage(f"it is {kind_of(after.st_mode)}, not a regular file")
        if (after.st_dev, after.st_ino) != (before.st_dev, before.st_ino):
            raise UnreadableImage("the file was replaced while it was being opened")
        if hasattr(os, "set_blocking"):
            os.set_blocking(descriptor, True)  # no effect on a regular file's reads; plain file semantics
        return os.fdopen(descriptor, "rb")
    except BaseException:
        os.close(descriptor)
        raise
