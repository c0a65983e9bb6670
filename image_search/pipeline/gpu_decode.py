"""Decoding JPEGs on the GPU (nvJPEG through torchvision) for machines whose CPU cores cannot keep up with the GPU.

Reader workers only read each file's bytes and its EXIF orientation (encoded_jpeg.read_encoded_jpeg); the main
process decodes a whole batch on the device in one call (A100/H100 decode baseline JPEGs in hardware), turns each
picture upright and applies the model's own resize and crop to the decoded tensor (`decode_batch`). A file the
device cannot decode is decoded on the CPU instead, one file at a time, so a bad or unusual JPEG costs speed, never
correctness.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from functools import partial
from typing import Callable, Sequence

from .decode import NotAnImage, UnreadableImage, read_pixels
from .encoded_jpeg import EncodedBatch

# Full-size decoded pictures live on the device until they are resized: bound them per decode call
# (256 MP of RGB is 768 MB; a batch of 256 phone photos would otherwise need 9 GB).
MAX_PIXELS_PER_CALL = 256_000_000


def upright(image, orientation: int):
    """CHW tensor -> the picture as a viewer shows it, exactly like PIL's ImageOps.exif_transpose."""
    import torch  # imported here for start-up time (see pipeline/__init__.py)

    if orientation == 2:
        return image.flip(-1)
    if orientation == 3:
        return image.flip(-2, -1)
    if orientation == 4:
        return image.flip(-2)
    if orientation == 5:
        return image.transpose(-2, -1)
    if orientation == 6:
        return torch.rot90(image, -1, dims=(-2, -1))
    if orientation == 7:
        return image.transpose(-2, -1).flip(-2, -1)
    if orientation == 8:
        return torch.rot90(image, 1, dims=(-2, -1))
    return image


@dataclass
class DecodedBatch:
    positions: list[int]
    pixels: object  # torch.uint8 [len(positions), 3, S, S] on the device, or None
    skipped: list[tuple[int, str]]  # (position, reason)
    cpu_fallbacks: int  # files the device could not decode that the CPU decoded
    facts: list = field(default_factory=list)  # ImageFacts (None: not captured) per position, from the reader


def _decode_jpegs(files: list, device: str) -> list:
    # Both imported here for start-up time (see pipeline/__init__.py).
    import torch
    from torchvision.io import ImageReadMode, decode_jpeg

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torchvision >= 0.29 flags its image codecs as deprecated
        decoded = decode_jpeg(files, mode=ImageReadMode.RGB, device=torch.device(device))
    return decoded if isinstance(decoded, list) else [decoded]


def decode_on_device(files: list, device: str) -> list:
    """Decode many JPEGs (1-D uint8 CPU tensors) on the device: one call for all, or, when that call fails, one
    call per file. Returns one CHW uint8 tensor per file, or the exception that file raised."""
    try:
        return _decode_jpegs(files, device)
    except Exception:  # noqa: BLE001 - one bad file fails the whole call: find it by decoding one at a time
        pass
    results = []
    for file in files:
        try:
            results.append(_decode_jpegs([file], device)[0])
        except Exception as error:  # noqa: BLE001
            results.append(error)
    return results


def decode_batch(encoded: EncodedBatch, paths: Sequence[str], *, geometry: Callable, min_side: int | None,
                 device: str, cpu_reader: Callable | None = None) -> DecodedBatch:
    """Decode, turn upright, resize and crop a batch of JPEGs on the device; files that fail there go to the CPU.

    cpu_reader(path, geometry, min_side) -> uint8 array [3, S, S] (the normal reader's read_pixels) decodes a file
    the device could not; it raises NotAnImage or UnreadableImage for a file nobody can use.
    """
    import torch  # imported here for start-up time (see pipeline/__init__.py)

    if cpu_reader is None:
        cpu_reader = partial(read_pixels, scanned=True)  # paths an ingest's scan found, like the reader's
    outputs: dict[int, object] = {}
    skipped: list[tuple[int, str]] = []
    fallbacks = 0
    for chunk in _chunks(encoded.pixel_counts):
        decoded = decode_on_device([encoded.file_bytes(i) for i in chunk], device)
        for i, image in zip(chunk, decoded):
            if not isinstance(image, Exception):
                try:
                    outputs[i] = geometry(upright(image, encoded.orientations[i]).contiguous())
                    continue
                except Exception:  # noqa: BLE001 - a transform that only knows PIL images: use the CPU path
                    pass
            fallbacks += 1
            try:
                pixels = cpu_reader(paths[encoded.positions[i]], geometry, min_side)
                outputs[i] = torch.from_numpy(pixels).to(device)
            except NotAnImage:
                skipped.append((encoded.positions[i], "not an image"))
            except UnreadableImage as error:
                skipped.append((encoded.positions[i], str(error)))
        del decoded
    kept = sorted(outputs)
    pixels = torch.stack([outputs[i] for i in kept]) if kept else None
    facts = list(encoded.facts) if encoded.facts else [None] * len(encoded)
    return DecodedBatch([encoded.positions[i] for i in kept], pixels, skipped, fallbacks, [facts[i] for i in kept])


def _chunks(pixel_counts: Sequence[int]) -> list[list[int]]:
    chunks, current, total = [], [], 0
    for i, count in enumerate(pixel_counts):
        if current and total + count > MAX_PIXELS_PER_CALL:
            chunks.append(current)
            current, total = [], 0
        current.append(i)
        total += count
    if current:
        chunks.append(current)
    return chunks
