"""A report as CSV: one row per image, for spreadsheets and other tools."""

from __future__ import annotations

import csv

from .table import rows_of

# A spreadsheet runs a cell that starts with one of these as a formula; EXIF text (camera, lens) and file names
# come from the evidence, so such a cell is written with a leading apostrophe, which spreadsheets show as text.
_FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def _cell(value):
    if value is None:
        return ""
    if isinstance(value, str) and value.startswith(_FORMULA_STARTS):
        return "'" + value
    return value


def write_csv(handle, report: dict) -> None:
    header, rows = rows_of(report)
    writer = csv.writer(handle)
    writer.writerow(header)
    writer.writerows([_cell(value) for value in row] for row in rows)
