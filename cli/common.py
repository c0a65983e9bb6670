"""What every command-line tool shares: its parser (mistakes are one line), common flags, --json output, and
turning errors into one readable line."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import tempfile
from typing import Callable

from image_search.errors import Fix, ImageSearchError

MODEL_HELP = ("embedding model: ARCH:PRETRAINED (e.g. ViT-B-32:laion2b_s34b_b79k, the default for new datasets; "
              "weights download on first use), ARCH:/path/to/weights.pt, ARCH:random (speed tests only), "
              "efficientnet-lite0 (works offline, image queries only) or test-tiny (tests). New datasets use "
              "$IMAGE_SEARCH_MODEL when this is not given; an existing dataset always uses its own model, and "
              "naming another one is refused (ingest with --rebuild to switch)")

JSON_TO_STDOUT = "-"  # --json without FILE (or with "-"): JSON on stdout instead of the text


class ToolParser(argparse.ArgumentParser):
    """argparse for every tool: a mistake prints one line starting with 'error:' and exits 2 (argparse's own
    error() prints the whole usage block first). Subcommands inherit it (add_subparsers uses the parser's class)."""

    def error(self, message: str):
        self.exit(2, f"error: {message} (see {self.prog} --help)\n")


def add_common_flags(parser: argparse.ArgumentParser, *, model: bool = True, device: bool = True) -> None:
    """--model, --device and --data-dir; a command that loads no model (listing, deleting) leaves the first two
    out, so its --help shows only what applies."""
    if model:
        parser.add_argument("--model", "-m", default=None, help=MODEL_HELP)
    if device:
        parser.add_argument("--device", default=None, choices=None,
                            help="cpu, cuda or cuda:N (default: $IMAGE_SEARCH_DEVICE, else CUDA when available)")
    parser.add_argument("--data-dir", default=None,
                        help="where indexes (and the SQLite store) live (default: $IMAGE_SEARCH_HOME, else a "
                             "per-user data folder)")


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


def json_to_stdout(args) -> bool:
    return getattr(args, "json", None) == JSON_TO_STDOUT


def write_json_file(path: str | os.PathLike, data) -> None:
    """Write beside the target and rename, so a reader (or a crash) never sees half a file."""
    from image_search.errors import InvalidInputError

    path = os.path.abspath(path)
    temporary = None
    try:
        handle, temporary = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp",
                                             dir=os.path.dirname(path))
        with os.fdopen(handle, "w", encoding="utf-8") as output:
            json.dump(data, output, indent=2, ensure_ascii=False)
            output.write("\n")
        os.replace(temporary, path)
    except OSError as error:
        raise InvalidInputError(f"Cannot write the JSON file {path} ({error.strerror or error}); give --json a "
                                "file in a folder you can write to.") from None
    finally:
        if temporary is not None and os.path.exists(temporary):
            os.unlink(temporary)


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


def open_engine(args, *, map_indexes: bool = False):
    from image_search.config import load_settings
    from image_search.service import ImageSearch

    return ImageSearch(load_settings(data_home=args.data_dir, model_name=getattr(args, "model", None),
                                     device=getattr(args, "device", None)),
                       map_indexes=map_indexes)


# How someone at the terminal (or starting the server) fixes what an ImageSearchError's `fix` names.
CLI_FIXES = {
    Fix.WEIGHTS_MISSING: "connect to the internet once to download them, or copy the checkpoint file to this machine "
                         "and use --model {architecture}:/path/to/checkpoint.bin, or use --model "
                         "efficientnet-lite0 (works offline; image search only, no text search).",
    Fix.WEIGHTS_FILE_MISSING: "copy the checkpoint there or fix the path in --model / IMAGE_SEARCH_MODEL.",
    Fix.USE_CPU: "use --device cpu.",
    Fix.REBUILD_WITH_FOLDER: "use --rebuild to replace it with this folder, or choose another name.",
    Fix.REBUILD_WITH_MODEL: "use --rebuild to re-embed it with the new model, or leave out --model.",
    Fix.USE_DATASET_MODEL: "leave out --model to use {model}.",
    Fix.REPAIR_INDEX: "repair it with: python -m cli.cli_preprocess -i '{root}' -n {name} --rebuild",
    Fix.KEEP_EVALUATION_DATASET: "choose another name, or keep the dataset (--keep) to rebuild it.",
    Fix.FOLLOW_SYMLINKS: "use --follow-symlinks to follow links that stay inside the folder",
}


def cli_message(error: ImageSearchError) -> str:
    """An ImageSearchError as the command line says it: its message and, when it has one, the fix in flags."""
    return error.with_fix(CLI_FIXES)


def run(main: Callable[[], int]) -> None:
    """Run a tool: user errors print one line and exit 2; Ctrl-C exits 130; anything else is a real bug."""
    try:
        code = main()
    except ImageSearchError as error:
        print(f"error: {cli_message(error)}", file=sys.stderr)
        code = 2
    except KeyboardInterrupt:
        print("Interrupted; nothing was changed by the unfinished work.", file=sys.stderr)
        code = 130
    sys.exit(code)
