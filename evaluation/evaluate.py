"""Category-retrieval evaluation like the original's (python -m evaluation.evaluate --dataset DIR).

DIR holds train/ and val/ folders of images named CATEGORY_N.ext; train is ingested, each val image is a query.
"""

from __future__ import annotations

import argparse
import json

from cli.common import add_common_flags, open_engine, run


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m evaluation.evaluate", description=__doc__.strip())
    parser.add_argument("--dataset", "-d", required=True, help="folder with train/ and val/")
    parser.add_argument("--name", "-n", default="evaluation-train",
                        help="dataset name to (re)build from train/ (default: evaluation-train)")
    parser.add_argument("--json", default=None, help="also write the metrics and per-query results to this file")
    add_common_flags(parser)
    args = parser.parse_args(argv)
    from image_search.evaluation import evaluate_categories

    result = evaluate_categories(open_engine(args), args.dataset, args.name, model_name=args.model)
    print("\n".join(result.lines()))
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(result.__dict__, handle, indent=2)
    return 0


if __name__ == "__main__":
    run(main)
