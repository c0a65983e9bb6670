"""Which folders a process may read from a path someone gives it: IMAGE_SEARCH_ALLOWED_ROOTS.

When the setting names folders, a folder to ingest and a query image must lie inside one of them once every
symbolic link is resolved (a link inside that points outside is outside). The refusal is the same sentence whether
or not the path exists and whatever it is, and it is given before anything else is said about the path: a caller
who may not read a path learns nothing about it, not even whether it exists. Without the setting every path is
allowed, as before.
"""

from __future__ import annotations

import os

from ..errors import Fix, InvalidInputError
from ..pipeline.scan import printable


def parse_allowed_roots(text: str) -> tuple[str, ...]:
    """The folders named by IMAGE_SEARCH_ALLOWED_ROOTS (os.pathsep-separated; empty entries ignored), each made
    absolute with its links resolved; () when none are named (every path allowed)."""
    roots = []
    for entry in text.split(os.pathsep):
        entry = entry.strip()
        if entry:
            root = os.path.realpath(os.path.expanduser(entry))
            if root not in roots:
                roots.append(root)
    return tuple(roots)


def is_inside(resolved: str, root: str) -> bool:
    resolved, root = os.path.normcase(resolved), os.path.normcase(root)
    return resolved == root or resolved.startswith(root.rstrip(os.sep) + os.sep)


def check_allowed(given, allowed_roots: tuple[str, ...], what: str) -> str:
    """The path as given, made absolute with its links resolved; refused (InvalidInputError, Fix.ALLOWED_ROOTS)
    when allowed_roots are set and it lies outside all of them. what: how the path is named in the sentence
    ('input folder', 'query image').

    The sentence depends only on the path as given and the roots, never on what is there."""
    resolved = os.path.realpath(os.path.expanduser(str(given)))
    if allowed_roots and not any(is_inside(resolved, root) for root in allowed_roots):
        shown = os.path.abspath(os.path.expanduser(str(given)))
        raise InvalidInputError(f"The {what} {printable(shown)} is not inside the folders that may be read "
                                f"({', '.join(printable(root) for root in allowed_roots)}).",
                                fix=Fix.ALLOWED_ROOTS)
    return resolved
