"""One image file to pixels on the CPU: recognising it by content, reading it once, decoding it safely and fast,
and the model's resize and crop (read_pixels; pixels_from_bytes also gives the file's facts from the same bytes).

Nothing here lets a bad file take an ingest down: a file that cannot be used raises NotAnImage or UnreadableImage
(whose text is the reason), and the readers record it and go on.
"""

from __future__ import annotations

import io
from contextlib import contextmanager
from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

from ..store.records import ImageFacts
from .facts import facts_from_bytes
from .safe_open import NotARegularFile, open_regular_file, open_scanned_file, read_scanned_file

# Seized drives hold every kind of broken file; Pillow's decompression-bomb guard stays on (its default limit),
# and a bomb becomes a skipped file with a reason, not a crash.
ImageFile.LOAD_TRUNCATED_IMAGES = False

IMAGE_EXTENSIONS = frozenset({
    ".jpg", ".jpeg", ".jpe", ".jfif", ".png", ".webp", ".bmp", ".dib", ".gif", ".tif", ".tiff",
})

_HEADER_BYTES = 16


def sniff_format(header: bytes) -> str | None:
    """The image format named by a file's first bytes, or None."""
    if header.startswith(b"\xff\xd8\xff"):
        return "JPEG"
    if header.startswith(b"\x89PNG\r\n\x1a\n"):
        return "PNG"
    if header.startswith((b"GIF87a", b"GIF89a")):
        return "GIF"
    if header.startswith(b"BM") and len(header) >= 14:
        return "BMP"
    if header.startswith(b"RIFF") and header[8:12] == b"WEBP":
        return "WEBP"
    if header.startswith((b"II*\x00", b"MM\x00*")):
        return "TIFF"
    return None


class NotAnImage(Exception):
    """The file is not an image and does not claim to be one: ignored, not reported."""


class UnreadableImage(Exception):
    """The file is (or claims to be) an image but cannot be used; str() is the reason."""


def _to_rgb(image: Image.Image) -> Image.Image:
    """Any Pillow mode -> 8-bit RGB, the way a viewer would show it."""
    if image.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        # 16/32-bit greyscale: scale the real range to 8 bits instead of clipping at 255.
        array = np.asarray(image, dtype=np.float64)
        low, high = float(array.min()), float(array.max())
        scaled = np.zeros_like(array) if high <= low else (array - low) * (255.0 / (high - low))
        return Image.fromarray(scaled.astype(np.uint8), "L").convert("RGB")
    has_alpha = image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info)
    if has_alpha:
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    if image.mode != "RGB":
        return image.convert("RGB")
    return image


def open_image_file(path: str, *, scanned: bool = False):
    """The file opened for reading when it is a regular file (pipeline/safe_open.py): scanned, a path an ingest's
    scan found, which must still be exactly there; otherwise a path someone gave, whose links are followed."""
    return open_scanned_file(path) if scanned else open_regular_file(path, follow_symlinks=True)


def read_image_file(path: str, *, scanned: bool = False) -> tuple[bytes, str]:
    """The whole file and the image format its first bytes name: the one read of a file that every later step
    (decoding, the GPU path, hashing) works from. Only a file that looks like an image is read past its header.
    scanned: see open_image_file. Raises NotAnImage or UnreadableImage."""
    with _reading_errors():
        with open_image_file(path, scanned=scanned) as handle:
            header = handle.read(_HEADER_BYTES)
            fmt = image_format(header, path)
            return header + handle.read(), fmt


def read_scanned_image(path: str) -> tuple[bytes, str]:
    """read_image_file(path, scanned=True) in fewer system calls (safe_open.read_scanned_file), for the threaded
    reader: a file whose name claims an image is read whole at once; any other is read past its first bytes only
    when they are an image's. Raises NotAnImage or UnreadableImage, with the same reasons."""
    with _reading_errors():
        claimed = Path(path).suffix.lower() in IMAGE_EXTENSIONS
        data = read_scanned_file(path, whole=claimed, head=_HEADER_BYTES)
        fmt = image_format(data[:_HEADER_BYTES], path)
        if not claimed:
            data = read_image_file(path, scanned=True)[0]  # an image by its content, not its name: rare
        return data, fmt


def image_format(header: bytes, path: str) -> str:
    """The format a file's first bytes name. Raises NotAnImage for a file that neither is nor claims to be an
    image (by its name), UnreadableImage for one that claims to be but is not."""
    fmt = sniff_format(header)
    if fmt is None:
        if Path(path).suffix.lower() not in IMAGE_EXTENSIONS:
            raise NotAnImage(path)
        if not header:
            raise UnreadableImage("empty file (0 bytes)")
        raise UnreadableImage("not an image: its content is not JPEG, PNG, WebP, BMP, GIF or TIFF")
    return fmt


@contextmanager
def _reading_errors():
    """A failed read as UnreadableImage, with the reason in a reader's words."""
    try:
        yield
    except NotARegularFile as error:
        raise UnreadableImage(f"not read: {error}") from None
    except PermissionError:
        raise UnreadableImage("permission denied") from None
    except FileNotFoundError:
        raise UnreadableImage("file disappeared while reading") from None
    except IsADirectoryError:
        raise UnreadableImage("is a folder, not a file") from None
    except OSError as error:
        raise UnreadableImage(f"cannot read: {str(error).strip()[:200] or type(error).__name__}") from None
    except MemoryError:
        raise UnreadableImage("too large to read into memory") from None


def decode_rgb(data: bytes, fmt: str, *, min_side: int | None = None,
               capture: bool = False) -> tuple[Image.Image, ImageFacts | None]:
    """Decode a file's bytes (read_image_file) to an upright RGB image, and with capture, its facts (facts.py)
    from the same bytes and the same parsed header.

    min_side: when given, JPEGs are decoded at a reduced scale (libjpeg DCT scaling) as long as both sides stay at
    least this large; the caller resizes afterwards, so this only saves work.
    Raises UnreadableImage.
    """
    facts = None
    try:
        # Pillow's warnings are filtered in pipeline/__init__.py
        image = Image.open(io.BytesIO(data), formats=[fmt])
        if capture:  # as opened: before the draft shrinks it and the orientation turns it
            facts = facts_from_bytes(data, image)
        if min_side and fmt == "JPEG":
            image.draft("RGB", (min_side, min_side))
        image.load()
        image = ImageOps.exif_transpose(image)
        image = _to_rgb(image)
    except Image.DecompressionBombError:
        raise UnreadableImage("too many pixels (over Pillow's decompression-bomb limit)") from None
    except UnidentifiedImageError:  # its message names the in-memory file object, not the file
        raise UnreadableImage(f"cannot decode: damaged or unsupported {fmt} data") from None
    except (OSError, SyntaxError, ValueError, EOFError, TypeError, IndexError, KeyError,
            ZeroDivisionError, RuntimeError, MemoryError) as error:
        message = str(error).strip() or type(error).__name__
        raise UnreadableImage(f"cannot decode: {message[:200]}") from None
    if image.width < 1 or image.height < 1:
        raise UnreadableImage("image has no pixels")
    return image, facts


def load_rgb(path: str, *, min_side: int | None = None) -> Image.Image:
    """Decode an image file to an upright RGB image (see decode_rgb). Raises NotAnImage or UnreadableImage."""
    data, fmt = read_image_file(path)
    return decode_rgb(data, fmt, min_side=min_side)[0]


def read_pixels(path: str, geometry: Callable, min_side: int | None, *, scanned: bool = False) -> np.ndarray:
    """One file -> uint8 array [3, S, S]. Raises NotAnImage or UnreadableImage."""
    data, fmt = read_image_file(path, scanned=scanned)
    return pixels_from_bytes(data, fmt, geometry, min_side)[0]


def pixels_from_bytes(data: bytes, fmt: str, geometry: Callable, min_side: int | None, *,
                      capture: bool = False) -> tuple[np.ndarray, ImageFacts | None]:
    """A file's bytes -> uint8 array [3, S, S], and with capture its facts. Raises UnreadableImage."""
    image, facts = decode_rgb(data, fmt, min_side=min_side, capture=capture)
    try:
        plan = resize_crop_plan(geometry)
        image = resize_and_crop(image, *plan) if plan else geometry(image)
    except (OSError, ValueError) as error:
        raise UnreadableImage(f"cannot resize: {error}") from None
    array = np.asarray(image, dtype=np.uint8)
    if array.ndim != 3 or array.shape[2] != 3:
        raise UnreadableImage(f"unexpected pixel layout {array.shape}")
    return np.ascontiguousarray(array.transpose(2, 0, 1)), facts


_plans: dict[int, tuple[Callable, tuple | None]] = {}


def resize_crop_plan(geometry: Callable) -> tuple | None:
    """(side, crop, PIL resample) when geometry is torchvision's Resize(shorter side) then a square CenterCrop, the
    shape of open_clip's inference transform; None for anything else (then geometry itself runs)."""
    cached = _plans.get(id(geometry))
    if cached is not None and cached[0] is geometry:
        return cached[1]
    plan = None
    try:
        # Imported here, not at the top: a command that never decodes a file does not pay for loading torchvision.
        from torchvision.transforms import CenterCrop, Resize
        from torchvision.transforms.functional import pil_modes_mapping

        resize, crop = geometry.transforms
        size = [resize.size] if isinstance(resize.size, int) else list(resize.size)
        crop_size = [crop.size] if isinstance(crop.size, int) else list(crop.size)
        if (type(resize) is Resize and type(crop) is CenterCrop and len(size) == 1 and resize.max_size is None
                and len(set(crop_size)) == 1 and size[0] >= crop_size[0]
                and resize.interpolation in pil_modes_mapping):
            plan = (int(size[0]), int(crop_size[0]), pil_modes_mapping[resize.interpolation])
    except (AttributeError, TypeError, ValueError, ImportError):
        plan = None
    _plans[id(geometry)] = (geometry, plan)
    return plan


def resize_and_crop(image, side: int, crop: int, resample):
    """Resize the shorter side to `side`, then take the centre crop x crop, like torchvision's Resize + CenterCrop
    on a PIL image, but resampling only the pixels the crop keeps (Pillow's resize box): a quarter less work for
    4:3 photos. Output equals the two-step result to within one intensity level (rounding)."""
    width, height = image.size
    if width <= height:
        new_width, new_height = side, int(side * height / width)
    else:
        new_width, new_height = int(side * width / height), side
    if (new_width, new_height) == (width, height):  # torchvision does not resample then
        return image.crop(_centre(width, height, crop))
    left, top, right, bottom = _centre(new_width, new_height, crop)
    scale_x, scale_y = width / new_width, height / new_height
    return image.resize((crop, crop), resample,
                        box=(left * scale_x, top * scale_y, right * scale_x, bottom * scale_y))


def _centre(width: int, height: int, crop: int) -> tuple[int, int, int, int]:
    top, left = int(round((height - crop) / 2.0)), int(round((width - crop) / 2.0))
    return left, top, left + crop, top + crop
