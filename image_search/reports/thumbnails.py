"""Small JPEG thumbnails as data: URIs, so that an HTML report carries its pictures inside the one file."""

from __future__ import annotations

import base64
import io
from dataclasses import dataclass

from ..pipeline.decode import NotAnImage, UnreadableImage, load_rgb

THUMBNAIL_SIDE = 240  # pixels, the longer side: a grid card's width on a screen, about 8 KB per picture
_QUALITY = 80


@dataclass(frozen=True)
class Thumbnail:
    data_uri: str
    width: int
    height: int


def thumbnail(path: str, side: int = THUMBNAIL_SIDE) -> Thumbnail | str:
    """The picture at path, upright, at most `side` pixels on its longer side; or, when it cannot be read now
    (moved, deleted, damaged since the ingest), the reason as a string."""
    try:
        image = load_rgb(path, min_side=side)  # JPEGs are decoded at a reduced scale: fast for large photos
    except NotAnImage:
        return "not an image"
    except UnreadableImage as error:
        return str(error)
    except OSError as error:
        return error.strerror or str(error)
    image.thumbnail((side, side))
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=_QUALITY)
    encoded = base64.b64encode(buffer.getvalue()).decode("ascii")
    return Thumbnail(f"data:image/jpeg;base64,{encoded}", image.width, image.height)
