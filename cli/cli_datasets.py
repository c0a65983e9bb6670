"""List or delete datasets (python -m cli.cli_datasets list | delete NAME)."""

from __future__ import annotations

import argparse
import json

from cli.common import add_common_flags, open_engine, run


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m cli.cli_datasets",
                                     description="List the datasets, or delete one (its index and metadata).")
    commands = parser.add_subparsers(dest="command", required=True)
    listing = commands.add_parser("list", help="list datasets with their size, model, folder and creation time")
    listing.add_argument("--json", action="store_true", help="print JSON")
    add_common_flags(listing)
    delete = commands.add_parser("delete", help="delete a dataset (the images themselves are not touched)")
    delete.add_argument("name", help="dataset to delete")
    add_common_flags(delete)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    from image_search.files import printable

    engine = open_engine(args)
    if args.command == "delete":
        record = engine.delete_dataset(args.name)
        print(f"Deleted dataset '{record.name}' ({record.image_count} images); the image files were not touched.")
        return 0
    datasets = engine.datasets()
    if args.json:
        print(json.dumps([{"name": d.name, "images": d.image_count, "model": d.model, "folder": printable(d.root),
                           "created": d.created_at, "updated": d.updated_at} for d in datasets], indent=2))
    elif not datasets:
        print("No datasets yet; ingest a folder with python -m cli.cli_preprocess -i DIR -n NAME.")
    else:
        for d in datasets:
            print(f"{d.name}\t{d.image_count} images\t{d.model}\t{printable(d.root)}\tcreated {d.created_at}")
    return 0


if __name__ == "__main__":
    run(main)
