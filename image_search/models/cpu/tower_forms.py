"""The number format and weight layout of the CLIP towers on the CPU.

bf16 weights and activations roughly double ViT throughput on CPUs that execute bf16 natively (AVX512-BF16, AMX),
and halve the bytes a text query streams through memory (a query reads the text tower's weights once, and on a
small machine that read is most of its cost). Weights packed for oneDNN (packed_weights.py) save a re-layout on every
matrix product. A tower is switched only where that holds for the loaded weights: bf16 needs a CPU with native
bf16 (emulated bf16 is slower than fp32), and every form must keep the tower's embeddings of a fixed set of probes
(pictures for the image tower, queries for the text tower) within cosine PROBE_MIN_COSINE of the fp32 ones,
checked once when the model loads. What the CPU can do is decided in one place, cpu_support().

IMAGE_SEARCH_CPU_PRECISION=fp32 turns bf16 off; =bf16 uses it without native support (still checked), with
unpacked weights where oneDNN refuses to pack bf16 (AVX2-only CPUs).
"""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass

from ...config import cpu_precision_setting

log = logging.getLogger(__name__)

PROBE_MIN_COSINE = 0.995  # a margin over the 0.99 every embedding must keep
PROBE_PICTURES = 4  # each costs two forward passes at model load
# queries of the lengths and kinds people type; the longest fills most of the context
PROBE_TEXTS = (
    "car",
    "red car at night",
    "a man holding a knife in a dark kitchen",
    "passport photo of a woman with glasses",
    "screenshot of a chat conversation on a phone",
    "handgun lying on a table next to bundles of cash and a plastic bag of white powder, photographed from "
    "above under a bright flash in a small room with a tiled floor",
)


def cpu_has_native_bf16() -> bool:
    try:
        with open("/proc/cpuinfo") as handle:
            flags = next((line for line in handle if line.startswith("flags")), "").split()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


@dataclass(frozen=True)
class CpuSupport:
    """What this CPU, with this PyTorch build, can do for the towers."""

    native_bf16: bool  # executes bf16 itself (AVX512-BF16, AMX); emulated bf16 is slower than fp32
    packing: bool  # oneDNN's packed operators exist (packed_weights.py)
    packed_bf16: bool  # and take bf16 weights (AVX512 BW+VL+DQ or AVX-NE-CONVERT; not AVX2 alone)


def cpu_support() -> CpuSupport:
    """The one place that says what the CPU can do for the towers; the forms tried follow from it alone."""
    # here, not at the top: packed_weights imports torch, and this module loads with every tool that names a model
    from .packed_weights import packed_bf16_available, packing_available

    packing = packing_available()
    return CpuSupport(native_bf16=cpu_has_native_bf16(), packing=packing,
                      packed_bf16=packing and packed_bf16_available())


def bf16_wanted(support: CpuSupport) -> bool:
    choice = cpu_precision_setting()
    return choice == "bf16" or (choice == "auto" and support.native_bf16)


def tower_forms(support: CpuSupport, packable: bool) -> list[tuple[str, bool]]:
    """The (number format, packed) forms worth trying for a tower, fastest first; plain fp32 is the fallback.

    bf16 is packed only where oneDNN packs bf16, and otherwise still tried unpacked where it is wanted: a
    packing refusal says nothing about bf16 itself."""
    pack = support.packing and packable
    forms = [("bf16", pack and support.packed_bf16)] if bf16_wanted(support) else []
    return forms + ([("fp32", True)] if pack else [])


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


def prepare_image_tower(embedder) -> str:
    """Give a CPU ClipEmbedder the fastest faithful form of its image tower (see _fastest_faithful_form)."""
    pixels = probe_pixels(embedder.input_size)
    model = embedder.model
    return _fastest_faithful_form(
        embedder, "image", tower=(lambda: model.visual, lambda tower: setattr(model, "visual", tower)),
        blocks=lambda tower: getattr(tower, "transformer", None), embed_probes=lambda: embedder.encode_pixels(pixels),
        set_dtype=lambda dtype: setattr(embedder, "dtype", dtype))


def prepare_text_tower(embedder) -> str:
    """Give a CPU ClipEmbedder the fastest faithful form of its text transformer (see _fastest_faithful_form).

    Only the transformer blocks change (the embeddings, final norm and projection are small and stay fp32), and
    only where the embedder runs open_clip's text path itself, since that path casts between the two formats.
    """
    if not embedder.runs_own_text_path:
        return "fp32"
    model = embedder.model
    return _fastest_faithful_form(
        embedder, "text", tower=(lambda: model.transformer, lambda tower: setattr(model, "transformer", tower)),
        blocks=lambda tower: tower, embed_probes=lambda: embedder.encode_texts(PROBE_TEXTS),
        set_dtype=lambda dtype: None)


def _fastest_faithful_form(embedder, label: str, tower, blocks, embed_probes, set_dtype) -> str:
    """Switch a tower to its fastest form that stays faithful to the loaded fp32 weights; returns its name.

    The forms (tower_forms, from cpu_support): bf16 where the CPU has it natively or it is asked for, then fp32,
    with the transformer's weights packed for oneDNN (packed_weights.py) where that is possible. A form is kept when its
    embeddings of the probes stay within cosine PROBE_MIN_COSINE of the fp32 tower's.
    """
    import torch

    from .packed_weights import packable, pack_transformer  # (imports torch: see cpu_support)

    get_tower, set_tower = tower
    original = get_tower()
    forms = tower_forms(cpu_support(), blocks(original) is not None and packable(blocks(original)))
    reference = embed_probes() if forms else None
    for number_format, pack in forms:
        dtype = torch.bfloat16 if number_format == "bf16" else torch.float32
        name = f"{number_format}{', packed' if pack else ''}"
        try:
            candidate = copy.deepcopy(original).to(dtype)
            if pack:
                pack_transformer(blocks(candidate))
            set_tower(candidate)
            set_dtype(dtype)
            cosine = float((embed_probes() * reference).sum(axis=1).min())
        except RuntimeError as error:  # an operator this CPU or oneDNN build refuses
            log.warning("The %s %s tower of model %s failed (%s); trying the next form.", name, label,
                        embedder.name, error)
            cosine = None
        if cosine is not None and cosine >= PROBE_MIN_COSINE:
            return name
        if cosine is not None:
            log.warning("%s %s embeddings of model %s differ from fp32 (cosine %.4f); not using them.", name,
                        label, embedder.name, cosine)
        set_tower(original)
        set_dtype(torch.float32)
    return "fp32"
