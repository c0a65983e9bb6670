"""The one entry point that the command-line tools and the server share.

An ImageSearch holds the settings, the metadata store and every cache of the process that holds it: the loaded
models, the loaded indexes and the vectors of recent text queries. Models and indexes are loaded once and reused;
an index is reloaded only when its dataset changes.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path

from . import vectors
from .config import Settings, load_settings
from .errors import DatasetChangedError, Fix, IndexCorruptError
from .locks import dataset_lock
from .models import Embedder, ModelCache
from .names import validate_dataset_name
from .search import TextVectorCache
from .store import DatasetRecord, MetadataStore, open_store
from .vectors import UnreadableIndexFile, VectorIndex


@dataclass
class LoadedIndex:
    record: DatasetRecord
    index: VectorIndex


class ImageSearch:
    def __init__(self, settings: Settings | None = None, store: MetadataStore | None = None, *,
                 map_indexes: bool = False, models: ModelCache | None = None) -> None:
        """map_indexes: map index files instead of reading them (image_search.vectors.FaissIndex.load), for a process
        that searches once and never ingests (the command-line search). models: the model cache to use, for
        services that share their models (by default each service loads its own)."""
        self.settings = settings or load_settings()
        self.map_indexes = map_indexes
        self.data_home: Path = self.settings.data_home
        self.models = models or ModelCache()
        self.text_vectors = TextVectorCache()
        self._store = store
        self._store_lock = threading.Lock()
        self._indexes: dict[str, LoadedIndex] = {}
        self._indexes_lock = threading.Lock()

    # -- shared resources -------------------------------------------------------------------------------------
    @property
    def store(self) -> MetadataStore:
        if self._store is None:
            with self._store_lock:
                if self._store is None:
                    store = open_store(self.settings.database, self.data_home)
                    store.ensure_schema()
                    self._store = store
        return self._store

    def model(self, name: str) -> Embedder:
        return self.models.load(name, self.settings.device)

    def lock(self, name: str, action: str):
        return dataset_lock(self.data_home, name, action=action)

    def close(self) -> None:
        if self._store is not None:
            self._store.close()

    # -- datasets ---------------------------------------------------------------------------------------------
    def datasets(self) -> list[DatasetRecord]:
        return self.store.list_datasets()

    def dataset(self, name: str) -> DatasetRecord:
        return self.store.require_dataset(validate_dataset_name(name))

    def delete(self, name: str) -> DatasetRecord:
        name = validate_dataset_name(name)
        with self.lock(name, "delete"):
            record = self.store.delete_dataset(name)
            vectors.layout.remove_dataset_folder(self.data_home, record.uid)
        self.forget_index(name)
        return record

    # -- indexes ----------------------------------------------------------------------------------------------
    def forget_index(self, name: str) -> None:
        with self._indexes_lock:
            self._indexes.pop(name, None)

    def cached_index(self, name: str) -> LoadedIndex | None:
        with self._indexes_lock:
            return self._indexes.get(name)

    def load_index(self, name: str) -> LoadedIndex:
        """The dataset's committed index, checked against its metadata (cached until the dataset changes)."""
        return self.index_of(self.dataset(name))

    def index_of(self, record: DatasetRecord) -> LoadedIndex:
        """The index of the dataset state `record` describes, checked against it (cached until the dataset
        changes). Raises DatasetChangedError when an ingest replaced that state while its file was being read."""
        cached = self.cached_index(record.name)
        if cached and cached.record.uid == record.uid and cached.record.generation == record.generation:
            return cached
        path = vectors.layout.index_file(self.data_home, record.uid, record.generation)
        try:
            loaded_index = vectors.load_index(path, mapped=self.map_indexes)
        except UnreadableIndexFile:
            if not path.exists():
                current = self.store.get_dataset(record.name)
                if current is None or (current.uid, current.generation) != (record.uid, record.generation):
                    raise DatasetChangedError(f"Dataset '{record.name}' changed while it was being read; try "
                                              "again.") from None
                raise IndexCorruptError(f"The index file of dataset '{record.name}' ({path}) is missing.",
                                        **repair_fix(record)) from None
            raise IndexCorruptError(f"The index file of dataset '{record.name}' ({path}) cannot be read.",
                                    **repair_fix(record)) from None
        verify_index(record, loaded_index, path)
        loaded_index.set_search_effort(nprobe=self.settings.index.nprobe, ef_search=self.settings.index.ef_search)
        loaded = LoadedIndex(record, loaded_index)
        with self._indexes_lock:
            self._indexes[record.name] = loaded
        return loaded


def verify_index(record: DatasetRecord, loaded_index: VectorIndex, path: Path) -> None:
    problems = []
    if loaded_index.dim != record.dim:
        problems.append(f"index has {loaded_index.dim}-d vectors, metadata says {record.dim}-d")
    if loaded_index.count != record.image_count:
        problems.append(f"index holds {loaded_index.count} vectors, metadata lists {record.image_count} images")
    if problems:
        raise IndexCorruptError(f"The index of dataset '{record.name}' does not match its metadata "
                                f"({'; '.join(problems)}).", **repair_fix(record))


def repair_fix(record: DatasetRecord) -> dict:
    return {"fix": Fix.REPAIR_INDEX, "name": record.name, "root": record.root}
