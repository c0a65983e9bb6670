"""A first run that works offline (python -m cli.cli_demo): sample pictures, an ingest and a search.

It writes the demo scenes to ./samples, ingests them into your data folder, and searches them by text with the
default CLIP model. Without that model's weights on this machine it says so in one line and shows image search
with efficientnet-lite0 instead (its weights ship with a pip package): an edited copy of one sample finds the
original.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

from cli.common import CLI_FIXES, ToolParser, add_common_flags, cli_message, open_from_flags, run_tool

TEXT_DATASET = "samples"
OFFLINE_DATASET = "samples-offline"
TEXT_QUERY = "a red circle"
QUERY_SAMPLE = "red_circle_on_grass.jpg"  # the sample whose edited copy is the offline query
OFFLINE_MODEL = "efficientnet-lite0"


def build_parser() -> argparse.ArgumentParser:
    parser = ToolParser(prog="python -m cli.cli_demo", description=__doc__.strip())
    parser.add_argument("--samples", default="samples",
                        help="folder to write the sample pictures to (default: ./samples)")
    add_common_flags(parser, model=False)
    return parser


def text_search_problem(engine) -> str | None:
    """Why the default CLIP model cannot search by text here (a sentence in the CLI's words), or None when it can.

    Loading the model checks first that its weights are cached or can be downloaded (image_search.models), so
    missing weights are known within a second, offline too."""
    from image_search import ModelError

    try:
        embedder = engine.model(engine.default_model)
    except ModelError as error:
        return cli_message(error)
    if not embedder.supports_text:
        return f"The default model {embedder.name} has no text side."
    return None


def ingest_samples(engine, folder: Path, name: str, model: str):
    """Ingest the samples as dataset `name` with `model`; the demo owns the name, so a dataset of that name made
    from another folder (an earlier demo run elsewhere) or with another model is rebuilt."""
    existing = engine.find_dataset(name)
    rebuild = existing is not None and (existing.root != os.path.realpath(folder)
                                        or existing.model != engine.canonical_model_name(model))
    report = engine.ingest(folder, name, model=model, rebuild=rebuild, progress=False)
    print("\n".join(report.lines(fixes=CLI_FIXES)))


def text_demo(engine, folder: Path) -> int:
    from cli.cli_search import results_table

    ingest_samples(engine, folder, TEXT_DATASET, engine.default_model)
    print(f'\nSearching {TEXT_DATASET} for "{TEXT_QUERY}":')
    print(results_table([r.to_dict() for r in engine.search_text(TEXT_DATASET, TEXT_QUERY, 3)]))
    _print_next_steps(folder, TEXT_DATASET, [f'python -m cli.cli_search -q "a yellow sun over the sea" -n '
                                             f'{TEXT_DATASET}'])
    return 0


def image_demo(engine, folder: Path) -> int:
    from cli.cli_search import results_table
    from evaluation.edits import brighten_30, downscale_half, edited

    ingest_samples(engine, folder, OFFLINE_DATASET, OFFLINE_MODEL)
    original = folder / QUERY_SAMPLE
    with tempfile.TemporaryDirectory(prefix="image-search-demo-") as scratch:
        query = Path(scratch) / f"edited-{QUERY_SAMPLE}"
        edited(original, downscale_half, brighten_30).save(query, quality=90)
        print(f"\nSearching {OFFLINE_DATASET} with an edited copy of {QUERY_SAMPLE} (half the size, 30% brighter):")
        results = engine.search_image(OFFLINE_DATASET, query, 3)
    print(results_table([r.to_dict() for r in results]))
    if not results or not os.path.samefile(results[0].path, original):
        top = results[0].path if results else "nothing"
        print(f"error: the top hit is {top}, not the original {original}; the image model is not working as it "
              "should here.", file=sys.stderr)
        return 1
    print(f"The top hit is the original: {original} (score {results[0].score:.3f}).")
    _print_next_steps(folder, OFFLINE_DATASET, [], model=OFFLINE_MODEL)
    return 0


def _print_next_steps(folder: Path, dataset: str, extra: list[str], model: str | None = None) -> None:
    ingest = "python -m cli.cli_preprocess -i /path/to/photos -n myphotos" + (f" --model {model}" if model else "")
    commands = [*extra, f"python -m cli.cli_search -i {folder / 'purple_flower.jpg'} -n {dataset}", ingest,
                "python -m cli.cli_datasets list", "python -m server.server   # for the RescueBox app"]
    print("\nNext (inside the project's environment: pipenv shell, or pipenv run in front of each):")
    print("\n".join(f"  {command}" for command in commands))


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    # With no internet the weights check fails within a second (image_search.models), so the demo needs no
    # offline switch: where the hub answers, the default model downloads once (about 600 MB) and is cached.
    from evaluation.sample_images import write_demo_images

    folder = Path(args.samples)
    written = write_demo_images(folder)
    print(f"{len(written)} sample pictures in {folder.resolve()}.")
    engine = open_from_flags(args)
    problem = text_search_problem(engine)
    if problem is None:
        return text_demo(engine, folder)
    print(f"No text search here: {problem} Showing image search with {OFFLINE_MODEL} instead, which works "
          "offline.")
    return image_demo(engine, folder)


if __name__ == "__main__":
    run_tool(main)
