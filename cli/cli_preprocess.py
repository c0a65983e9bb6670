"""Ingest a folder of images into a named dataset (python -m cli.cli_preprocess -i DIR -n NAME)."""

from __future__ import annotations

import argparse

from cli.common import (CLI_FIXES, ToolParser, add_common_flags, add_json_flag, open_from_flags, print_result,
                        run_tool)


def build_parser() -> argparse.ArgumentParser:
    parser = ToolParser(
        prog="python -m cli.cli_preprocess",
        description="Embed every image under a folder (recursively) and store it as a searchable dataset. "
                    "Running it again on the same folder updates the dataset: only new and changed images are "
                    "embedded, removed ones are dropped.")
    parser.add_argument("--input_dir", "--input-dir", "-i", required=True, help="folder of images to ingest")
    parser.add_argument("--name", "-n", required=True, help="dataset name (letters, digits, '_', '-', '.')")
    parser.add_argument("--batch-size", "--batch_size", type=int, default=None,
                        help="images per model batch (default: 32 on CPU, 256 on GPU)")
    parser.add_argument("--workers", type=int, default=None,
                        help="image reading processes, or threads with a GPU (default: one per core; with --ray, each "
                             "Ray worker's share of its machine's cores)")
    parser.add_argument("--rebuild", action="store_true",
                        help="embed everything again from scratch (also to switch model or folder)")
    parser.add_argument("--follow-symlinks", action="store_true",
                        help="follow symbolic links that stay inside the folder (default: not followed)")
    parser.add_argument("--verify", action="store_true",
                        help="read every unchanged file and compare its SHA-256 with the one recorded when it was "
                             "ingested; files whose content changed under the same size and times are embedded "
                             "again (reads every file: as slow as reading the folder)")
    parser.add_argument("--no-progress", action="store_true", help="do not show a progress bar")
    parser.add_argument("--ray", nargs="?", const=True, default=False, metavar="ADDRESS",
                        help="embed on a Ray cluster: join the one at ADDRESS (host:port as 'ray start --head' "
                             "prints it; default: $IMAGE_SEARCH_RAY_ADDRESS), else start Ray on this machine with "
                             "all its CPUs and GPUs. Needs Ray installed (see the README)")
    add_json_flag(parser, "the summary")
    add_common_flags(parser)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    report = open_from_flags(args).ingest(args.input_dir, args.name, model=args.model, batch_size=args.batch_size,
                                          workers=args.workers, rebuild=args.rebuild,
                                          follow_symlinks=args.follow_symlinks, progress=not args.no_progress,
                                          ray=args.ray, verify=args.verify)
    print_result(args, lambda: "\n".join(report.lines(fixes=CLI_FIXES)), report.to_dict())
    return 0


if __name__ == "__main__":
    run_tool(main)
