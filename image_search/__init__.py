"""image-search: semantic image search over folders of images with CLIP, FAISS and a metadata store.

The public API, and all that the command-line tools and the server use:

    from image_search import ImageSearch
    search = ImageSearch.open()                 # settings from the environment and .env
    report = search.ingest("/cases/4711/photos", "case4711")
    for result in search.search_text("case4711", "red car at night", 5):
        print(result.score, result.path)

ImageSearch (service.py) ingests, searches, lists, deletes and evaluates; what it returns (IngestReport,
SearchResult, DatasetRecord, the evaluation results) and what it raises (ImageSearchError and its kinds, with a
Fix that each face spells in its own words) are named here too, with the pieces that programs started from a
command line share (command_line.py).
"""

from __future__ import annotations

import importlib

__version__ = "1.0.0"

# Each name is imported from its module when first used: `import image_search` stays light (the command-line
# tools' --help and argument errors need only the parser), while the service pulls in numpy and the store.
_PUBLIC = {
    "service": ["ImageSearch"],
    "ingest": ["IngestReport"],
    "search": ["SearchFilter", "SearchResult", "SearchResults", "check_num_results"],
    "store": ["DatasetRecord", "ImageFacts"],
    "duplicates": ["DuplicateGroup", "Duplicates"],
    "reports": ["REPORT_FORMATS", "check_report_path", "search_report", "write_atomically", "write_report",
                "write_report_files"],
    "retrieval_quality": ["CategoryRetrievalResult", "KEPT_CATEGORY_DATASET", "SelfRetrievalResult"],
    "errors": ["API_FIXES", "DataFolderError", "DatasetBusyError", "DatasetChangedError", "DatasetExistsError",
               "DatasetNotFoundError", "Fix", "ImageSearchError", "IndexCorruptError", "InvalidInputError",
               "MissingPackageError", "ModelError", "ModelMismatchError", "StoreUnavailableError",
               "StoreUnreachableError", "UnsupportedQueryError"],
    "pipeline.scan": ["absolute_path", "printable"],
    "discovery": ["ServerRefusal", "find_server", "search_on_server"],
    "access.tokens": ["AccessToken", "access_token", "same_token", "token_in"],
    "access.hosts": ["HostRule", "listens_beyond_this_machine", "reachable_addresses"],
    "config": ["DEFAULT_MODEL", "DEFAULT_NUM_RESULTS", "load_settings"],
    "command_line": ["CLI_FIXES", "MODEL_HELP", "ToolParser", "add_common_flags", "cli_message", "open_from_flags",
                     "run_tool"],
}
_MODULE_OF = {name: module for module, names in _PUBLIC.items() for name in names}

# discovery is public as a module: the server announces itself through it and cli_search finds the server by it
_PUBLIC_MODULES = {"discovery"}

__all__ = ["__version__", *sorted(_MODULE_OF), *sorted(_PUBLIC_MODULES)]


def __getattr__(name: str):
    if name in _PUBLIC_MODULES:
        return importlib.import_module(f".{name}", __name__)
    module = _MODULE_OF.get(name)
    if module is None:
        raise AttributeError(f"module 'image_search' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value  # asked once
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_MODULE_OF, *_PUBLIC_MODULES})
