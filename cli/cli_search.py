"""Search a dataset by text or by example image (python -m cli.cli_search -q TEXT -n NAME)."""

from __future__ import annotations

import argparse
import json

from cli.common import add_common_flags, open_engine, run


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m cli.cli_search",
        description="Find the images of a dataset that best match a description or an example image.")
    query = parser.add_mutually_exclusive_group(required=True)
    query.add_argument("--query", "-q", help='describe the image, e.g. "red car at night"')
    query.add_argument("--image", "-i", help="path of an example image")
    parser.add_argument("--name", "-n", help="dataset to search")
    parser.add_argument("--num_results", "--num-results", "-k", default=5,
                        help="how many results to show (default 5)")
    parser.add_argument("--json", action="store_true", help='print a JSON list of {"path", "score", "title"}')
    add_common_flags(parser)
    return parser


def format_table(results) -> str:
    if not results:
        return "No results: the dataset is empty."
    rows = [(str(rank), f"{r.score:.4f}", r.to_dict()["path"]) for rank, r in enumerate(results, 1)]
    widths = [max(len(h), *(len(row[i]) for row in rows)) for i, h in enumerate(("#", "score", "path"))]
    lines = [f"{'#':>{widths[0]}}  {'score':>{widths[1]}}  path"]
    lines += [f"{a:>{widths[0]}}  {b:>{widths[1]}}  {c}" for a, b, c in rows]
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not args.name:
        parser.error("the following arguments are required: --name/-n")
    from image_search.search import search_by_image, search_by_text

    engine = open_engine(args, map_indexes=True)  # one search: page in the lists it probes, not the whole index
    if args.query is not None:
        results = search_by_text(engine, args.name, args.query, args.num_results, model_name=args.model)
    else:
        results = search_by_image(engine, args.name, args.image, args.num_results, model_name=args.model)
    if args.json:
        print(json.dumps([r.to_dict() for r in results], indent=2, ensure_ascii=False))
    else:
        print(format_table(results))
    return 0


if __name__ == "__main__":
    run(main)
