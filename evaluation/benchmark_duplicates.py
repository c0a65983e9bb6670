"""Duplicate grouping: how well edited copies group with their originals, and how long grouping takes at scale.

    python -m evaluation.benchmark_duplicates --photos DIR --sizes 100000,1000000 --json results.json
    python -m evaluation.benchmark_duplicates --no-photos --sizes 20000          # smoke test, ~1 min

Grouping rates (--photos, default the seed-eval photos; --model, default efficientnet-lite0): the photos and every
edited copy of them that the quality benchmark makes (evaluation/edits.py: downscaled, recompressed, cropped,
brightened, greyscale, rotated, screenshotted) are ingested as one dataset, and its neighbour graph is grouped at
each threshold of a sweep and each number of neighbours per image:

  edit_pairs_grouped   share of (original, edited copy) pairs that end up in one group, overall and per edit
  unrelated_pairs      pairs of different originals that end up in one group (count and share of all pairs)
  originals_joined     originals grouped with another original
  largest_group        images in the largest group

"one_edit" repeats it with one kind of edit at a time (each original has one copy, the commoner case), where a
look-alike photo is not outnumbered by an original's own copies among its nearest neighbours. The dataset's
default threshold is then checked through ImageSearch.find_duplicates itself.

Timing (--sizes): synthetic 512-d vectors shaped like a photo collection's (evaluation/synthetic_vectors.py) with
planted copies (0.5% of the images have 1-3 near-copies at cosine threshold to 0.995, another 0.5% an exact copy
with the same SHA-256) are stored the way an ingest stores them, in the index kind the size gets, and
find_duplicates is timed on them: index load, then the grouping, and how many planted copies were found.
Everything runs in a throwaway data folder with its own SQLite store.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

from cli.common import ToolParser, add_json_flag, print_result, run_tool, text_to_stderr_under_json

DEFAULT_MODEL = "efficientnet-lite0"
DEFAULT_SIZES = "100000,1000000"
GROUPING_DATASET = "edited-copies"
THRESHOLDS = [round(0.60 + 0.01 * i, 2) for i in range(36)]  # 0.60 to 0.95
NEIGHBOUR_CHOICES = [1, 2, 3, 4, 8, 32]
TARGET = 0.95  # the share of edit pairs a default threshold must group


def build_parser() -> argparse.ArgumentParser:
    from evaluation.benchmark_quality import SEED_EVAL

    parser = ToolParser(prog="python -m evaluation.benchmark_duplicates", description=__doc__.strip().splitlines()[0])
    parser.add_argument("--photos", default=None, help=f"folder of real photos to edit and group (default {SEED_EVAL})")
    parser.add_argument("--no-photos", action="store_true", help="skip the grouping rates")
    parser.add_argument("--model", "-m", default=DEFAULT_MODEL, help=f"model for the rates (default {DEFAULT_MODEL})")
    parser.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default: CUDA when available)")
    parser.add_argument("--sizes", default=DEFAULT_SIZES,
                        help=f"comma-separated synthetic sizes to time (default {DEFAULT_SIZES}; '' skips)")
    parser.add_argument("--threshold", type=float, default=None,
                        help="threshold for the timings (default: the CLIP family's, whose space the synthetic "
                             "vectors imitate)")
    parser.add_argument("--nprobe", default=None,
                        help="comma-separated IVF lists to scan per vector while grouping, to compare (default: "
                             "the built-in value)")
    add_json_flag(parser, "every measurement")
    return parser


# -- grouping rates on real photos -------------------------------------------------------------------------------
def _graph_edges(index, neighbours: int, lowest: float):
    firsts, seconds, scores = [], [], []
    for first, second, score in index.similar_pairs(lowest, neighbours):
        firsts.append(first)
        seconds.append(second)
        scores.append(score)
    if not firsts:
        empty = np.zeros(0, dtype=np.int64)
        return empty, empty, np.zeros(0, dtype=np.float32)
    return np.concatenate(firsts), np.concatenate(seconds), np.concatenate(scores)


def _groups_at(edges, threshold: float) -> list[np.ndarray]:
    from image_search.duplicates.components import components

    first, second, score = edges
    keep = score >= threshold
    first, second = first[keep], second[keep]
    return components(np.unique(np.concatenate([first, second])), first, second)


def _rates(groups: list[np.ndarray], originals: dict[int, int], copies: dict[int, tuple[int, str]]) -> dict:
    """originals: vector id -> original number; copies: vector id -> (original number, edit name)."""
    group_of = {int(i): number for number, group in enumerate(groups) for i in group}
    original_ids = {number: vector_id for vector_id, number in originals.items()}
    per_edit: dict[str, list[bool]] = defaultdict(list)
    for vector_id, (number, edit) in copies.items():
        group = group_of.get(vector_id)
        per_edit[edit].append(group is not None and group == group_of.get(original_ids[number]))
    grouped = [value for values in per_edit.values() for value in values]
    originals_per_group: dict[int, int] = defaultdict(int)
    for vector_id in originals:
        if vector_id in group_of:
            originals_per_group[group_of[vector_id]] += 1
    unrelated = sum(n * (n - 1) // 2 for n in originals_per_group.values())
    pairs = len(originals) * (len(originals) - 1) // 2
    return {
        "edit_pairs_grouped": round(float(np.mean(grouped)), 4) if grouped else None,
        "per_edit": {edit: round(float(np.mean(values)), 4) for edit, values in sorted(per_edit.items())},
        "unrelated_pairs": unrelated, "unrelated_share": round(unrelated / max(1, pairs), 5),
        "originals_joined": sum(n for n in originals_per_group.values() if n > 1),
        "largest_group": max((len(group) for group in groups), default=0),
    }


def _sweep(index, originals, copies) -> dict:
    sweep = {}
    for neighbours in NEIGHBOUR_CHOICES:
        edges = _graph_edges(index, neighbours, THRESHOLDS[0])
        sweep[str(neighbours)] = {f"{t:.2f}": _rates(_groups_at(edges, t), originals, copies) for t in THRESHOLDS}
    return sweep


def _highest_meeting_target(sweep_of_neighbours: dict) -> str | None:
    meeting = [t for t, rates in sweep_of_neighbours.items() if (rates["edit_pairs_grouped"] or 0) >= TARGET]
    return max(meeting, key=float) if meeting else None


def grouping_rates(args, work: Path, log) -> dict:
    from evaluation.benchmark_quality import _photos_folder
    from evaluation.edits import EDITS, write_edited_copies
    from image_search import vectors
    from image_search.config import Settings
    from image_search.duplicates import NEIGHBOURS, default_threshold
    from image_search.models import parse_model_name
    from image_search.pipeline.scan import printable, scan_folder
    from image_search.service import ImageSearch

    model = parse_model_name(args.model).name
    photos = _photos_folder(args.photos)
    folder = work / "edited-copies"
    originals_folder = folder / "originals"
    sources = [entry.path for entry in scan_folder(photos).files]
    for source in sources:
        target = originals_folder / os.path.relpath(source, photos)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(source, target)
    originals_list = [entry.path for entry in scan_folder(str(originals_folder)).files]
    written, unusable = write_edited_copies(originals_list, str(originals_folder), str(folder / "edits"))
    engine = ImageSearch(Settings(data_home=work / "home", model_name=model, device=args.device, database=None))
    try:
        log(f"Ingesting {len(originals_list)} photos from {printable(photos)} and {len(written)} edited copies "
            f"with {model} ...")
        engine.ingest(str(folder), GROUPING_DATASET, progress=False)
        loaded = engine.load_index(GROUPING_DATASET)
        ids = np.concatenate([chunk_ids for chunk_ids, _ in loaded.index.export()])
        paths, _ = engine.store.lookup_paths(loaded.record.id, ids.tolist())
        number_of = {path: number for number, path in enumerate(sorted(originals_list))}
        originals = {vid: number_of[path] for vid, path in paths.items() if path in number_of}
        copy_of = {query.path: (number_of[query.original], query.edit) for query in written}
        copies = {vid: copy_of[path] for vid, path in paths.items() if path in copy_of}
        log("Grouping at each threshold and number of neighbours ...")
        all_edits = _sweep(loaded.index, originals, copies)
        one_edit = {}
        for edit in EDITS:
            kept = set(originals) | {vid for vid, (_, name) in copies.items() if name == edit}
            subset = vectors.new_index(loaded.index.dim)
            for chunk_ids, chunk_vectors in loaded.index.export():
                keep = np.isin(chunk_ids, list(kept))
                subset.add(chunk_vectors[keep], chunk_ids[keep])
            one_edit[edit] = _sweep(subset, originals, {v: c for v, c in copies.items() if v in kept})
        one_edit_mean = {}
        for neighbours in map(str, NEIGHBOUR_CHOICES):
            one_edit_mean[neighbours] = {}
            for t in all_edits[neighbours]:
                rows = [one_edit[edit][neighbours][t] for edit in EDITS]
                one_edit_mean[neighbours][t] = {
                    "edit_pairs_grouped": round(float(np.mean([r["edit_pairs_grouped"] for r in rows])), 4),
                    "unrelated_pairs": round(float(np.mean([r["unrelated_pairs"] for r in rows])), 1),
                    "originals_joined": round(float(np.mean([r["originals_joined"] for r in rows])), 1)}
        default = default_threshold(model)
        found = engine.find_duplicates(GROUPING_DATASET, default)
        through_service = _rates([np.array(sorted(vid for vid, path in paths.items() if path in set(g.paths())))
                                  for g in found.near_groups], originals, copies)
    finally:
        engine.close()
    return {
        "model": model, "photos": printable(photos), "originals": len(originals), "edited_copies": len(copies),
        "unusable": [{"path": printable(p), "reason": r} for p, r in unusable],
        "edits": {name: edit.description for name, edit in EDITS.items()},
        "default": {"threshold": default, "neighbours": NEIGHBOURS, "find_duplicates": through_service,
                    "seconds": round(found.seconds, 3)},
        "highest_threshold_grouping_95": {n: _highest_meeting_target(s) for n, s in all_edits.items()},
        "all_edits": all_edits, "one_edit_mean": one_edit_mean,
        "one_edit_at_default_neighbours": {edit: sweeps[str(NEIGHBOURS)] for edit, sweeps in one_edit.items()},
    }


def rates_lines(rates: dict) -> list[str]:
    default = rates["default"]
    chosen = default["find_duplicates"]
    n, t = str(default["neighbours"]), f"{default['threshold']:.2f}"
    one = rates["one_edit_mean"].get(n, {}).get(t)
    lines = [f"Grouping {rates['originals']} photos and {rates['edited_copies']} edited copies with {rates['model']}:",
             f"  default threshold {t}, {n} neighbours per image: {chosen['edit_pairs_grouped']:.1%} of edit pairs "
             f"grouped; {chosen['unrelated_pairs']} pairs of different photos grouped "
             f"({chosen['unrelated_share']:.2%}), {chosen['originals_joined']} photos joined to another photo, "
             f"largest group {chosen['largest_group']}",
             "  per edit: " + ", ".join(f"{edit} {share:.0%}" for edit, share in chosen["per_edit"].items())]
    if one:
        lines.append(f"  one edit at a time: {one['edit_pairs_grouped']:.1%} grouped, {one['unrelated_pairs']} "
                     f"unrelated pairs, {one['originals_joined']} photos joined (means over the edits)")
    lines.append("  highest threshold grouping >= 95% of edit pairs, by neighbours per image: " + ", ".join(
        f"{k}: {v}" for k, v in rates["highest_threshold_grouping_95"].items()))
    return lines


# -- timing on synthetic vectors ------------------------------------------------------------------------------
def _planted_collection(size: int, threshold: float, seed: int = 11):
    """Synthetic vectors whose tail holds planted copies: (vectors, base of each near copy, exact pairs)."""
    from evaluation.synthetic_vectors import SyntheticCollection

    vectors_ = SyntheticCollection().all_vectors(size)
    rng = np.random.default_rng(seed)
    families = max(1, size // 200)
    copies_per = rng.integers(1, 4, families)
    near_count = int(copies_per.sum())
    exact_count = max(1, size // 200)
    originals_end = size - near_count - exact_count
    bases = rng.choice(originals_end, families, replace=False)
    near_bases = np.repeat(bases, copies_per)
    cosine = rng.uniform(threshold + 0.01, 0.995, near_count)
    noise = rng.standard_normal((near_count, vectors_.shape[1])).astype(np.float32)
    noise /= np.linalg.norm(noise, axis=1, keepdims=True)
    noise -= (noise * vectors_[near_bases]).sum(1, keepdims=True) * vectors_[near_bases]  # orthogonal to the base
    noise /= np.linalg.norm(noise, axis=1, keepdims=True)
    near_rows = np.arange(originals_end, originals_end + near_count)
    vectors_[near_rows] = (cosine[:, None] * vectors_[near_bases]
                           + np.sqrt(1 - cosine ** 2)[:, None] * noise).astype(np.float32)
    exact_sources = rng.choice(originals_end, exact_count, replace=False)
    exact_rows = np.arange(originals_end + near_count, size)
    vectors_[exact_rows] = vectors_[exact_sources]
    return vectors_, dict(zip(near_rows.tolist(), near_bases.tolist())), dict(zip(exact_rows.tolist(),
                                                                                   exact_sources.tolist()))


def time_size(size: int, threshold: float, work: Path, nprobe: int | None, log) -> dict:
    from image_search import vectors
    from image_search.config import Settings
    from image_search.service import ImageSearch
    from image_search.store import ImageFacts, ImageRecord, NewDataset
    from image_search.vectors import faiss_index

    log(f"[{size}] generating vectors with planted copies")
    data, near_base, exact_source = _planted_collection(size, threshold)
    sha = np.arange(size)
    for row, source in exact_source.items():
        sha[row] = source
    ids = np.arange(1, size + 1, dtype=np.int64)  # vector id = row + 1
    index = vectors.new_index(data.shape[1])
    index.add(data, ids)
    del data
    started = time.perf_counter()
    index = vectors.fit(index)
    build_s = time.perf_counter() - started
    log(f"[{size}] {index.describe()} built in {build_s:.1f} s; storing")
    home = work / f"home-{size}-{nprobe}"
    engine = ImageSearch(Settings(data_home=home, model_name="ViT-B-32:random", device="cpu", database=None))
    try:
        uid = f"dupes{size}"
        index.save(vectors.layout.index_file(home, uid, 1))
        kind = index.kind
        del index
        rows = (ImageRecord(int(i), f"/synthetic/{i:07d}.jpg", 1000, 0, facts=
                            ImageFacts(sha256=f"{int(sha[i - 1]):064x}", md5=f"{int(sha[i - 1]):032x}"))
                for i in ids)
        engine.store.commit_generation(dataset=NewDataset("synthetic", uid, "ViT-B-32:random", 512, "/synthetic",
                                                          kind),
                                       base_generation=0, new_generation=1, added=rows, removed_ids=[],
                                       image_count=size, next_vector_id=size + 1)
        if nprobe is not None:
            faiss_index.GROUPING_NPROBE = nprobe
        loaded, load_s = _timed(engine.load_index, "synthetic")
        log(f"[{size}] grouping with {loaded.index.describe()}, grouping nprobe {faiss_index.GROUPING_NPROBE}")
        found, find_s = _timed(engine.find_duplicates, "synthetic", threshold)
    finally:
        engine.close()
    group_of = {}
    for number, group in enumerate(found.near_groups):
        for member in group.members:
            group_of[member.path] = number
    path = lambda row: f"/synthetic/{row + 1:07d}.jpg"  # noqa: E731
    near_found = [group_of.get(path(row), -1) == group_of.get(path(base), -2) for row, base in near_base.items()]
    exact_paths = {frozenset(g.paths()) for g in found.exact_groups}
    exact_found = [frozenset({path(row), path(source)}) in exact_paths for row, source in exact_source.items()]
    result = {"index": kind, "build_s": round(build_s, 1), "load_s": round(load_s, 2),
              "find_s": round(find_s, 1), "grouping_nprobe": faiss_index.GROUPING_NPROBE,
              "threshold": threshold, "planted_near_copies": len(near_base),
              "near_copies_grouped": round(float(np.mean(near_found)), 4),
              "planted_exact_copies": len(exact_source), "exact_copies_found": round(float(np.mean(exact_found)), 4),
              "near_groups": len(found.near_groups), "exact_groups": len(found.exact_groups),
              "largest_near_group": max((g.size for g in found.near_groups), default=0)}
    log(f"[{size}] {result}")
    return result


def _timed(function, *args):
    started = time.perf_counter()
    value = function(*args)
    return value, time.perf_counter() - started


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    from image_search.duplicates import default_threshold

    sizes = [int(s) for s in args.sizes.split(",") if s.strip()]
    nprobes = [int(p) for p in args.nprobe.split(",")] if args.nprobe else [None]
    threshold = args.threshold if args.threshold is not None else default_threshold("ViT-B-32:random")
    log = lambda text: print(text, file=sys.stderr, flush=True)  # noqa: E731
    report = {"machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                          "processor": platform.processor()}}
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="image-search-duplicates-") as work, text_to_stderr_under_json(args):
        if not args.no_photos:
            report["rates"] = grouping_rates(args, Path(work), log)
        report["timing"] = {str(size): [time_size(size, threshold, Path(work), nprobe, log) for nprobe in nprobes]
                            for size in sizes}
    report["seconds"] = round(time.perf_counter() - started, 1)
    lines = rates_lines(report["rates"]) if "rates" in report else []
    for size, runs in report["timing"].items():
        for run in runs:
            lines.append(f"{int(size):,} vectors ({run['index']}, grouping nprobe {run['grouping_nprobe']}): "
                         f"grouped in {run['find_s']} s after a {run['load_s']} s load; planted near-copies grouped "
                         f"{run['near_copies_grouped']:.1%}, exact copies found {run['exact_copies_found']:.1%}")
    print_result(args, "\n".join(lines), report)
    return 0


if __name__ == "__main__":
    run_tool(main)
