"""Where a report may be written, and writing it so that nobody ever sees half of one.

A report goes to a temporary file in the target's own folder, which is renamed over the target once complete: a
reader, a crash or a full disk leaves the old file or the whole new one, never a part, and no temporary file.
"""

from __future__ import annotations

import os
import tempfile
from typing import Callable

from ..errors import InvalidInputError
from ..pipeline.scan import printable

REPORT_FORMATS = {".csv": "CSV", ".json": "JSON", ".html": "HTML"}


def report_format(path) -> str:
    """The report's format from its file name's extension: '.csv', '.json' or '.html'."""
    extension = os.path.splitext(str(path))[1].lower()
    if extension == ".htm":
        extension = ".html"
    if extension not in REPORT_FORMATS:
        shown = f"'{extension}'" if extension else "no extension"
        raise InvalidInputError(f"The report file {printable(str(path))} has {shown}; name it .csv, .json or .html "
                                "to choose the report's format.")
    return extension


def check_report_path(path) -> str:
    """The report's absolute path, after checking what can be checked before the work that fills it: a known
    extension, a folder that exists and can be written, and no folder in the file's place."""
    if path is None or not str(path).strip():
        raise InvalidInputError("No report file was given; name a .csv, .json or .html file.")
    absolute = os.path.abspath(os.path.expanduser(str(path)))
    report_format(absolute)
    folder = os.path.dirname(absolute)
    if os.path.isdir(absolute):
        raise InvalidInputError(f"The report file {printable(absolute)} is a folder; give a file name inside it.")
    if not os.path.isdir(folder):
        raise InvalidInputError(f"The folder {printable(folder)} for the report does not exist; create it or choose "
                                "another place.")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise InvalidInputError(f"The folder {printable(folder)} for the report cannot be written to; choose a "
                                "folder you can write to.")
    return absolute


def write_atomically(path: str, write: Callable, *, binary: bool = False, what: str = "the report",
                     fix: str = "choose a file in a folder you can write to, on a disk with free space") -> None:
    """Call write(handle) on a temporary file beside path, then rename it to path, so a reader (or a crash) never
    sees half a file. An OSError becomes one sentence ("Cannot write {what} ...; {fix}."), and the temporary file
    is removed whatever happens. Every file the tools write for people goes through here (reports, --json FILE)."""
    folder = os.path.dirname(os.path.abspath(path))
    temporary = None
    try:
        handle, temporary = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp", dir=folder)
        mode = "wb" if binary else "w"
        with os.fdopen(handle, mode, **({} if binary else {"encoding": "utf-8", "newline": ""})) as output:
            write(output)
            output.flush()
            os.fsync(output.fileno())
        os.replace(temporary, path)
        temporary = None
    except OSError as error:
        raise InvalidInputError(f"Cannot write {what} {printable(path)} ({error.strerror or error}); {fix}.") from None
    finally:
        if temporary is not None and os.path.exists(temporary):
            os.unlink(temporary)


def free_name(folder: str, stem: str, extensions: tuple[str, ...]) -> str:
    """folder/stem, or folder/stem-2, -3, ...: the first for which no file with any of the extensions exists, so
    that a report never replaces an earlier one."""
    candidate, number = stem, 2
    while any(os.path.exists(os.path.join(folder, candidate + extension)) for extension in extensions):
        candidate, number = f"{stem}-{number}", number + 1
    return os.path.join(folder, candidate)
