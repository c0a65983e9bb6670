"""What every command-line tool shares: common flags, and turning errors into one readable line."""

from __future__ import annotations

import argparse
import sys
from typing import Callable

from image_search.errors import Fix, ImageSearchError

MODEL_HELP = ("embedding model: ARCH:PRETRAINED (e.g. ViT-B-32:laion2b_s34b_b79k, the default for new datasets; "
              "weights download on first use), ARCH:/path/to/weights.pt, ARCH:random (speed tests only), "
              "efficientnet-lite0 (works offline, image queries only) or test-tiny (tests). New datasets use "
              "$IMAGE_SEARCH_MODEL when this is not given; an existing dataset always uses its own model, and "
              "naming another one is refused (ingest with --rebuild to switch)")


def add_common_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", "-m", default=None, help=MODEL_HELP)
    parser.add_argument("--device", default=None, choices=None,
                        help="cpu, cuda or cuda:N (default: $IMAGE_SEARCH_DEVICE, else CUDA when available)")
    parser.add_argument("--data-dir", default=None,
                        help="where indexes (and the SQLite store) live (default: $IMAGE_SEARCH_HOME, else a "
                             "per-user data folder)")


def open_engine(args, *, map_indexes: bool = False):
    from image_search.config import load_settings
    from image_search.engine import ImageSearch

    return ImageSearch(load_settings(data_home=args.data_dir, model_name=args.model, device=args.device),
                       map_indexes=map_indexes)


# How someone at the terminal (or starting the server) fixes what an ImageSearchError's `fix` names.
CLI_FIXES = {
    Fix.WEIGHTS_MISSING: "connect to the internet once to download them, or copy the checkpoint file to this machine "
                         "and use --model {architecture}:/path/to/checkpoint.bin, or use --model "
                         "efficientnet-lite0 (works offline; image search only, no text search).",
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
