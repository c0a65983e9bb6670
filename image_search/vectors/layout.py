"""Where a dataset's index files live in the data home.

Each dataset owns a folder <data home>/indexes/<uid>/ holding one file per committed generation, named by its
generation number, and its seal beside it (seal.py). A new generation is written to a temporary file, flushed to
disk and renamed into place, then sealed, before the metadata store commits that generation (VectorIndex.save), so
a crash at any moment leaves the committed generation's files intact; files of other generations are leftovers
and are removed by the next ingest.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from .seal import seal_path


def dataset_folder(data_home: Path, uid: str) -> Path:
    return Path(data_home) / "indexes" / uid


def index_file(data_home: Path, uid: str, generation: int) -> Path:
    return dataset_folder(data_home, uid) / f"{generation:010d}.faiss"


def remove_other_generations(data_home: Path, uid: str, keep: int) -> None:
    folder = dataset_folder(data_home, uid)
    if not folder.is_dir():
        return
    kept = index_file(data_home, uid, keep)
    keep_names = {kept.name, seal_path(kept).name}
    for entry in folder.iterdir():
        if entry.name not in keep_names:
            try:
                entry.unlink()
            except OSError:
                pass


def remove_dataset_folder(data_home: Path, uid: str) -> None:
    shutil.rmtree(dataset_folder(data_home, uid), ignore_errors=True)
