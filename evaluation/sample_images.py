"""Synthetic images for the quick start, the tests and the benchmarks (python -m evaluation.sample_images DIR).

`write_demo_images` draws a small set of simple, nameable scenes (a red circle on grass, a yellow sun over the
sea, ...) that a real CLIP model finds by description. `write_category_set` (--categories DIR) draws variants of
those scenes as a train/ and val/ set for the category evaluation (python -m evaluation.evaluate). `make_photo`
draws photo-like pictures: smooth lighting, overlapping objects, texture and sensor noise, so JPEG file sizes and
decode costs resemble real photographs.
"""

from __future__ import annotations

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
    """The demo scenes as folder/NAME.jpg. A file that already holds the same picture is left alone, so a second
    run (of the demo, say) finds the folder unchanged and its ingest embeds nothing."""
    import io

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for name, (background, kind, color) in DEMO_SCENES.items():
        path = folder / f"{name}.jpg"
        encoded = io.BytesIO()
        _draw_scene(kind, background, color).save(encoded, format="JPEG", quality=92)
        if not (path.is_file() and path.read_bytes() == encoded.getvalue()):
            path.write_bytes(encoded.getvalue())
        written.append(path)
    return written


def scene_variant(name: str, rng: np.random.Generator, size: int = 256) -> Image.Image:
    """Demo scene `name` as another photo of the same subject would show it: other shades, framing, tilt, side,
    exposure and noise. Variants of one scene stay closer to each other than to any other scene, so an image
    model (efficientnet-lite0) retrieves them by category."""
    background, kind, color = DEMO_SCENES[name]
    cast = rng.integers(-20, 21, size=3)  # one colour cast over the whole picture, as a different light gives

    def shade(rgb):
        return tuple(int(np.clip(v + d, 0, 255)) for v, d in zip(rgb, cast + rng.integers(-12, 13, size=3)))

    canvas, ground = 512, shade(background)
    image = _draw_scene(kind, ground, shade(color), size=canvas)
    side = int(canvas * rng.uniform(0.75, 1.0))  # framed closer, off centre
    left, top = (int(v) for v in rng.integers(0, canvas - side + 1, size=2))
    image = image.crop((left, top, left + side, top + side))
    image = image.rotate(float(rng.uniform(-10, 10)), resample=Image.Resampling.BICUBIC, fillcolor=ground)
    if rng.random() < 0.5:
        image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    image = image.resize((size, size), Image.Resampling.LANCZOS)
    pixels = np.asarray(image, dtype=np.float32) * rng.uniform(0.85, 1.15)  # exposure
    pixels += rng.standard_normal(pixels.shape, dtype=np.float32) * 6.0  # sensor noise
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


def write_category_set(folder: str | os.PathLike, *, train: int = 5, val: int = 2, seed: int = 0) -> list[Path]:
    """A category-retrieval set like the original's evaluation set: folder/train and folder/val of CATEGORY_N.jpg,
    one category per demo scene, every image a different variant (val continues train's numbering)."""
    folder = Path(folder)
    rng = np.random.default_rng(seed)
    written = []
    for split, first, count in (("train", 1, train), ("val", train + 1, val)):
        (folder / split).mkdir(parents=True, exist_ok=True)
        for name in DEMO_SCENES:
            for number in range(first, first + count):
                path = folder / split / f"{name}_{number}.jpg"
                scene_variant(name, rng).save(path, quality=90)
                written.append(path)
    return written


def make_photo(seed: int, width: int, height: int) -> Image.Image:
    """A photo-like picture: smooth light, objects, texture and noise (deterministic for a seed)."""
    rng = np.random.default_rng(seed)
    small = rng.uniform(30, 230, size=(4, 4, 3)).astype(np.uint8)
    # Shapes are drawn and blurred at about 1 MP, then enlarged: blurring 12 MP directly takes seconds.
    factor = max(1, int(np.ceil((width * height / 1.2e6) ** 0.5)))
    w, h = -(-width // factor), -(-height // factor)
    image = Image.fromarray(small).resize((w, h), Image.BICUBIC)
    draw = ImageDraw.Draw(image)
    for _ in range(int(rng.integers(6, 14))):
        x0, y0 = rng.uniform(-0.2, 1.0) * w, rng.uniform(-0.2, 1.0) * h
        box_w, box_h = rng.uniform(0.05, 0.5) * w, rng.uniform(0.05, 0.5) * h
        color = tuple(int(c) for c in rng.integers(0, 256, size=3))
        shape = rng.integers(0, 3)
        box = (x0, y0, x0 + box_w, y0 + box_h)
        if shape == 0:
            draw.ellipse(box, fill=color)
        elif shape == 1:
            draw.rectangle(box, fill=color)
        else:
            draw.polygon([(x0, y0 + box_h), (x0 + box_w / 2, y0), (x0 + box_w, y0 + box_h)], fill=color)
    image = image.filter(ImageFilter.GaussianBlur(radius=max(1.0, w / 800)))
    if factor > 1:
        image = image.resize((width, height), Image.BICUBIC)
    # Coarse texture plus per-pixel sensor noise, added in strips of rows so 12 MP never needs a float copy.
    pixels = np.array(image)
    texture = rng.standard_normal((height // 4 + 1, width // 4 + 1), dtype=np.float32) * 9.0
    strip_rows = 256  # a multiple of the texture's 4-pixel cells
    for top in range(0, height, strip_rows):
        rows = min(strip_rows, height - top)
        coarse = texture[top // 4: top // 4 + (rows + 3) // 4]
        strip_noise = np.repeat(np.repeat(coarse, 4, axis=0), 4, axis=1)[:rows, :width]
        strip_noise += rng.standard_normal((rows, width), dtype=np.float32) * 4.0
        strip = pixels[top:top + rows].astype(np.float32) + strip_noise[:, :, None]
        np.clip(strip, 0, 255, out=strip)
        pixels[top:top + rows] = strip
    return Image.fromarray(pixels)


def size_for_megapixels(megapixels: float) -> tuple[int, int]:
    height = int(round((megapixels * 1e6 * 3 / 4) ** 0.5))
    return int(round(height * 4 / 3)), height


def _write_photo(job: tuple[str, int, int, int, int]) -> None:
    path, seed, width, height, quality = job
    temporary = f"{path}.part"
    make_photo(seed, width, height).save(temporary, format="JPEG", quality=quality)
    os.replace(temporary, path)  # an interrupted run never leaves a half-written photo to be reused


def write_photos(folder: str | os.PathLike, count: int, *, megapixels: float = 0.3, quality: int = 90,
                 seed: int = 0, prefix: str = "photo", processes: int = 1) -> list[Path]:
    """Photos prefix_00000.jpg ... in folder; existing ones are kept, so a folder doubles as a cache."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    width, height = size_for_megapixels(megapixels)
    written = [folder / f"{prefix}_{i:05d}.jpg" for i in range(count)]
    jobs = [(str(path), seed * 1_000_003 + i, width, height, quality)
            for i, path in enumerate(written) if not path.exists()]
    if processes > 1 and len(jobs) > 1:
        from multiprocessing import get_context

        with get_context("spawn").Pool(min(processes, len(jobs))) as pool:
            pool.map(_write_photo, jobs, chunksize=1)
    else:
        for job in jobs:
            _write_photo(job)
    return written


def main(argv=None) -> int:
    from cli.common import ToolParser

    parser = ToolParser(prog="python -m evaluation.sample_images", description=__doc__.strip())
    parser.add_argument("folder", nargs="?", help="where to write the demo scenes")
    parser.add_argument("--photos", type=int, default=0, help="also write this many photo-like JPEGs")
    parser.add_argument("--megapixels", type=float, default=0.3, help="size of the photo-like JPEGs")
    parser.add_argument("--categories", metavar="DIR",
                        help="write a category-retrieval set for python -m evaluation.evaluate: DIR/train and "
                             "DIR/val of CATEGORY_N.jpg, variants of the demo scenes")
    args = parser.parse_args(argv)
    if args.folder is None and args.categories is None:
        parser.error("give a folder for the demo scenes, or --categories DIR")
    if args.folder is not None:
        written = write_demo_images(args.folder)
        if args.photos:
            written += write_photos(args.folder, args.photos, megapixels=args.megapixels)
        print(f"Wrote {len(written)} images to {os.path.abspath(args.folder)}")
    if args.categories is not None:
        written = write_category_set(args.categories)
        print(f"Wrote a category set of {len(written)} images ({len(DEMO_SCENES)} categories) to "
              f"{os.path.abspath(args.categories)}; evaluate with: python -m evaluation.evaluate --dataset "
              f"{args.categories}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
