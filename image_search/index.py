"""The per-dataset FAISS index files.

Each dataset owns a folder <data home>/indexes/<uid>/ holding one file per committed generation, named by its
generation number. A new generation is written to a temporary file, flushed to disk and renamed into place before
the metadata store commits that generation, so a crash at any moment leaves the committed generation's file intact;
files of other generations are leftovers and are removed by the next ingest.

Vectors are L2-normalised, so inner product is cosine similarity. Ids are the store's vector ids.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np

FLAT = "flat"


def dataset_folder(data_home: Path, uid: str) -> Path:
    return Path(data_home) / "indexes" / uid


def index_file(data_home: Path, uid: str, generation: int) -> Path:
    return dataset_folder(data_home, uid) / f"{generation:010d}.faiss"


def new_index(dim: int, kind: str = FLAT):
    import faiss

    if kind != FLAT:
        raise ValueError(f"unknown index kind {kind!r}")
    return faiss.IndexIDMap2(faiss.IndexFlatIP(dim))


def copy_index(index):
    import faiss

    return faiss.clone_index(index)


def add_vectors(index, vectors: np.ndarray, ids: np.ndarray) -> None:
    index.add_with_ids(np.ascontiguousarray(vectors, dtype=np.float32), np.ascontiguousarray(ids, dtype=np.int64))


def remove_vectors(index, ids) -> int:
    ids = np.asarray(list(ids), dtype=np.int64)
    if ids.size == 0:
        return 0
    return int(index.remove_ids(ids))


def stored_ids(index) -> np.ndarray:
    import faiss

    return faiss.vector_to_array(index.id_map).astype(np.int64)


def search(index, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    scores, ids = index.search(np.ascontiguousarray(queries, dtype=np.float32), k)
    return scores, ids


def _fsync_folder(folder: Path) -> None:
    if os.name == "nt":
        return
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_index(index, path: Path) -> None:
    """Write atomically: readers and crashes see the old file or the complete new one, never a part."""
    import faiss

    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(path.name + f".tmp-{os.getpid()}")
    try:
        faiss.write_index(index, str(temporary))
        with open(temporary, "rb+") as handle:
            os.fsync(handle.fileno())
        os.replace(temporary, path)
        _fsync_folder(path.parent)
    finally:
        if temporary.exists():
            temporary.unlink()


def read_index(path: Path):
    import faiss

    return faiss.read_index(str(path))


def remove_other_generations(data_home: Path, uid: str, keep: int) -> None:
    folder = dataset_folder(data_home, uid)
    if not folder.is_dir():
        return
    keep_name = index_file(data_home, uid, keep).name
    for entry in folder.iterdir():
        if entry.name != keep_name:
            try:
                entry.unlink()
            except OSError:
                pass


def remove_dataset_folder(data_home: Path, uid: str) -> None:
    shutil.rmtree(dataset_folder(data_home, uid), ignore_errors=True)
