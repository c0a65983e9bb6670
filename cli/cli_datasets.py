"""List or delete datasets (python -m cli.cli_datasets list | delete NAME)."""

from __future__ import annotations

import argparse

from cli.common import (ToolParser, add_common_flags, add_json_flag, format_table, open_from_flags, print_result,
                        run_tool)
from image_search import printable


def build_parser() -> argparse.ArgumentParser:
    parser = ToolParser(prog="python -m cli.cli_datasets",
                        description="List the datasets, or delete one (its index and metadata).")
    commands = parser.add_subparsers(dest="command", required=True, metavar="{list,delete}")
    # neither command loads a model, so neither takes --model or --device; delete prints one sentence, no --json
    listing = commands.add_parser("list", help="list datasets with their size, model, folder and creation time",
                                  description="List the datasets with their size, model, folder and creation time.")
    add_json_flag(listing, 'the datasets (a list of {"name", "images", "model", "folder", "created", "updated"})')
    add_common_flags(listing, model=False, device=False)
    delete = commands.add_parser("delete", help="delete a dataset (the images themselves are not touched)",
                                 description="Delete a dataset's index and metadata; the image files are not "
                                             "touched.")
    delete.add_argument("name", help="dataset to delete")
    add_common_flags(delete, model=False, device=False)
    return parser


def datasets_table(datasets) -> str:
    if not datasets:
        return "No datasets yet; ingest a folder with python -m cli.cli_preprocess -i DIR -n NAME."
    rows = [[d.name, str(d.image_count), d.model, printable(d.root), str(d.created_at)] for d in datasets]
    return format_table(["name", "images", "model", "folder", "created"], rows, right={1})


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    engine = open_from_flags(args)
    if args.command == "delete":
        record = engine.delete(args.name)
        print(f"Deleted dataset '{record.name}' ({record.image_count} images); the image files were not touched.")
        return 0
    datasets = engine.datasets()
    print_result(args, lambda: datasets_table(datasets),
                 [{"name": d.name, "images": d.image_count, "model": d.model, "folder": printable(d.root),
                   "created": d.created_at, "updated": d.updated_at} for d in datasets])
    return 0


if __name__ == "__main__":
    run_tool(main)
