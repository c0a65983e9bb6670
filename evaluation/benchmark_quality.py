"""Retrieval quality on real photos (python -m evaluation.benchmark_quality [--photos DIR] [--categories DIR]).

Near-duplicate retrieval, "where else does this picture appear?": every image under --photos is ingested, then
each is edited the way copies get edited (evaluation/edits.py) and every edited copy is a query; Hits@1, Hits@5
and MRR say how well the original is found, per edit and overall.
Category retrieval, the original system's evaluation: --categories holds train/ and val/ (CATEGORY_N.ext); train
is ingested, each val image is a query (Precision@1, Precision@5, mAP).

Everything runs in a throwaway data folder with its own SQLite store, so no existing dataset is touched. The
default model, efficientnet-lite0, needs no download; CLIP models need their weights on this machine.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

from cli.common import ToolParser, add_json_flag, print_result, run_tool

SEED_EVAL = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "seed-eval"
DEFAULT_MODEL = "efficientnet-lite0"
NEAR_DUPLICATE_DATASET = "near-duplicates"
CATEGORY_DATASET = "categories"


def build_parser() -> argparse.ArgumentParser:
    from evaluation.edits import EDITS

    parser = ToolParser(
        prog="python -m evaluation.benchmark_quality", description=__doc__.strip().splitlines()[0],
        epilog="Edits: " + "; ".join(f"{name}: {edit.description}" for name, edit in EDITS.items()))
    parser.add_argument("--photos", default=None,
                        help=f"folder of real photos (subfolders included) to use as the originals (default: "
                             f"{SEED_EVAL})")
    parser.add_argument("--categories", default=None,
                        help=f"folder with train/ and val/ for category retrieval (default: {SEED_EVAL}, skipped "
                             "when absent)")
    parser.add_argument("--no-categories", action="store_true", help="skip category retrieval")
    parser.add_argument("--model", "-m", default=DEFAULT_MODEL, help=f"embedding model (default: {DEFAULT_MODEL})")
    parser.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default: CUDA when available)")
    parser.add_argument("--batch-size", type=int, default=None, help="images per model batch")
    parser.add_argument("--workers", type=int, default=None, help="image decoding processes")
    add_json_flag(parser, "every metric (and each miss)")
    return parser


def _photos_folder(given: str | None) -> str:
    from image_search.errors import InvalidInputError
    from image_search.ingest import check_input_folder

    if given is None and not SEED_EVAL.is_dir():
        raise InvalidInputError(f"The default photo folder {SEED_EVAL} does not exist; give a folder of real photos "
                                "with --photos DIR.")
    return check_input_folder(given if given is not None else SEED_EVAL)


def _categories_folder(args) -> str | None:
    if args.no_categories:
        return None
    if args.categories is not None:
        return args.categories  # evaluate_categories says what is wrong with it, if anything
    if (SEED_EVAL / "train").is_dir() and (SEED_EVAL / "val").is_dir():
        return str(SEED_EVAL)
    return None


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    from evaluation.edits import EDITS, write_edited_copies
    from image_search.config import Settings
    from image_search.service import ImageSearch
    from image_search.retrieval_quality import evaluate_categories, evaluate_near_duplicates
    from image_search.pipeline.scan import scan_folder
    from image_search.ingest import ingest_folder, printable
    from image_search.models import parse_model_name

    model = parse_model_name(args.model).name
    photos = _photos_folder(args.photos)
    categories = _categories_folder(args)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="image-search-quality-") as work:
        engine = ImageSearch(Settings(data_home=Path(work) / "home", model_name=model, device=args.device,
                                      database=None))
        try:
            print(f"Ingesting the originals in {printable(photos)} with {model} ...", file=sys.stderr)
            ingest_folder(engine, photos, NEAR_DUPLICATE_DATASET, model_name=model, batch_size=args.batch_size,
                          workers=args.workers, progress=False)
            originals = [entry.path for entry in scan_folder(photos).files]
            queries, unusable = write_edited_copies(originals, photos, os.path.join(work, "queries"))
            print(f"Querying with {len(queries)} edited copies ...", file=sys.stderr)
            near_duplicates = evaluate_near_duplicates(engine, NEAR_DUPLICATE_DATASET, queries,
                                                       batch_size=args.batch_size, workers=args.workers)
            category_result = None
            if categories is not None:
                print(f"Category retrieval on {printable(categories)} ...", file=sys.stderr)
                category_result = evaluate_categories(engine, categories, CATEGORY_DATASET, model_name=model,
                                                      batch_size=args.batch_size, workers=args.workers)
            device = engine.model(model).device
        finally:
            engine.close()
    seconds = time.perf_counter() - started

    text = [f"Model {model} on {device}; {len(originals) - len(unusable)} originals from {printable(photos)}",
            *near_duplicates.lines(), "",
            *(category_result.lines() if category_result else
              ["Category retrieval skipped (no folder with train/ and val/; give one with --categories DIR)."]),
            f"\nTook {seconds:.1f} s."]
    report = {
        "model": model, "device": device, "photos": printable(photos),
        "originals": len(originals) - len(unusable),
        "unusable": [{"path": printable(path), "reason": reason} for path, reason in unusable],
        "edits": {name: edit.description for name, edit in EDITS.items()},
        "near_duplicates": near_duplicates.to_dict(),
        "categories": None if category_result is None else {
            "folder": printable(os.path.abspath(categories)), **category_result.__dict__},
        "seconds": round(seconds, 2),
    }
    print_result(args, "\n".join(text), report)
    return 0


if __name__ == "__main__":
    run_tool(main)
