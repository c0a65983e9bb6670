"""The seal of an index file: the dataset and generation it was written for, its size and its SHA-256, in a small
JSON file beside it (<generation>.seal.json), written with it and checked whenever it is loaded.

Count and dimension alone let a wrong file load without a word: another dataset's index of equal count copied over
it, bytes zeroed inside it by a failing disk, an older generation restored from a backup. The SHA-256 is computed
while the file is written and while it is read (FaissIndex: 1.3 GB/s on the 2-core machine, so 0.3 s for a
400 MB index; the file is read once either way). A search that maps the file instead of reading it (the
command-line search, image_search.vectors.FaissIndex.load) hashes files up to MAPPED_DIGEST_LIMIT; a larger mapped
file is checked by its seal's dataset, generation and size only, since hashing it would read what mapping saves.

An index file written before seals existed has none: it is checked against the metadata as before and, when
that passes, its seal is written then (trust on first load), so every later load checks it.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

SEAL_SUFFIX = ".seal.json"
MAPPED_DIGEST_LIMIT = 64 * 1024 * 1024  # a flat index of 30k 512-d vectors; hashing it takes about 0.05 s
_FORMAT = 1


@dataclass(frozen=True)
class FileDigest:
    size: int  # bytes
    sha256: str | None  # hex; None when the file was mapped and not hashed (see MAPPED_DIGEST_LIMIT)


class Hasher:
    """Counts and hashes bytes as they are written or read."""

    def __init__(self) -> None:
        self._hash = hashlib.sha256()
        self.size = 0

    def update(self, data) -> None:
        self._hash.update(data)
        self.size += len(data)

    def digest(self) -> FileDigest:
        return FileDigest(self.size, self._hash.hexdigest())


def digest_of_file(path: Path, *, limit: int | None = None) -> FileDigest:
    """The file's size and SHA-256 (the SHA-256 only when the file is at most `limit` bytes)."""
    size = os.stat(path).st_size
    if limit is not None and size > limit:
        return FileDigest(size, None)
    hasher = Hasher()
    with open(path, "rb") as handle:
        while block := handle.read(1 << 20):
            hasher.update(block)
    return hasher.digest()


@dataclass(frozen=True)
class Seal:
    uid: str  # the dataset's uid
    generation: int
    size: int
    sha256: str


def seal_path(index_path: Path) -> Path:
    index_path = Path(index_path)
    return index_path.with_name(index_path.stem + SEAL_SUFFIX)


def write_seal(index_path: Path, seal: Seal) -> None:
    """Atomically, and flushed to disk: a crash leaves the old seal or the new one."""
    path = seal_path(index_path)
    temporary = path.with_name(path.name + f".tmp-{os.getpid()}")
    try:
        with open(temporary, "w", encoding="utf-8") as handle:
            json.dump({"format": _FORMAT, "uid": seal.uid, "generation": seal.generation, "size": seal.size,
                       "sha256": seal.sha256}, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    finally:
        if temporary.exists():
            temporary.unlink()


class DamagedSeal(Exception):
    """The seal file exists but cannot be read as one."""


def read_seal(index_path: Path) -> Seal | None:
    """The seal beside the index file; None when there is none (written before seals existed)."""
    path = seal_path(index_path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        return Seal(str(data["uid"]), int(data["generation"]), int(data["size"]), str(data["sha256"]))
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise DamagedSeal(f"{path}: {error}") from None


def seal_problem(index_path: Path, uid: str, generation: int, digest: FileDigest | None) -> str | None:
    """What is wrong with a loaded index file by its seal, as the end of a sentence about the file ('is damaged:
    ...'); None when it is the file written for this dataset and generation, or when it has no seal."""
    try:
        seal = read_seal(index_path)
    except DamagedSeal:
        return f"has a damaged seal ({seal_path(index_path).name}), so it cannot be told to be this dataset's"
    if seal is None:
        return None
    if seal.uid != uid:
        return (f"belongs to another dataset (it was written for the dataset with uid {seal.uid}): it was copied "
                "over this one's")
    if seal.generation != generation:
        age = "an older" if seal.generation < generation else "another"
        return (f"is from {age} state of this dataset (generation {seal.generation}; the metadata is at "
                f"generation {generation}), restored from a backup perhaps")
    if digest is None:
        return None
    if digest.size != seal.size:
        return f"is damaged: it holds {digest.size} bytes where {seal.size} were written"
    if digest.sha256 is not None and digest.sha256 != seal.sha256:
        return "is damaged: its content is not what was written (its SHA-256 differs)"
    return None


def trust_on_first_load(index_path: Path, uid: str, generation: int, digest: FileDigest | None) -> None:
    """Seal an index file that has no seal (written before seals existed) once it has loaded and matched its
    metadata. A data folder that cannot be written is left as it is: the file is then checked as before."""
    if digest is None or digest.sha256 is None:
        return
    try:
        if read_seal(index_path) is None:
            write_seal(index_path, Seal(uid, generation, digest.size, digest.sha256))
    except (OSError, DamagedSeal):
        pass


def save_sealed(index, index_path: Path, uid: str, generation: int) -> FileDigest:
    """Write the index (VectorIndex.save) and then its seal, for the dataset `uid` at `generation`."""
    digest = index.save(index_path)
    write_seal(index_path, Seal(uid, generation, digest.size, digest.sha256))
    return digest
