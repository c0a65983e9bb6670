"""The one entry point that the command-line tools and the server share: ImageSearch.

It ingests folders into datasets, searches them by text, by example image or with query vectors, lists and
deletes them, and runs the retrieval evaluations. It holds the settings, the metadata store and every cache of
the process that holds it: the loaded models, the loaded indexes and the vectors of recent text queries. Models
and indexes are loaded once and reused; an index is reloaded only when its dataset changes.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from . import vectors
from .config import DEFAULT_NUM_RESULTS, Settings, load_settings
from .runtime.threads import run_in_passing_thread
from .errors import DataFolderError, DatasetChangedError, Fix, IndexCorruptError
from .datasets.locks import dataset_lock
from .models import Embedder, ModelCache, check_weights_obtainable, model_supports_text, parse_model_name
from .datasets.names import validate_dataset_name
from .search import (SearchFilter, SearchResults, Selections, TextVectorCache, search_by_image, search_by_text,
                     search_vectors)
from .store import DatasetRecord, MetadataStore, open_store
from .vectors import UnreadableIndexFile, VectorIndex

if TYPE_CHECKING:  # imported when first used: a search or a listing starts without the ingest pipeline
    from .duplicates import Duplicates
    from .ingest import IngestReport
    from .retrieval_quality import CategoryRetrievalResult, SelfRetrievalResult


@dataclass
class LoadedIndex:
    record: DatasetRecord
    index: VectorIndex
    selections: Selections = field(default_factory=Selections)  # the ids recent filters allowed in this state


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

    @classmethod
    def open(cls, data_home: str | os.PathLike | None = None, model: str | None = None, device: str | None = None,
             *, map_indexes: bool = False) -> ImageSearch:
        """A service with the settings of the environment (and .env), where data_home (the data folder), model
        (for new datasets) and device (cpu, cuda, cuda:N) override them when given."""
        return cls(load_settings(data_home=data_home, model_name=model, device=device), map_indexes=map_indexes)

    # -- ingest and search ------------------------------------------------------------------------------------
    def ingest(self, folder, name: str, *, model: str | None = None, batch_size: int | None = None,
               workers: int | None = None, rebuild: bool = False, follow_symlinks: bool = False,
               progress: bool = True, own_thread: bool = False, ray: bool | str = False,
               verify: bool = False) -> IngestReport:
        """Ingest the images under folder (recursively) as dataset name: created, or updated incrementally.

        model: for a new dataset (default: the settings'); an existing one keeps its own unless rebuilt.
        rebuild: embed everything again (to switch model or folder). own_thread: run on a thread that ends with
        the ingest, so that the model's OpenMP workers end too (for a process whose threads live on, such as a
        server's request threads: image_search/cpu_threads.py). ray: embed on a Ray cluster (ingest/ray_embed.py):
        True joins the settings' cluster (IMAGE_SEARCH_RAY_ADDRESS) or, without one, starts Ray on this machine;
        a string is the address of the cluster to join ("local" starts one here). verify: read every unchanged
        file and compare its SHA-256 with the one recorded at its ingest; files whose content changed under the
        same size and times are embedded again (ingest/verify.py).
        """
        from .ingest import check_input_folder, embed_locally, ingest_folder

        def run() -> IngestReport:
            ingest = partial(ingest_folder, self, folder, name, model_name=model, batch_size=batch_size,
                             workers=workers, rebuild=rebuild, follow_symlinks=follow_symlinks, progress=progress,
                             verify=verify)
            if not ray:
                return ingest(embed=embed_locally)
            from .ingest.ray_embed import RayEmbedding, import_ray

            import_ray()  # said at once when it is missing, as are a bad name and folder: before Ray starts
            validate_dataset_name(name)
            check_input_folder(folder)
            on_ray = RayEmbedding(self.settings.ray_address if ray is True else ray, device=self.settings.device)
            try:
                return ingest(embed=on_ray)
            finally:
                on_ray.close()

        return run_in_passing_thread(run) if own_thread else run()

    def search_text(self, name: str, text: str, k=DEFAULT_NUM_RESULTS, *, model: str | None = None,
                    filters: SearchFilter | None = None, collapse_duplicates: bool = False) -> SearchResults:
        """The k images of the dataset that best match the text, best first (model: refused unless it is the
        dataset's own).

        filters: only images that pass it (SearchFilter: folder, dates taken, camera, format, minimum score),
        still k of them when that many pass. collapse_duplicates: exact copies (same SHA-256) once, the others'
        paths in SearchResult.duplicates. When there are no results, or fewer than k, the list's `note` says why
        in one sentence (e.g. that no image passes the filters); that is never an error."""
        return search_by_text(self, name, text, k, model_name=model, filters=filters,
                              collapse_duplicates=collapse_duplicates)

    def search_image(self, name: str, path, k=DEFAULT_NUM_RESULTS, *, model: str | None = None,
                     filters: SearchFilter | None = None, collapse_duplicates: bool = False) -> SearchResults:
        """The k images of the dataset most similar to the image file at path, best first (filters and
        collapse_duplicates as for search_text)."""
        return search_by_image(self, name, path, k, model_name=model, filters=filters,
                               collapse_duplicates=collapse_duplicates)

    def search_vectors(self, name: str, queries: np.ndarray, k: int, filters: SearchFilter | None = None,
                       collapse_duplicates: bool = False) -> list[SearchResults]:
        """The k best images for each query vector (made by the dataset's own model)."""
        return search_vectors(self, name, queries, k, filters, collapse_duplicates)

    def find_duplicates(self, name: str, threshold: float | None = None, exact_only: bool = False, *,
                        own_thread: bool = False) -> Duplicates:
        """The dataset's groups of exact copies (same SHA-256) and, unless exact_only, of near-copies: images whose
        embeddings reach `threshold` cosine similarity (default: the one measured for the dataset's model family),
        largest groups first (image_search/duplicates). own_thread: as for ingest (the neighbour search runs on
        every core, and its OpenMP workers should end with it)."""
        from .duplicates import find_duplicates

        run = partial(find_duplicates, self, name, threshold, exact_only=exact_only)
        return run_in_passing_thread(run) if own_thread else run()

    # -- evaluations ------------------------------------------------------------------------------------------
    def evaluate_self_retrieval(self, folder, name: str, *, model: str | None = None, batch_size: int | None = None,
                                workers: int | None = None, progress: bool = False) -> SelfRetrievalResult:
        """Query dataset name with every image of folder (ingesting it as name first if name is new): how often
        each image finds itself (image_search/retrieval_quality.py)."""
        from .retrieval_quality import evaluate_self_retrieval

        return evaluate_self_retrieval(self, folder, name, model_name=model, batch_size=batch_size, workers=workers,
                                       progress=progress)

    def evaluate_categories(self, folder, name: str | None = None, *, keep: bool = False, model: str | None = None,
                            batch_size: int | None = None, workers: int | None = None,
                            progress: bool = False) -> CategoryRetrievalResult:
        """Ingest folder/train, query it with every folder/val image and score the results by category
        (image_search/retrieval_quality.py); the dataset is a throwaway unless keep."""
        from .retrieval_quality import evaluate_categories

        return evaluate_categories(self, folder, name, keep=keep, model_name=model, batch_size=batch_size,
                                   workers=workers, progress=progress)

    # -- models -----------------------------------------------------------------------------------------------
    @property
    def default_model(self) -> str:
        """The model new datasets are built with."""
        return self.settings.default_model

    def model(self, name: str) -> Embedder:
        """The model with this name on the settings' device, loaded once."""
        return self.models.load(name, self.settings.device)

    def prepare_model(self, name: str) -> None:
        """Load the model and ready its image tower ahead of the first search (a server's warm-up)."""
        self.model(name).prepare_image_tower()

    def check_default_model_weights(self) -> None:
        """Raise ModelError (Fix.WEIGHTS_MISSING) when the default model's weights are neither on this machine nor
        downloadable now; it takes about a second and loads nothing (models.check_weights_obtainable)."""
        check_weights_obtainable(parse_model_name(self.default_model))

    @staticmethod
    def answers_text(dataset_or_model: DatasetRecord | str) -> bool:
        """Whether a dataset (by its model) or a model can be searched by text, without loading the model."""
        return model_supports_text(dataset_or_model.model if isinstance(dataset_or_model, DatasetRecord)
                                   else dataset_or_model)

    @staticmethod
    def canonical_model_name(name: str) -> str:
        """A model's name as datasets record it (e.g. a weights path made absolute)."""
        return parse_model_name(name).name

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

    @property
    def store_description(self) -> str:
        """Where the metadata lives, in words (a database server or the SQLite file)."""
        return self.store.description

    def lock(self, name: str, action: str):
        return dataset_lock(self.data_home, name, action=action)

    def close(self) -> None:
        if self._store is not None:
            self._store.close()

    # -- datasets ---------------------------------------------------------------------------------------------
    def datasets(self) -> list[DatasetRecord]:
        return self.store.list_datasets()

    def dataset(self, name: str) -> DatasetRecord:
        """The dataset's record; DatasetNotFoundError names the datasets there are."""
        return self.store.require_dataset(validate_dataset_name(name))

    def find_dataset(self, name: str) -> DatasetRecord | None:
        return self.store.get_dataset(validate_dataset_name(name))

    def delete(self, name: str) -> DatasetRecord:
        name = validate_dataset_name(name)
        with self.lock(name, "delete"):
            try:
                record = self.store.delete_dataset(name)
            except DataFolderError:
                # A full disk: SQLite needs room in its journal even to delete rows. The index files, most of a
                # dataset's space, go first, with the room the store keeps for this (store/sqlite.py), then the
                # rows; should that still fail, the dataset stays listed without its index (its searches say so),
                # to be deleted again once there is room.
                vectors.layout.remove_dataset_folder(self.data_home, self.store.require_dataset(name).uid)
                self.store.free_room()
                record = self.store.delete_dataset(name)
                self.store.keep_room()
            vectors.layout.remove_dataset_folder(self.data_home, record.uid)
            from .ingest.checkpoint import discard_checkpoints  # here: a search starts without the ingest modules

            discard_checkpoints(self.data_home, name)  # an interrupted ingest's work on it
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
        """The index of the dataset state `record` describes, checked against it and against its file's seal
        (image_search/vectors/seal.py; cached until the dataset changes). Raises IndexCorruptError when the file is
        missing, damaged or not this state's, DatasetChangedError when an ingest replaced that state while its file
        was being read."""
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
        sealed = vectors.seal.seal_problem(path, record.uid, record.generation, loaded_index.file_digest)
        if sealed is not None:
            raise IndexCorruptError(f"The index file of dataset '{record.name}' ({path}) {sealed}.",
                                    **repair_fix(record))
        verify_index(record, loaded_index, path)
        vectors.seal.trust_on_first_load(path, record.uid, record.generation, loaded_index.file_digest)
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
