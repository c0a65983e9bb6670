"""Search a dataset by text or by example image (python -m cli.cli_search -q TEXT -n NAME)."""

from __future__ import annotations

import argparse

from cli.common import (ToolParser, add_common_flags, add_json_flag, format_table, open_from_flags, print_result,
                        run_tool)


def build_parser() -> argparse.ArgumentParser:
    parser = ToolParser(
        prog="python -m cli.cli_search",
        description="Find the images of a dataset that best match a description or an example image.")
    query = parser.add_mutually_exclusive_group(required=True)
    query.add_argument("--query", "-q", help='describe the image, e.g. "red car at night"')
    query.add_argument("--image", "-i", help="path of an example image")
    parser.add_argument("--name", "-n", required=True, help="dataset to search")
    parser.add_argument("--num_results", "--num-results", "-k", default=5,
                        help="how many results to show (default 5)")
    add_json_flag(parser, 'the results (a list of {"path", "score", "title"})')
    add_common_flags(parser)
    return parser


def results_table(results) -> str:
    if not results:
        return "No results: the dataset is empty."
    rows = [[str(rank), f"{r.score:.4f}", r.to_dict()["path"]] for rank, r in enumerate(results, 1)]
    return format_table(["#", "score", "path"], rows, right={0, 1})


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    engine = open_from_flags(args, map_indexes=True)  # one search: page in the lists it probes, not the whole index
    if args.query is not None:
        results = engine.search_text(args.name, args.query, args.num_results, model=args.model)
    else:
        results = engine.search_image(args.name, args.image, args.num_results, model=args.model)
    print_result(args, lambda: results_table(results), [r.to_dict() for r in results])
    return 0


if __name__ == "__main__":
    run_tool(main)
