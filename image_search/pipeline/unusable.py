"""The two verdicts on a file that cannot be embedded, which every reader gives and every caller reports.

They live apart from decode.py so that the modules decode.py itself uses (safe_open.py) can raise them too.
"""

from __future__ import annotations


class NotAnImage(Exception):
    """The file is not an image and does not claim to be one: ignored, not reported."""


class UnreadableImage(Exception):
    """The file is (or claims to be) an image but cannot be used; str() is the reason."""
