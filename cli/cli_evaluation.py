"""Self-retrieval evaluation (python -m cli.cli_evaluation -i DIR -n NAME)."""

from __future__ import annotations

import argparse

from cli.common import (ToolParser, add_common_flags, add_json_flag, json_to_stdout, open_from_flags, print_result,
                        run_tool)


def build_parser() -> argparse.ArgumentParser:
    parser = ToolParser(
        prog="python -m cli.cli_evaluation",
        description="Query dataset NAME with every image of DIR (ingesting DIR as NAME first if NAME does not "
                    "exist) and report how often each image finds itself: Hits@1, Hits@5 and Recall@10.")
    parser.add_argument("--input_dir", "--input-dir", "-i", required=True, help="folder of query images")
    parser.add_argument("--name", "-n", required=True, help="dataset to query")
    parser.add_argument("--batch-size", "--batch_size", type=int, default=None, help="images per model batch")
    parser.add_argument("--workers", type=int, default=None, help="image decoding processes")
    add_json_flag(parser, "the metrics")
    add_common_flags(parser)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    result = open_from_flags(args).evaluate_self_retrieval(args.input_dir, args.name, model=args.model,
                                                           batch_size=args.batch_size, workers=args.workers,
                                                           progress=not json_to_stdout(args))
    print_result(args, lambda: "\n".join(result.lines()), result.__dict__)
    return 0


if __name__ == "__main__":
    run_tool(main)
