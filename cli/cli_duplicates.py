"""Find a dataset's duplicates (python -m cli.cli_duplicates -n NAME [--threshold T] [--exact-only]).

Groups of exact copies (the same SHA-256) and of near-copies (edited, resized, recompressed: embeddings at least
the threshold similar), largest first. No model is loaded: the dataset's stored vectors and hashes are enough.
"""

from __future__ import annotations

import argparse

from cli.common import (ToolParser, add_common_flags, add_export_flag, add_json_flag, export_report,
                        open_from_flags, print_result, run_tool)


def build_parser() -> argparse.ArgumentParser:
    parser = ToolParser(prog="python -m cli.cli_duplicates",
                        description="Find the groups of exact copies and of near-copies (edited, resized, "
                                    "recompressed) in a dataset, largest groups first.")
    parser.add_argument("--name", "-n", required=True, help="dataset to look in")
    parser.add_argument("--threshold", "-t", default=None,
                        help="cosine similarity from which two images count as near-copies, above 0 and at most 1 "
                             "(default: the value measured for the dataset's model; higher finds fewer, closer "
                             "copies)")
    parser.add_argument("--exact-only", action="store_true",
                        help="only exact copies (the same bytes, by SHA-256); reads no vectors")
    add_json_flag(parser, 'the groups ({"exact_groups": [...], "near_groups": [...], ...}, each member with '
                          "its path, hashes and EXIF)")
    add_export_flag(parser, "the groups")
    add_common_flags(parser, model=False, device=False)
    return parser


def duplicates_text(found: dict) -> str:
    """The groups as Duplicates.to_dict() gives them, for people."""
    exact, near = found["exact_groups"], found["near_groups"]
    how = ("exact copies only" if found["exact_only"]
           else f"near-copies from cosine similarity {found['threshold']:.2f}")
    lines = [f"Dataset '{found['dataset']}' ({found['images']:,} images, model {found['model']}; {how}): "
             f"{len(exact)} groups of exact copies, {len(near)} groups of near-copies ({found['seconds']:.1f} s)."]
    number = 0
    if exact:
        lines += ["", "Exact copies (the same SHA-256):"]
        for group in exact:
            number += 1
            lines.append(f"group {number}: {group['size']} copies, SHA-256 {group['sha256']}")
            lines += [f"  {member['path']}" for member in group["members"]]
    if near:
        lines += ["", "Near-copies (score: similarity to the closest other image of the group):"]
        for group in near:
            number += 1
            lines.append(f"group {number}: {group['size']} images")
            lines += [f"  {member['score']:.4f}  {member['path']}" for member in group["members"]]
    if not exact and not near:
        lines.append("No duplicates found.")
    if found["unhashed"]:
        lines += ["", f"{found['unhashed']:,} images were ingested before hashes were captured, so their exact copies "
                      "are not known yet; ingest the dataset's folder again (python -m cli.cli_preprocess -i FOLDER "
                      f"-n {found['dataset']}) to hash them."]
    return "\n".join(lines)


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    engine = open_from_flags(args)
    found = engine.find_duplicates(args.name, args.threshold, exact_only=args.exact_only).to_dict()
    print_result(args, lambda: duplicates_text(found), found)
    export_report(args, found)
    return 0


if __name__ == "__main__":
    run_tool(main)
