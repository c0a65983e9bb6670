"""Errors a person can act on.

Every error raised for a user mistake or an environment problem is an ImageSearchError whose message is one
readable sentence saying what is wrong and what to do. The command-line tools print it without a traceback and
the server returns it as a 400 (or 503 for an unavailable service).

Where what to do depends on who reads it (a command-line flag for someone at the terminal, a form or a request to
the server's operator for someone in the app), the error carries a Fix: str(error) spells it in the Python API's
words (API_FIXES), and each face spells it in its own with ImageSearchError.with_fix (the command line's
CLI_FIXES in image_search/command_line.py, the only module of the core that names flags; the app's APP_FIXES in
server/server.py).
"""

from __future__ import annotations

from enum import Enum
from typing import Mapping


class Fix(Enum):
    """A remedy whose wording depends on the face. The details it is spelled with are named below."""

    WEIGHTS_MISSING = "weights-missing"  # a model's pretrained weights are neither cached nor downloadable;
    #                                       details: architecture (e.g. ViT-B-32)
    WEIGHTS_FILE_MISSING = "weights-file-missing"  # the checkpoint file a model names does not exist
    USE_CPU = "use-cpu"  # a CUDA device was asked for on a machine without one
    REBUILD_WITH_FOLDER = "rebuild-with-folder"  # an ingest names a dataset that was built from another folder
    REBUILD_WITH_MODEL = "rebuild-with-model"  # an ingest names another model than its dataset's; details: model
    #                                             (the dataset's)
    USE_DATASET_MODEL = "use-dataset-model"  # a search names another model than its dataset's; details: model
    REPAIR_INDEX = "repair-index"  # a dataset's index file is missing, unreadable or disagrees with its metadata;
    #                                 details: name, root (the dataset's folder)
    KEEP_EVALUATION_DATASET = "keep-evaluation-dataset"  # a category evaluation would delete a dataset that exists
    FOLLOW_SYMLINKS = "follow-symlinks"  # an ingest did not follow symbolic links (said in its report, no error)
    FILTER_FOLDER = "filter-folder"  # a search filter's folder is not a folder inside the dataset's; details: root
    FILTER_DATE = "filter-date"  # a search filter's date cannot be read
    FILTER_SCORE = "filter-score"  # a search filter's minimum score is not a number from -1 to 1


# How a program using the Python API fixes what a Fix names (ImageSearch's arguments): what str(error) says.
API_FIXES = {
    Fix.WEIGHTS_MISSING: "connect to the internet once to download them, or copy the checkpoint file to this machine "
                         "and use the model {architecture}:/path/to/checkpoint.bin, or use the model "
                         "efficientnet-lite0 (works offline; image search only, no text search).",
    Fix.WEIGHTS_FILE_MISSING: "copy the checkpoint there or fix the path in the model name (or IMAGE_SEARCH_MODEL).",
    Fix.USE_CPU: "use the device cpu.",
    Fix.REBUILD_WITH_FOLDER: "ingest with rebuild=True to replace it with this folder, or choose another name.",
    Fix.REBUILD_WITH_MODEL: "ingest with rebuild=True to re-embed it with the new model, or name no model to keep "
                            "{model}.",
    Fix.USE_DATASET_MODEL: "name no model to use {model}.",
    Fix.REPAIR_INDEX: "repair it by ingesting {root} as '{name}' again with rebuild=True.",
    Fix.KEEP_EVALUATION_DATASET: "choose another name, or keep the dataset (keep=True) to rebuild it.",
    Fix.FOLLOW_SYMLINKS: "ingest with follow_symlinks=True to follow links that stay inside the folder",
    Fix.FILTER_FOLDER: "give SearchFilter a folder inside {root}, relative to it (e.g. DCIM) or in full.",
    Fix.FILTER_DATE: "give SearchFilter's taken_from and taken_to as dates, datetimes or text like 2023-03-01 or "
                     "2023-03-01T14:30:00.",
    Fix.FILTER_SCORE: "give SearchFilter's min_score as a number from -1 to 1 (a cosine similarity), e.g. 0.25.",
}


def spell(fix: Fix, spellings: Mapping[Fix, str], **details: str) -> str:
    """One face's spelling of a fix, its template filled in with the details."""
    return spellings[fix].format(**details)


def _with_remedy(problem: str, remedy: str) -> str:
    """One sentence: the problem's full stop becomes a semicolon (only that one: a path may end in a dot)."""
    return f"{problem[:-1] if problem.endswith('.') else problem}; {remedy}"


class ImageSearchError(Exception):
    """A problem the user can fix; str(error) is the sentence to show them: what is wrong and, for an error with
    a fix, the fix in the Python API's words."""

    def __init__(self, message: str, *, fix: Fix | None = None, **fix_details: str) -> None:
        self.problem = message  # what is wrong; with a fix, each face says what to do
        self.fix = fix
        self.fix_details = fix_details
        super().__init__(message if fix is None else _with_remedy(message, spell(fix, API_FIXES, **fix_details)))

    def with_fix(self, spellings: Mapping[Fix, str]) -> str:
        """What is wrong, followed by this face's spelling of the fix."""
        if self.fix is None:
            return str(self)
        return _with_remedy(self.problem, spell(self.fix, spellings, **self.fix_details))


class InvalidInputError(ImageSearchError):
    """The request itself is wrong (bad name, bad path, bad number)."""


class DatasetNotFoundError(InvalidInputError):
    pass


class DatasetExistsError(InvalidInputError):
    pass


class DatasetBusyError(ImageSearchError):
    """Another ingest or delete holds the dataset's lock."""


class DatasetChangedError(ImageSearchError):
    """The dataset changed (another process ingested or deleted it) while it was being read; reading it again
    gives its new state (a search does so itself: image_search/search/run.py)."""


class ModelError(ImageSearchError):
    """A model cannot be built or its weights cannot be loaded."""


class ModelMismatchError(InvalidInputError):
    pass


class UnsupportedQueryError(InvalidInputError):
    """The dataset's model cannot answer this kind of query (e.g. text on an image-only model)."""


class MissingPackageError(ImageSearchError):
    """An optional package that a feature needs (Ray, for a distributed ingest) is not installed."""


class StoreUnavailableError(ImageSearchError):
    """The metadata database cannot be reached or used (down, locked by another process, damaged)."""


class StoreUnreachableError(StoreUnavailableError):
    """The database server cannot be reached now (stopped, restarting, network): worth waiting for, which is what
    an ingest's commit does before it keeps its work for later (image_search/ingest/commit.py)."""


class DataFolderError(ImageSearchError):
    """The data folder cannot take a write: its disk is full, or it is read-only or not writable by this user
    (image_search/data_folder.py)."""


class IndexCorruptError(ImageSearchError):
    """A dataset's index file is missing or unreadable, or disagrees with the metadata (Fix.REPAIR_INDEX)."""
