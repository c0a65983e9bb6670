"""Errors a person can act on.

Every error raised for a user mistake or an environment problem is an ImageSearchError whose message is one
readable sentence saying what is wrong and what to do. The command-line tools print it without a traceback and
the server returns it as a 400 (or 503 for an unavailable service).
"""


class ImageSearchError(Exception):
    """A problem the user can fix; str(error) is the sentence to show them."""


class InvalidInputError(ImageSearchError):
    """The request itself is wrong (bad name, bad path, bad number)."""


class DatasetNotFoundError(InvalidInputError):
    pass


class DatasetExistsError(InvalidInputError):
    pass


class DatasetBusyError(ImageSearchError):
    """Another ingest or delete holds the dataset's lock."""


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
