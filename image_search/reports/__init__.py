"""Reports of a search or of a dataset's duplicates, as CSV, JSON or one self-contained HTML page.

A report is a dict: search_report() makes one from a search's results (SearchResult.to_dict(), from this process
or from a server), Duplicates.to_dict() is one. write_report() writes it in the format its file name's extension
names, through a temporary file that is renamed (files.py); write_report_files() writes the HTML page and a CSV
beside it into a folder (the server's report task).

- files.py: checking a report's path first, atomic writes, names that never replace an earlier report
- table.py, csv_report.py: the rows and columns; json_report.py; html_report.py with thumbnails.py
"""

from __future__ import annotations

import hashlib
import os
from datetime import datetime

from ..errors import InvalidInputError
from ..pipeline.scan import printable
from .files import REPORT_FORMATS, check_report_path, free_name, report_format, write_atomically

__all__ = ["REPORT_FORMATS", "check_report_path", "report_format", "search_report", "write_report",
           "write_report_files"]


def now() -> str:
    """This moment as ISO local time with its offset, as reports show when a search ran."""
    return datetime.now().astimezone().isoformat(timespec="seconds")


def file_sha256(path: str) -> str | None:
    digest = hashlib.sha256()
    try:
        with open(path, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    except OSError:
        return None
    return digest.hexdigest()


def search_report(results: list[dict], *, dataset: str, model: str, text: str | None = None,
                  image: str | None = None, searched_at: str | None = None) -> dict:
    """The report of one search: its results as SearchResult.to_dict() gives them, what was asked (text, or the
    query image, whose SHA-256 is taken here), the dataset, its model, when (default now) and this tool's
    version."""
    from .. import __version__

    if (text is None) == (image is None):
        raise ValueError("a search report names either the text or the image of its query")
    query = {"text": text} if text is not None else {"image": printable(os.path.abspath(image)),
                                                     "sha256": file_sha256(os.path.abspath(image))}
    return {"kind": "search", "dataset": dataset, "model": model, "query": query,
            "searched_at": searched_at or now(), "version": __version__, "results": list(results)}


def write_report(path, report: dict) -> str:
    """Write the report to path in the format of its extension (.csv, .json, .html); the absolute path."""
    from .csv_report import write_csv
    from .html_report import write_html
    from .json_report import write_json

    path = check_report_path(path)
    writer = {".csv": write_csv, ".json": write_json, ".html": write_html}[report_format(path)]
    write_atomically(path, lambda handle: writer(handle, report))
    return path


def write_report_files(folder, report: dict) -> tuple[str, str]:
    """Write the report as an HTML page and a CSV beside it into folder, under a name made of what it reports and
    when ('search-case4711-20250302-101407'), never replacing an earlier report: (HTML path, CSV path)."""
    if folder is None or not str(folder).strip():
        raise InvalidInputError("No folder was given for the report; choose the folder to write it to.")
    folder = os.path.abspath(os.path.expanduser(str(folder)))
    if not os.path.isdir(folder):
        raise InvalidInputError(f"The folder {printable(folder)} for the report does not exist; choose an existing "
                                "folder.")
    when = report.get("searched_at") or report.get("found_at") or now()
    stamp = when[:19].replace("-", "").replace(":", "").replace("T", "-")
    stem = free_name(folder, f"{report['kind']}-{report['dataset']}-{stamp}", (".html", ".csv"))
    html_path = write_report(stem + ".html", report)
    try:
        csv_path = write_report(stem + ".csv", report)
    except InvalidInputError:
        os.unlink(html_path)  # both or neither
        raise
    return html_path, csv_path
