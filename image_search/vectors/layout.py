"""Where a dataset's index files live in the data home.

Each dataset owns a folder <data home>/indexes/<uid>/ holding one file per committed generation, named by its
generation number. A new generation is written to a temporary file, flushed to disk and renamed into place before
the metadata store commits that generation (VectorIndex.save), so a crash at any moment leaves the committed
generation's file intact; files of other generations are leftovers and are removed by the next ingest.
"""

from __future__ import annotations

import shutil
from pathlib import Path


def dataset_folder(data_home: Path, uid: str) -> Path:
    return Path(data_home) / "indexes" / uid


def index_file(data_home: Path, uid: str, generation: int) -> Path:
    return dataset_folder(data_home, uid) / f"{generation:010d}.faiss"


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
