"""Category-retrieval evaluation like the original's (python -m evaluation.evaluate --dataset DIR).

DIR holds train/ and val/ folders of images named CATEGORY_N.ext; train is ingested, each val image is a query.
The train dataset is a throwaway, deleted when the evaluation ends, unless --keep keeps it. A set to try it on:
../shared/datasets/seed-eval beside the checkout (the original's 110 photos), or one generated with
python -m evaluation.sample_images --categories DIR.
"""

from __future__ import annotations

from cli.common import ToolParser, add_common_flags, add_json_flag, open_from_flags, print_result, run_tool


def build_parser() -> ToolParser:
    parser = ToolParser(prog="python -m evaluation.evaluate", description=__doc__.strip())
    parser.add_argument("--dataset", "-d", required=True, help="folder with train/ and val/")
    parser.add_argument("--keep", action="store_true",
                        help="keep the dataset built from train/ afterwards (default: it is deleted)")
    parser.add_argument("--name", "-n", default=None,
                        help="name of the dataset built from train/ (default: evaluation-train with --keep, "
                             "else a unique throwaway name); with --keep an existing one is rebuilt")
    add_json_flag(parser, "the metrics and per-query results")
    add_common_flags(parser)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    from image_search import KEPT_CATEGORY_DATASET

    name = args.name or (KEPT_CATEGORY_DATASET if args.keep else None)
    result = open_from_flags(args).evaluate_categories(args.dataset, name, keep=args.keep, model=args.model)

    def text() -> str:
        lines = result.lines()
        if args.keep:
            lines.append(f"Kept dataset '{name}'; search it with python -m cli.cli_search -n {name}, delete it "
                         f"with python -m cli.cli_datasets delete {name}.")
        return "\n".join(lines)

    print_result(args, text, result.__dict__)
    return 0


if __name__ == "__main__":
    run_tool(main)
