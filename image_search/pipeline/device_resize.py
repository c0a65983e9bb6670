"""Decoded pictures on the device -> model-ready pixels: EXIF orientation and the model's own resize and crop,
done for many pictures at once.

The threaded reader (thread_reader.py) decodes a batch of JPEGs with a device decoder (device_decoders.py) and hands the
full-size CHW uint8 tensors here. Pictures of the same size and orientation (a camera's photos mostly are) are
resized together in one interpolation call, in the stored orientation, then turned upright and centre-cropped:
resizing commutes with flips and transposes, and the small result is cheaper to turn. Anything this cannot do (a
transform that only knows PIL images, a resampling filter tensors lack, a device error) is reported per picture,
and the reader decodes those files on the CPU instead.
"""

from __future__ import annotations

from typing import Callable, Sequence

from .decode import resize_crop_plan
from .gpu_decode import upright

# Bytes of decoded pictures per decoding call, at most this share of the device's memory; two decoding threads
# each hold one call's pictures, plus the float copy of FLOAT_PIXELS pictures being resized.
DEVICE_MEMORY_SHARE_PER_CALL = 1 / 16
MIN_PIXELS_PER_CALL = 256_000_000  # 768 MB of RGB: what a small GPU still gives one call
FLOAT_PIXELS = 64_000_000  # pictures converted to float32 for one interpolation call (768 MB)


def pixels_per_call(device: str) -> int:
    """How many decoded pixels one decoding call may produce on this device."""
    if not device.startswith("cuda"):
        return MIN_PIXELS_PER_CALL
    import torch

    total = torch.cuda.get_device_properties(torch.device(device)).total_memory
    return max(MIN_PIXELS_PER_CALL, int(total * DEVICE_MEMORY_SHARE_PER_CALL / 3))


_TENSOR_MODES = {"BICUBIC": "bicubic", "BILINEAR": "bilinear"}  # PIL filters torch interpolates the same way


def model_pixels_on_device(images: Sequence, orientations: Sequence[int], geometry: Callable
                           ) -> tuple[list[int], object]:
    """Full-size CHW uint8 tensors (None: not decoded) -> (indices of the pictures done, uint8 [n, 3, S, S] in
    that order, or None when none was). The indices missing from the first list need the CPU."""
    import torch

    plan = resize_crop_plan(geometry)
    mode = _tensor_mode(plan)
    done, parts = [], []
    groups: dict[tuple, list[int]] = {}
    for i, image in enumerate(images):
        if image is not None and image.ndim == 3 and image.shape[0] == 3:
            groups.setdefault((image.shape[1], image.shape[2], orientations[i]), []).append(i)
    for (height, width, orientation), members in groups.items():
        for chunk in _float_chunks(members, height * width):
            try:
                if mode is None:
                    pixels = torch.stack([geometry(upright(images[i], orientation).contiguous()) for i in chunk])
                else:
                    pixels = _resize_crop(images, chunk, orientation, plan, mode)
            except Exception:  # noqa: BLE001 - a PIL-only transform, a device error: these go to the CPU
                continue
            if pixels.dtype != torch.uint8 or pixels.ndim != 4 or pixels.shape[1] != 3:
                continue
            done += chunk
            parts.append(pixels)
    if not parts:
        return [], None
    return done, parts[0] if len(parts) == 1 else torch.cat(parts)


def _tensor_mode(plan) -> str | None:
    if plan is None:
        return None
    from PIL import Image

    names = {getattr(Image.Resampling, name): mode for name, mode in _TENSOR_MODES.items()}
    return names.get(plan[2])


def _float_chunks(members: list[int], pixels: int) -> list[list[int]]:
    per_chunk = max(1, FLOAT_PIXELS // max(1, pixels))
    return [members[start:start + per_chunk] for start in range(0, len(members), per_chunk)]


def _resize_crop(images: Sequence, chunk: list[int], orientation: int, plan: tuple, mode: str):
    """torchvision's Resize(shorter side) + CenterCrop on a tensor, for pictures of one size and orientation."""
    import torch

    from .decode import _centre

    side, crop, _ = plan
    first = images[chunk[0]]
    height, width = first.shape[1], first.shape[2]
    transposed = orientation >= 5
    up_height, up_width = (width, height) if transposed else (height, width)
    if up_width <= up_height:
        new_width, new_height = side, int(side * up_height / up_width)
    else:
        new_width, new_height = int(side * up_width / up_height), side
    if (new_height, new_width) == (up_height, up_width):  # torchvision does not resample then
        resized = torch.stack([images[i] for i in chunk])
    else:
        batch = torch.empty((len(chunk), 3, height, width), dtype=torch.float32, device=first.device)
        for row, i in enumerate(chunk):
            batch[row].copy_(images[i])
        rows, columns = (new_width, new_height) if transposed else (new_height, new_width)
        # One axis at a time (the weights are separable, as in Pillow): torch's two-axis antialiased kernel
        # visits every (row tap, column tap) pair, 22 x 22 of them per output pixel for a 2 MP photo.
        resized = torch.nn.functional.interpolate(batch, size=(height, columns), mode=mode, align_corners=False,
                                                  antialias=True)
        del batch
        resized = torch.nn.functional.interpolate(resized, size=(rows, columns), mode=mode, align_corners=False,
                                                  antialias=True)
        resized = resized.round_().clamp_(0, 255).to(torch.uint8)
    resized = upright(resized, orientation)
    left, top, right, bottom = _centre(new_width, new_height, crop)
    return resized[:, :, top:bottom, left:right].contiguous()
