"""Errors a person can act on.

Every error raised for a user mistake or an environment problem is an ImageSearchError whose message is one
readable sentence saying what is wrong and what to do. The command-line tools print it without a traceback and
the server returns it as a 400 (or 503 for an unavailable service).

Where what to do depends on who reads it (a command-line flag for someone at the terminal, a request to the
server's operator for someone in the app), the message says only what is wrong, in plain words, and the error
carries a Fix: each face appends its own spelling of it with ImageSearchError.with_fix (cli.common.CLI_FIXES,
server.server.APP_FIXES).
"""

from __future__ import annotations

from enum import Enum
from typing import Mapping


class Fix(Enum):
    """A remedy whose wording depends on the face. The details it is spelled with are named below."""

    WEIGHTS_MISSING = "weights-missing"  # a model's pretrained weights are neither cached nor downloadable;
    #                                       details: architecture (e.g. ViT-B-32)


class ImageSearchError(Exception):
    """A problem the user can fix; str(error) is the sentence to show them (without the fix, when it has one)."""

    def __init__(self, message: str, *, fix: Fix | None = None, **fix_details: str) -> None:
        super().__init__(message)
        self.fix = fix
        self.fix_details = fix_details

    def with_fix(self, spellings: Mapping[Fix, str]) -> str:
        """The message followed by this face's spelling of the fix, a template filled in from fix_details."""
        if self.fix is None:
            return str(self)
        return f"{str(self).rstrip('.')}; {spellings[self.fix].format(**self.fix_details)}"


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


class StoreUnavailableError(ImageSearchError):
    """The metadata database cannot be reached."""


class IndexCorruptError(ImageSearchError):
    """The FAISS index and the metadata store disagree; the message names the repair command."""
