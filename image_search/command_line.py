"""What every program started from a command line shares (the tools in cli/ and the server's start): the parser
whose mistakes are one line, the flags that choose the data folder, model and device, the service those flags
open, the fixes spelled in flags, and running a program so that an ImageSearchError is one line and exit 2.
"""

from __future__ import annotations

import argparse
import sys
from typing import Callable

from .errors import Fix, ImageSearchError

MODEL_HELP = ("embedding model: ARCH:PRETRAINED (e.g. ViT-B-32:laion2b_s34b_b79k, the default for new datasets; "
              "weights download on first use), ARCH:/path/to/weights.pt, ARCH:random (speed tests only), "
              "efficientnet-lite0 (works offline, image queries only) or test-tiny (tests). New datasets use "
              "$IMAGE_SEARCH_MODEL when this is not given; an existing dataset always uses its own model, and "
              "naming another one is refused (ingest with --rebuild to switch)")


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


def open_from_flags(args, *, map_indexes: bool = False):
    """The service that --data-dir, --model and --device (where the command has them) ask for."""
    from .service import ImageSearch

    return ImageSearch.open(data_home=args.data_dir, model=getattr(args, "model", None),
                            device=getattr(args, "device", None), map_indexes=map_indexes)


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
    Fix.FILTER_FOLDER: "give --folder a folder inside {root}, relative to it (e.g. DCIM) or in full.",
    Fix.FILTER_DATE: "give --taken-from and --taken-to as YYYY-MM-DD (e.g. 2023-03-01) or a full ISO date and time "
                     "(e.g. 2023-03-01T14:30:00).",
    Fix.FILTER_SCORE: "give --min-score a number from -1 to 1 (a cosine similarity), e.g. 0.25.",
}


def cli_message(error: ImageSearchError) -> str:
    """An ImageSearchError as the command line says it: its message and, when it has one, the fix in flags."""
    return error.with_fix(CLI_FIXES)


def run_tool(main: Callable[[], int]) -> None:
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
