"""Search a dataset by text or by example image (python -m cli.cli_search -q TEXT -n NAME).

When a server of this project runs on the same data folder (image_search/discovery.py), the search is sent there
and answered in about 0.2 s instead of the 6 s this process needs to import torch and load the model; stderr
says so, and --no-server searches here.
"""

from __future__ import annotations

import argparse
import sys

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
    add_json_flag(parser, 'the results (a list of {"path", "score", "sha256", "date_taken", "camera", ...}: see the '
                          "README)")
    parser.add_argument("--no-server", action="store_true",
                        help="search in this process even when a server (python -m server.server) is running on "
                             "the same data folder; by default the search is sent to it, which is much faster")
    add_common_flags(parser)
    return parser


CAMERA_WIDTH = 28  # wider camera names are cut, so the paths stay in line


def results_table(results: list[dict]) -> str:
    """Results as SearchResult.to_dict() gives them (here, or from a server) as a table: rank, score, date taken
    (to the minute; '*' when it is the file's modification time, having no EXIF date), camera and path."""
    if not results:
        return "No results: the dataset is empty."
    rows = [[str(rank), f"{r['score']:.4f}", _date_cell(r), _camera_cell(r.get("camera")), r["path"]]
            for rank, r in enumerate(results, 1)]
    table = format_table(["#", "score", "date", "camera", "path"], rows, right={0, 1})
    if any(r.get("date_source") == "modified" for r in results):
        table += "\n* no date in the picture's EXIF: the file's modification time"
    return table


def _date_cell(result: dict) -> str:
    taken = result.get("date_taken")
    if not taken:
        return "-"
    return taken[:16].replace("T", " ") + ("*" if result.get("date_source") == "modified" else "")


def _camera_cell(camera: str | None) -> str:
    if not camera:
        return "-"
    return camera if len(camera) <= CAMERA_WIDTH else camera[:CAMERA_WIDTH - 3] + "..."


def search_on_running_server(args) -> list[dict] | None:
    """The results from a server running on this data folder, or None when there is none to use (then search
    here). Reads the discovery file and talks HTTP: nothing here imports torch, numpy or a database driver."""
    from image_search import (ImageSearchError, ServerRefusal, absolute_path, find_server, load_settings,
                              search_on_server)

    server = find_server(load_settings(data_home=args.data_dir, model_name=args.model, device=args.device))
    if server is None:
        return None
    request = {"dataset": args.name, "num_results": args.num_results, "model": args.model}
    if args.query is not None:
        request["text"] = args.query
    else:  # the server's working folder is not ours
        request["image_path"] = absolute_path(args.image) if args.image.strip() else args.image
    note = f"answered by the server at {server.url} (--no-server to search in this process)"
    try:
        results = search_on_server(server, request)
    except ServerRefusal as refusal:
        print(note, file=sys.stderr)
        raise ImageSearchError(str(refusal)) from None
    if results is not None:
        print(note, file=sys.stderr)
    return results


def search_here(args) -> list[dict]:
    engine = open_from_flags(args, map_indexes=True)  # one search: page in the lists it probes, not the whole index
    if args.query is not None:
        results = engine.search_text(args.name, args.query, args.num_results, model=args.model)
    else:
        results = engine.search_image(args.name, args.image, args.num_results, model=args.model)
    return [result.to_dict() for result in results]


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    results = None if args.no_server else search_on_running_server(args)
    if results is None:
        results = search_here(args)
    print_result(args, lambda: results_table(results), results)
    return 0


if __name__ == "__main__":
    run_tool(main)
