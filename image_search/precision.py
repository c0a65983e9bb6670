"""The number format of the image tower on the CPU.

bf16 weights and activations roughly double ViT throughput on CPUs that execute bf16 natively (AVX512-BF16, AMX)
and keep embeddings within cosine 0.9999 of fp32 on photos. They are used only where that holds for the loaded
weights: the CPU must have native bf16, and the model's bf16 embeddings of a fixed set of probe pictures must stay
within cosine PROBE_MIN_COSINE of its fp32 ones (checked once, when the model loads). Elsewhere the tower stays
fp32: emulated bf16 is slower than fp32. The text tower always stays fp32 (text queries are one at a time).

IMAGE_SEARCH_CPU_PRECISION=fp32 turns bf16 off; =bf16 uses it without native support (still checked).
"""

from __future__ import annotations

import logging
import os

log = logging.getLogger(__name__)

PROBE_MIN_COSINE = 0.995  # a margin over the 0.99 every embedding must keep
PROBE_PICTURES = 4  # each costs two forward passes at model load


def cpu_has_native_bf16() -> bool:
    try:
        with open("/proc/cpuinfo") as handle:
            flags = next((line for line in handle if line.startswith("flags")), "").split()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def requested_precision() -> str:
    choice = os.environ.get("IMAGE_SEARCH_CPU_PRECISION", "").strip().lower() or "auto"
    return choice if choice in ("auto", "fp32", "bf16") else "auto"


def probe_pixels(side: int, count: int = PROBE_PICTURES):
    """Deterministic photo-like uint8 pictures [count, 3, side, side]: smooth light, flat shapes, noise."""
    import torch

    generator = torch.Generator().manual_seed(20240601)
    coarse = torch.rand(count, 3, 4, 4, generator=generator) * 200 + 30
    pictures = torch.nn.functional.interpolate(coarse, size=(side, side), mode="bicubic", align_corners=False)
    for picture in pictures:
        for _ in range(6):
            top, left = torch.randint(0, side - 8, (2,), generator=generator).tolist()
            height, width = torch.randint(8, side // 2 + 9, (2,), generator=generator).tolist()
            picture[:, top:top + height, left:left + width] = (torch.rand(3, 1, 1, generator=generator) * 255)
    pictures += torch.randn(count, 1, side, side, generator=generator) * 6
    return pictures.clamp(0, 255).round().to(torch.uint8)


def use_bf16_on_cpu(embedder) -> bool:
    """Switch a CPU ClipEmbedder's image tower to bf16 where that is fast and faithful; True if it did."""
    import copy

    import torch

    choice = requested_precision()
    if choice == "fp32" or (choice == "auto" and not cpu_has_native_bf16()):
        return False
    pixels = probe_pixels(embedder.input_size)
    reference = embedder.encode_pixels(pixels)
    fp32_tower = embedder.model.visual
    embedder.model.visual = copy.deepcopy(fp32_tower).to(torch.bfloat16)
    embedder.dtype = torch.bfloat16
    cosines = (embedder.encode_pixels(pixels) * reference).sum(axis=1)
    if float(cosines.min()) >= PROBE_MIN_COSINE:
        return True
    log.warning("bf16 embeddings of model %s differ from fp32 (cosine %.4f); keeping fp32 on the CPU.",
                embedder.name, float(cosines.min()))
    embedder.model.visual = fp32_tower
    embedder.dtype = torch.float32
    return False
