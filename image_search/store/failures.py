"""What a failure of the data folder or of the SQLite database means, in one sentence for the person who met it.

Each is a StorageError (Fix.WRITABLE_DATA_FOLDER where the remedy is the data folder's permissions), raised in
place of the OSError or sqlite3 error, whose text alone ("database is locked", "[Errno 30] Read-only file
system") reads as a crash and names neither the file nor what to do. A failure these do not recognise stays what
it was: a bug to report.
"""

from __future__ import annotations

import errno

from ..errors import Fix, StorageError
from ..pipeline.scan import printable

_READ_ONLY = {errno.EROFS, errno.EACCES, errno.EPERM}


def data_folder_failure(error: OSError, path) -> StorageError | None:
    """An OSError met writing path in the data folder (a lock, an index file), or None when it is none of these:
    read-only or forbidden, or a full disk."""
    shown = printable(str(path))
    if error.errno in _READ_ONLY:
        return StorageError(f"The data folder cannot be written ({error.strerror or error}: {shown}); nothing was "
                            "changed.", fix=Fix.WRITABLE_DATA_FOLDER)
    if error.errno == errno.ENOSPC:
        return StorageError(f"The disk of the data folder is full (writing {shown}); nothing was changed; free "
                            "some space and try again.")
    return None


def sqlite_failure(error, path, *, waited_s: float) -> StorageError | None:
    """A sqlite3.Error as a sentence naming the database file, or None when it is not one a person can act on.

    waited_s: how long SQLite waited for a lock before giving up (the connection's timeout)."""
    message = str(error).strip()
    shown = printable(str(path))
    lowered = message.lower()
    if "locked" in lowered:  # "database is locked", "database table is locked"
        return StorageError(f"The SQLite database {shown} stayed locked by another program for {waited_s:.0f} s, "
                            "so nothing was changed; try again once that program has finished (one that keeps "
                            "the database open in a transaction, such as a database browser, must close it).")
    if "readonly" in lowered or "read-only" in lowered:  # "attempt to write a readonly database"
        return StorageError(f"The SQLite database {shown} cannot be written (it or the data folder is read-only); "
                            "nothing was changed.", fix=Fix.WRITABLE_DATA_FOLDER)
    if "malformed" in lowered or "not a database" in lowered:
        return StorageError(f"The SQLite database {shown} is damaged ({message}); whoever runs this tool must "
                            "restore it from a backup, or move it aside so that the folders can be ingested "
                            "again (the image files are not affected).")
    if "disk is full" in lowered:  # "database or disk is full"
        return StorageError(f"The disk of the SQLite database {shown} is full, so nothing was changed; free some "
                            "space and try again.")
    if "disk i/o error" in lowered:
        return StorageError(f"The SQLite database {shown} cannot be read or written (disk I/O error); check the "
                            "disk it is on.")
    return None
