"""Which family reads a model name: the table of name forms, the one place that knows every family.

Adding a family is one module (its ModelFamily, the function that reads its names into a ModelSpec, its
Embedder) and one line in NAME_FORMS.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable

from ..errors import InvalidInputError
from . import clip, efficientnet
from .base import ModelSpec


@dataclass(frozen=True)
class NameForm:
    pattern: re.Pattern  # matches the whole of a name of this form (surrounding spaces removed)
    read: Callable[[str], ModelSpec]  # such a name -> the spec its family reads it as
    shown_as: str  # how the form reads in the sentence that lists the valid names


# The forms do not overlap, so their order is only the order in which that sentence lists them.
NAME_FORMS = (
    NameForm(re.compile(r"[^:\s][^:]*:.+", re.DOTALL), clip.read_name,  # ARCH and weights, neither empty
             "ARCH:PRETRAINED (e.g. ViT-B-32:laion2b_s34b_b79k), ARCH:/path/to/weights.pt, ARCH:random"),
    NameForm(re.compile(re.escape(efficientnet.EFFICIENTNET_LITE0), re.IGNORECASE | re.ASCII), efficientnet.read_name,
             f"{efficientnet.EFFICIENTNET_LITE0} (offline, image search only)"),
    NameForm(re.compile(re.escape(clip.TEST_TINY)), clip.read_test_tiny_name, clip.TEST_TINY),
)


def parse_model_name(name: str) -> ModelSpec:
    name = (name or "").strip()
    for form in NAME_FORMS:
        if form.pattern.fullmatch(name):
            return form.read(name)
    *forms, last = (form.shown_as for form in NAME_FORMS)
    raise InvalidInputError(f"Model name '{name}' is not valid; use {', '.join(forms)} or {last}.")


def model_supports_text(name: str) -> bool:
    """Whether the model with this name can answer text queries, without loading it."""
    return parse_model_name(name).supports_text
