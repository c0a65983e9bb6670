"""Synthetic images for the quick start, the tests and the benchmarks (python -m evaluation.sample_images DIR).

`write_demo_images` draws a small set of simple, nameable scenes (a red circle on grass, a yellow sun over the
sea, ...) that a real CLIP model finds by description. `make_photo` draws photo-like pictures: smooth lighting,
overlapping objects, texture and sensor noise, so JPEG file sizes and decode costs resemble real photographs.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

DEMO_SCENES = {
    "red_circle_on_grass": ((70, 150, 60), "ellipse", (220, 30, 30)),
    "blue_square_on_sand": ((225, 200, 150), "rectangle", (30, 60, 210)),
    "yellow_sun_over_sea": ((40, 90, 170), "sun", (250, 220, 40)),
    "green_triangle_on_white": ((245, 245, 245), "triangle", (40, 170, 60)),
    "black_cat_silhouette_at_night": ((20, 25, 60), "cat", (5, 5, 5)),
    "orange_stripes": ((250, 250, 250), "stripes", (245, 140, 20)),
    "purple_flower": ((120, 170, 90), "flower", (140, 50, 170)),
    "white_snowman_on_snow": ((215, 225, 240), "snowman", (255, 255, 255)),
}


def _draw_scene(kind: str, background, color, size: int = 512) -> Image.Image:
    image = Image.new("RGB", (size, size), background)
    draw = ImageDraw.Draw(image)
    s = size
    if kind == "ellipse":
        draw.ellipse((s * .25, s * .25, s * .75, s * .75), fill=color)
    elif kind == "rectangle":
        draw.rectangle((s * .25, s * .25, s * .75, s * .75), fill=color)
    elif kind == "sun":
        draw.rectangle((0, s * .6, s, s), fill=(20, 60, 140))
        draw.ellipse((s * .35, s * .15, s * .65, s * .45), fill=color)
    elif kind == "triangle":
        draw.polygon([(s * .5, s * .2), (s * .2, s * .8), (s * .8, s * .8)], fill=color)
    elif kind == "cat":
        draw.ellipse((s * .3, s * .45, s * .7, s * .9), fill=color)
        draw.ellipse((s * .37, s * .22, s * .63, s * .5), fill=color)
        draw.polygon([(s * .38, s * .3), (s * .4, s * .12), (s * .48, s * .25)], fill=color)
        draw.polygon([(s * .62, s * .3), (s * .6, s * .12), (s * .52, s * .25)], fill=color)
        draw.ellipse((s * .8, s * .08, s * .92, s * .2), fill=(240, 240, 200))
    elif kind == "stripes":
        for i in range(0, 8, 2):
            draw.rectangle((0, s * i / 8, s, s * (i + 1) / 8), fill=color)
    elif kind == "flower":
        for dx, dy in ((0, -1), (1, 0), (0, 1), (-1, 0), (.7, .7), (-.7, .7), (.7, -.7), (-.7, -.7)):
            cx, cy = s * (.5 + dx * .15), s * (.45 + dy * .15)
            draw.ellipse((cx - s * .1, cy - s * .1, cx + s * .1, cy + s * .1), fill=color)
        draw.ellipse((s * .43, s * .38, s * .57, s * .52), fill=(250, 210, 40))
        draw.rectangle((s * .49, s * .6, s * .51, s), fill=(40, 120, 40))
    elif kind == "snowman":
        draw.ellipse((s * .3, s * .55, s * .7, s * .95), fill=color, outline=(180, 180, 200))
        draw.ellipse((s * .36, s * .3, s * .64, s * .58), fill=color, outline=(180, 180, 200))
        draw.ellipse((s * .4, s * .1, s * .6, s * .32), fill=color, outline=(180, 180, 200))
        draw.polygon([(s * .5, s * .2), (s * .62, s * .23), (s * .5, s * .24)], fill=(240, 120, 20))
    return image


def write_demo_images(folder: str | os.PathLike) -> list[Path]:
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for name, (background, kind, color) in DEMO_SCENES.items():
        path = folder / f"{name}.jpg"
        _draw_scene(kind, background, color).save(path, quality=92)
        written.append(path)
    return written


def make_photo(seed: int, width: int, height: int) -> Image.Image:
    """A photo-like picture: smooth light, objects, texture and noise (deterministic for a seed)."""
    rng = np.random.default_rng(seed)
    small = rng.uniform(30, 230, size=(4, 4, 3)).astype(np.uint8)
    image = Image.fromarray(small).resize((width, height), Image.BICUBIC)
    draw = ImageDraw.Draw(image)
    for _ in range(int(rng.integers(6, 14))):
        x0, y0 = rng.uniform(-0.2, 1.0) * width, rng.uniform(-0.2, 1.0) * height
        w, h = rng.uniform(0.05, 0.5) * width, rng.uniform(0.05, 0.5) * height
        color = tuple(int(c) for c in rng.integers(0, 256, size=3))
        shape = rng.integers(0, 3)
        box = (x0, y0, x0 + w, y0 + h)
        if shape == 0:
            draw.ellipse(box, fill=color)
        elif shape == 1:
            draw.rectangle(box, fill=color)
        else:
            draw.polygon([(x0, y0 + h), (x0 + w / 2, y0), (x0 + w, y0 + h)], fill=color)
    image = image.filter(ImageFilter.GaussianBlur(radius=max(1.0, width / 800)))
    texture = rng.normal(0, 9, size=(height // 4 + 1, width // 4 + 1, 1))
    texture = np.kron(texture, np.ones((4, 4, 1)))[:height, :width]
    noise = rng.normal(0, 4, size=(height, width, 1))
    pixels = np.asarray(image, dtype=np.float32) + texture + noise
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


def size_for_megapixels(megapixels: float) -> tuple[int, int]:
    height = int(round((megapixels * 1e6 * 3 / 4) ** 0.5))
    return int(round(height * 4 / 3)), height


def write_photos(folder: str | os.PathLike, count: int, *, megapixels: float = 0.3, quality: int = 90,
                 seed: int = 0, prefix: str = "photo") -> list[Path]:
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    width, height = size_for_megapixels(megapixels)
    written = []
    for i in range(count):
        path = folder / f"{prefix}_{i:05d}.jpg"
        if not path.exists():
            make_photo(seed * 1_000_003 + i, width, height).save(path, quality=quality)
        written.append(path)
    return written


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m evaluation.sample_images", description=__doc__.strip())
    parser.add_argument("folder", help="where to write the images")
    parser.add_argument("--photos", type=int, default=0, help="also write this many photo-like JPEGs")
    parser.add_argument("--megapixels", type=float, default=0.3, help="size of the photo-like JPEGs")
    args = parser.parse_args(argv)
    written = write_demo_images(args.folder)
    if args.photos:
        written += write_photos(args.folder, args.photos, megapixels=args.megapixels)
    print(f"Wrote {len(written)} images to {os.path.abspath(args.folder)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
