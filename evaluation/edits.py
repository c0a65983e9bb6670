"""The edits people make to copies of a picture, for near-duplicate retrieval benchmarks.

"Where else does this picture appear?" is answered by searching with a copy that was resized, recompressed,
cropped, brightened, turned grey, straightened or screenshotted. Each edit here is deterministic and takes an
upright RGB image; write_edited_copies saves every edit of every original the way such copies are usually stored
(JPEG, or PNG for screenshots).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Callable, Iterable

from PIL import Image, ImageEnhance

from image_search.retrieval_quality import NearDuplicateQuery
from image_search.pipeline.decode import NotAnImage, UnreadableImage, load_rgb

_SAVED_JPEG_QUALITY = 95  # copies re-saved by an editor; only the recompress edit degrades on purpose


@dataclass(frozen=True)
class Edit:
    name: str
    description: str
    apply: Callable[[Image.Image], Image.Image]
    format: str = "JPEG"
    quality: int = _SAVED_JPEG_QUALITY


def identity(image: Image.Image) -> Image.Image:
    return image


def downscale_half(image: Image.Image) -> Image.Image:
    width, height = image.size
    return image.resize((max(1, round(width / 2)), max(1, round(height / 2))), Image.Resampling.LANCZOS)


def center_crop_85(image: Image.Image) -> Image.Image:
    width, height = image.size
    crop_width, crop_height = max(1, round(width * 0.85)), max(1, round(height * 0.85))
    left, top = (width - crop_width) // 2, (height - crop_height) // 2
    return image.crop((left, top, left + crop_width, top + crop_height))


def brighten_30(image: Image.Image) -> Image.Image:
    return ImageEnhance.Brightness(image).enhance(1.3)


def grayscale(image: Image.Image) -> Image.Image:
    return image.convert("L")


def rotate_5(image: Image.Image) -> Image.Image:
    # Counter-clockwise, canvas grown to keep every pixel, corners filled black as most editors do.
    return image.rotate(5, resample=Image.Resampling.BICUBIC, expand=True, fillcolor=(0, 0, 0))


def screenshot(image: Image.Image) -> Image.Image:
    """The picture at 1:1 inside a viewer window: a dark title bar, light-grey margins, more room on the right."""
    width, height = image.size
    margin, title_bar, side_panel = max(8, width // 12), max(12, height // 10), max(16, width // 4)
    canvas = Image.new("RGB", (width + 2 * margin + side_panel, height + title_bar + 2 * margin), (236, 236, 236))
    canvas.paste((60, 63, 70), (0, 0, canvas.width, title_bar))
    canvas.paste((250, 250, 250), (width + 2 * margin, title_bar, canvas.width, canvas.height))
    canvas.paste(image, (margin, title_bar + margin))
    return canvas


def edited(original, *edits: Callable[[Image.Image], Image.Image]) -> Image.Image:
    """The image file at original, upright in RGB, with the edits applied in turn."""
    image = load_rgb(str(original))
    for edit in edits:
        image = edit(image)
    return image


EDITS: dict[str, Edit] = {edit.name: edit for edit in (
    Edit("downscale", "resized to 50% (Lanczos)", downscale_half),
    Edit("recompress", "re-saved as JPEG quality 30", identity, quality=30),
    Edit("crop", "central 85% of width and height", center_crop_85),
    Edit("brightness", "brightness +30%", brighten_30),
    Edit("grayscale", "converted to greyscale", grayscale),
    Edit("rotate", "rotated 5 degrees, canvas expanded, black corners", rotate_5),
    Edit("screenshot", "pasted in a screenshot-like window with title bar and margins (PNG)", screenshot,
         format="PNG"),
)}


def write_edited_copies(originals: Iterable[str], root: str, out_dir: str,
                        edits: Iterable[str] = tuple(EDITS)) -> tuple[list[NearDuplicateQuery], list[tuple[str, str]]]:
    """Write every edit of every original under out_dir/<edit>/<path relative to root>.

    Returns (copies, unusable) where unusable lists (original, reason) for files that are not readable images.
    """
    chosen = [EDITS[name] for name in edits]
    copies, unusable = [], []
    for original in originals:
        try:
            image = load_rgb(original)
        except NotAnImage:
            unusable.append((original, "not an image"))
            continue
        except UnreadableImage as error:
            unusable.append((original, str(error)))
            continue
        relative = os.path.splitext(os.path.relpath(original, root))[0]
        for edit in chosen:
            target = os.path.join(out_dir, edit.name, relative + (".png" if edit.format == "PNG" else ".jpg"))
            os.makedirs(os.path.dirname(target), exist_ok=True)
            edited = edit.apply(image)
            if edit.format == "JPEG":
                edited.save(target, "JPEG", quality=edit.quality)
            else:
                edited.save(target, edit.format)
            copies.append(NearDuplicateQuery(edit.name, target, original))
    return copies, unusable
