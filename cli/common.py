"""What every command-line tool shares: --json output and tables, and (from image_search, shared with the
server's start) the parser whose mistakes are one line, the common flags, the fixes in flags and run_tool."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
from typing import Callable

from image_search import (CLI_FIXES, InvalidInputError, ToolParser, add_common_flags, cli_message, open_from_flags,
                          run_tool)

__all__ = ["CLI_FIXES", "ToolParser", "add_common_flags", "add_export_flag", "add_json_flag", "cli_message",
           "export_report", "format_table", "json_to_stdout", "open_from_flags", "print_result", "run_tool",
           "text_to_stderr_under_json", "write_json_file"]

JSON_TO_STDOUT = "-"  # --json without FILE (or with "-"): JSON on stdout instead of the text


def _json_target(text: str) -> str:
    """--json FILE: checked when the command starts, so a long run never fails at its very end."""
    if text == JSON_TO_STDOUT:
        return text
    folder = os.path.dirname(os.path.abspath(text))
    if os.path.isdir(text):
        raise argparse.ArgumentTypeError(f"'{text}' is a folder; give a file name for the JSON")
    if not os.path.isdir(folder):
        raise argparse.ArgumentTypeError(f"the folder {folder} for the JSON file does not exist")
    return text


def add_json_flag(parser: argparse.ArgumentParser, what: str = "the results") -> None:
    """The one meaning of --json in every tool: --json prints JSON to stdout instead of the text; --json FILE
    prints the text as usual and also writes the JSON to FILE."""
    parser.add_argument("--json", nargs="?", const=JSON_TO_STDOUT, default=None, type=_json_target,
                        metavar="FILE",
                        help=f"{what} as JSON: without FILE printed instead of the text; with FILE written to FILE "
                             "as well as the text")


def _export_target(text: str) -> str:
    """--export FILE: its extension and folder are checked when the command starts (image_search's
    check_report_path), so a long search never fails at its very end for a typo."""
    from image_search import check_report_path

    try:
        return check_report_path(text)
    except InvalidInputError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def add_export_flag(parser: argparse.ArgumentParser, what: str = "the results") -> None:
    parser.add_argument("--export", type=_export_target, default=None, metavar="FILE",
                        help=f"also write {what} as a report to FILE: .csv (a table), .json or .html (one "
                             "self-contained page with thumbnails, hashes and EXIF; no network needed to open it)")


def export_report(args, report: dict) -> None:
    """Write the report to --export's file (when given) and say so, on stderr under --json alone."""
    if not getattr(args, "export", None):
        return
    from image_search import write_report

    path = write_report(args.export, report)
    print(f"Wrote the report {path}", file=sys.stderr if json_to_stdout(args) else sys.stdout)


def json_to_stdout(args) -> bool:
    return getattr(args, "json", None) == JSON_TO_STDOUT


def write_json_file(path: str | os.PathLike, data) -> None:
    """Write through a temporary file that is renamed (image_search.write_atomically): never half a file."""
    from image_search import write_atomically

    def write(output) -> None:
        json.dump(data, output, indent=2, ensure_ascii=False)
        output.write("\n")

    write_atomically(os.path.abspath(path), write, what="the JSON file", fix="give --json a file in a folder you "
                     "can write to")


def print_result(args, text: str | Callable[[], str] | None, data) -> None:
    """The tool's output under --json's one rule (see add_json_flag). text may be a function, called only when the
    text is shown, or None when the tool has printed its text already (under text_to_stderr_under_json)."""
    if json_to_stdout(args):
        print(json.dumps(data, indent=2, ensure_ascii=False))
        return
    if text is not None:
        print(text() if callable(text) else text)
    if getattr(args, "json", None):
        write_json_file(args.json, data)
        print(f"Wrote {args.json}")


@contextlib.contextmanager
def text_to_stderr_under_json(args):
    """A long run's running commentary goes to stdout, except under --json without FILE: then stdout holds only
    the JSON and the commentary moves to stderr."""
    if json_to_stdout(args):
        with contextlib.redirect_stdout(sys.stderr):
            yield
    else:
        yield


def format_table(headers: list[str], rows: list[list[str]], *, right: set[int] = frozenset()) -> str:
    """Columns aligned under a header row; columns in `right` (numbers) right-aligned, the last one not padded."""
    widths = [max(len(header), *(len(row[i]) for row in rows)) if rows else len(header)
              for i, header in enumerate(headers)]

    def line(cells) -> str:
        padded = [f"{cell:>{widths[i]}}" if i in right else f"{cell:<{widths[i]}}" for i, cell in enumerate(cells)]
        if len(cells) - 1 not in right:
            padded[-1] = cells[-1]
        return "  ".join(padded)

    return "\n".join([line(headers), *(line(row) for row in rows)])
