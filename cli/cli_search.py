"""Search a dataset by text or by example image (python -m cli.cli_search -q TEXT -n NAME).

When a server of this project runs on the same data folder (image_search/discovery.py), the search is sent there
and answered in about 0.2 s instead of the 6 s this process needs to import torch and load the model; stderr
says so, and --no-server searches here.
"""

from __future__ import annotations

import argparse
import sys

from cli.common import (ToolParser, add_common_flags, add_export_flag, add_json_flag, export_report, format_table,
                        json_to_stdout, open_from_flags, print_result, run_tool)


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
    filters = parser.add_argument_group(
        "filters", "only images that pass every filter given; still --num_results of them when that many pass")
    filters.add_argument("--folder", help="only images under this folder of the dataset: relative to the dataset's "
                                          "folder (e.g. DCIM) or in full")
    filters.add_argument("--taken-from", metavar="DATE",
                         help="only images taken on or after this day (YYYY-MM-DD) or moment (a full ISO date and "
                              "time, e.g. 2023-03-01T14:30:00): the EXIF date taken, or the modification time for "
                              "images without one")
    filters.add_argument("--taken-to", metavar="DATE",
                         help="only images taken up to this day (the whole day) or moment, as --taken-from")
    filters.add_argument("--camera", help="only images whose camera make or model contains this, in any case (e.g. "
                                          "canon, 'iphone 12')")
    filters.add_argument("--format", help="only images of this file format (e.g. JPEG, PNG, jpg)")
    filters.add_argument("--min-score", metavar="SCORE",
                         help="only results scoring at least this (cosine similarity, -1 to 1)")
    parser.add_argument("--collapse-duplicates", action="store_true",
                        help="show exact copies (same SHA-256) once, with the paths of the other copies")
    add_json_flag(parser, 'the results (a list of {"path", "score", "sha256", "date_taken", "camera", ...}: see the '
                          "README)")
    add_export_flag(parser)
    parser.add_argument("--no-server", action="store_true",
                        help="search in this process even when a server (python -m server.server) is running on "
                             "the same data folder; by default the search is sent to it, which is much faster")
    add_common_flags(parser)
    return parser


FILTERS = ("folder", "taken_from", "taken_to", "camera", "format", "min_score")  # SearchFilter's, as the flags
CAMERA_WIDTH = 28  # wider camera names are cut, so the paths stay in line


def results_table(results: list[dict], note: str | None = None) -> str:
    """Results as SearchResult.to_dict() gives them (here, or from a server) as a table: rank, score, date taken
    (to the minute; '*' when it is the file's modification time, having no EXIF date), camera and path; then the
    note that says why there are none or fewer than asked for."""
    if not results:
        return note or "No results."
    rows = [[str(rank), f"{r['score']:.4f}", _date_cell(r), _camera_cell(r.get("camera")), r["path"]]
            for rank, r in enumerate(results, 1)]
    table = format_table(["#", "score", "date", "camera", "path"], rows, right={0, 1})
    if any(r.get("date_source") == "modified" for r in results):
        table += "\n* no date in the picture's EXIF: the file's modification time"
    return f"{table}\n{note}" if note else table


def _date_cell(result: dict) -> str:
    taken = result.get("date_taken")
    if not taken:
        return "-"
    return taken[:16].replace("T", " ") + ("*" if result.get("date_source") == "modified" else "")


def _camera_cell(camera: str | None) -> str:
    if not camera:
        return "-"
    return camera if len(camera) <= CAMERA_WIDTH else camera[:CAMERA_WIDTH - 3] + "..."


def filter_values(args) -> dict:
    """The filters given, as text: SearchFilter reads them (here, or in the server that answers)."""
    return {name: getattr(args, name) for name in FILTERS if getattr(args, name) is not None}


def search_on_running_server(args) -> dict | None:
    """The results from a server running on this data folder, or None when there is none to use (then search
    here). Reads the discovery file and talks HTTP: nothing here imports torch, numpy or a database driver."""
    from image_search import (ImageSearchError, ServerRefusal, absolute_path, find_server, load_settings,
                              search_on_server)

    server = find_server(load_settings(data_home=args.data_dir, model_name=args.model, device=args.device))
    if server is None:
        return None
    request = {"dataset": args.name, "num_results": args.num_results, "model": args.model,
               "filters": filter_values(args), "collapse_duplicates": args.collapse_duplicates}
    if args.query is not None:
        request["text"] = args.query
    else:  # the server's working folder is not ours
        request["image_path"] = absolute_path(args.image) if args.image.strip() else args.image
    note = f"answered by the server at {server.url} (--no-server to search in this process)"
    try:
        answer = search_on_server(server, request)
    except ServerRefusal as refusal:
        print(note, file=sys.stderr)
        raise ImageSearchError(str(refusal)) from None
    if answer is not None:
        print(note, file=sys.stderr)
    return answer


def search_here(args) -> dict:
    from image_search import SearchFilter

    given = filter_values(args)
    filters = SearchFilter(**given) if given else None  # a bad value is refused before anything loads
    engine = open_from_flags(args, map_indexes=True)  # one search: page in the lists it probes, not the whole index
    search, query = (engine.search_text, args.query) if args.query is not None else (engine.search_image, args.image)
    results = search(args.name, query, args.num_results, model=args.model, filters=filters,
                     collapse_duplicates=args.collapse_duplicates)
    return {"results": [result.to_dict() for result in results], "note": results.note}


def report_of(args, results: list[dict], searched_at: str) -> dict:
    """The --export report: the results with the query, the dataset's model, the time and the tool's version."""
    from image_search import search_report

    model = open_from_flags(args).dataset(args.name).model  # the store only: no model is loaded
    query = {"text": args.query} if args.query is not None else {"image": args.image}
    return search_report(results, dataset=args.name, model=model, searched_at=searched_at, **query)


def main(argv=None) -> int:
    from datetime import datetime

    args = build_parser().parse_args(argv)
    searched_at = datetime.now().astimezone().isoformat(timespec="seconds")
    answer = None if args.no_server else search_on_running_server(args)
    if answer is None:
        answer = search_here(args)
    results, note = answer["results"], answer.get("note")
    if note and json_to_stdout(args):  # stdout holds only the JSON list
        print(note, file=sys.stderr)
    print_result(args, lambda: results_table(results, note), results)
    if args.export:
        export_report(args, report_of(args, results, searched_at))
    return 0


if __name__ == "__main__":
    run_tool(main)
