"""Dataset names: safe as file names and SQL values, readable on a command line."""

import re

from ..errors import InvalidInputError

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")


def validate_dataset_name(name) -> str:
    if not isinstance(name, str) or not _NAME.fullmatch(name.strip()):
        shown = name if isinstance(name, str) else type(name).__name__
        raise InvalidInputError(f"Dataset name {shown!r} is not valid; use 1 to 64 letters, digits, '_', '-' or "
                                "'.', starting with a letter or digit.")
    return name.strip()
