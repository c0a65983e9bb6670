"""The JPEG decoders that run where the model runs: each turns a list of files' contents (bytes) into one CHW uint8
RGB tensor per file on the device (None for a file it could not decode), in one call.

- "nvimgcodec": NVIDIA's nvImageCodec (optional package nvidia-nvimgcodec-cu13, see README), with the GPU's
  hardware JPEG engines first (A100, H100, H200 have them; they sit beside the CUDA cores, so the model keeps
  those) and its CUDA decoder for what the engines refuse.
- "nvjpeg": nvJPEG through torchvision.io.decode_jpeg, which ships with torchvision (on a CPU device it is
  torchvision's libjpeg decoder: the tests run the whole GPU path that way).

available_decoders() lists those that work here, best first; make_decoder(name, device) makes one (one per
decoding thread). IMAGE_SEARCH_GPU_DECODER picks one by name.
"""

from __future__ import annotations

import threading
import warnings
from typing import Sequence

NVIMGCODEC, NVJPEG = "nvimgcodec", "nvjpeg"
# Best first, by whole ingests on an H200 with 16 cores (evaluation/results/ingest-gpu-h200.json): nvJPEG 2,470 /
# 1,798 / 677 images/s of 0.3 / 2 / 12 MP photos, nvImageCodec 2,103 / 1,321 / 597, although nvImageCodec's
# hardware engines alone decode 2 and 12 MP photos faster (5,003 vs 4,904 and 977 vs 736 a second, files in
# memory). The ingest is limited by the CPU threads, and nvImageCodec's call keeps them waiting longer.
DECODERS = (NVJPEG, NVIMGCODEC)

# torchvision >= 0.29 flags its image codecs as deprecated on every call; filtered once, by origin (a
# warnings.catch_warnings() per call is not thread-safe, and two decoding threads call at once).
warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"torchvision\.io")

_probe_lock = threading.Lock()
_quiet_lock = threading.Lock()
_probed: dict[str, bool] = {}


def nvimgcodec_module():
    """nvImageCodec's Python module, or None when it is not installed (or cannot load its libraries)."""
    try:
        from nvidia import nvimgcodec
    except Exception:  # noqa: BLE001 - ImportError, or an OSError from a missing CUDA library
        return None
    return nvimgcodec


def available_decoders(device: str) -> list[str]:
    """The device decoders that work for this device, best first. nvImageCodec counts only on CUDA and only when
    it decodes a probe JPEG (it installs without a GPU)."""
    return [name for name in DECODERS
            if name == NVJPEG or (device.startswith("cuda") and _works(name, device))]


def choose_decoder(device: str, requested: str = "auto") -> str:
    """The decoder to use: the requested one if it works here, else the best available."""
    available = available_decoders(device)
    return requested if requested in available else available[0]


def make_decoder(name: str, device: str):
    return NvImageCodecDecoder(device) if name == NVIMGCODEC else TorchvisionDecoder(device)


class TorchvisionDecoder:
    """torchvision.io.decode_jpeg on a list of files: nvJPEG's batched decoder on CUDA, libjpeg on the CPU."""

    name = NVJPEG

    def __init__(self, device: str) -> None:
        self.device = device

    def decode(self, files: Sequence[bytes]) -> list:
        import torch  # imported here for start-up time (see pipeline/__init__.py)

        _quiet_read_only_buffers()
        tensors = [torch.frombuffer(data, dtype=torch.uint8) for data in files]  # decode_jpeg only reads them
        try:
            return self._decode(tensors)
        except Exception:  # noqa: BLE001 - one bad file fails the whole call: find it by decoding one at a time
            pass
        results = []
        for tensor in tensors:
            try:
                results.append(self._decode([tensor])[0])
            except Exception:  # noqa: BLE001
                results.append(None)
        return results

    def _decode(self, tensors: list) -> list:
        import torch
        from torchvision.io import ImageReadMode, decode_jpeg

        decoded = decode_jpeg(tensors, mode=ImageReadMode.RGB, device=torch.device(self.device))
        return decoded if isinstance(decoded, list) else [decoded]


class NvImageCodecDecoder:
    """nvImageCodec's batched decode: hardware JPEG engines first, its CUDA decoder for the rest, planar RGB out.
    EXIF orientation is left to the caller (gpu_decode.upright), as on every other path."""

    name = NVIMGCODEC

    def __init__(self, device: str) -> None:
        import torch

        nvimgcodec = nvimgcodec_module()
        if nvimgcodec is None:
            raise RuntimeError("nvImageCodec is not installed")
        self.device = device
        index = torch.device(device).index
        self._index = torch.cuda.current_device() if index is None else index
        self._codec = nvimgcodec
        self._decoder = nvimgcodec.Decoder(device_id=self._index, backends=[
            nvimgcodec.Backend(nvimgcodec.BackendKind.HW_GPU_ONLY),
            nvimgcodec.Backend(nvimgcodec.BackendKind.GPU_ONLY)])
        self._params = nvimgcodec.DecodeParams(apply_exif_orientation=False, color_spec=nvimgcodec.ColorSpec.SRGB,
                                               sample_format=nvimgcodec.SampleFormat.P_RGB)

    def decode(self, files: Sequence[bytes]) -> list:
        import numpy as np
        import torch

        codec = self._codec
        streams = []
        for data in files:
            try:
                streams.append(codec.CodeStream(np.frombuffer(data, dtype=np.uint8)))
            except Exception:  # noqa: BLE001 - a header it cannot parse: that file goes to the CPU
                streams.append(None)
        usable = [s for s in streams if s is not None]
        stream = torch.cuda.current_stream(self._index)
        images = iter(self._decoder.decode(usable, params=self._params, cuda_stream=stream.cuda_stream)
                      if usable else [])
        results = []
        for code_stream in streams:
            image = next(images) if code_stream is not None else None
            results.append(None if image is None else _planar(torch.from_dlpack(image)))
        return results


_quiet = False


def _quiet_read_only_buffers() -> None:
    """torch warns once per process when it wraps read-only bytes (a file's contents), which decode_jpeg never
    writes to: have that one warning given here, silently (wrapping them beats copying 3 MB per 12 MP photo)."""
    global _quiet
    if not _quiet:
        import torch

        with _quiet_lock, warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.frombuffer(b"\0", dtype=torch.uint8)
            _quiet = True


def _planar(tensor):
    """nvImageCodec's planar RGB is [3, H, W]; an interleaved [H, W, 3] (should a version ignore the planar
    request) is viewed as planar."""
    if tensor.ndim == 3 and tensor.shape[0] != 3 and tensor.shape[-1] == 3:
        return tensor.permute(2, 0, 1)
    return tensor


def _works(name: str, device: str) -> bool:
    with _probe_lock:
        if name not in _probed:
            _probed[name] = _probe(name, device)
        return _probed[name]


def _probe(name: str, device: str) -> bool:
    """Decode one small JPEG and compare it with Pillow's decode: a decoder that loads but decodes wrongly (a
    library mismatch) is not used."""
    import io

    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    picture = np.repeat(np.repeat(rng.integers(0, 256, (8, 12, 3), dtype=np.uint8), 8, 0), 8, 1)
    encoded = io.BytesIO()
    Image.fromarray(picture).save(encoded, format="JPEG", quality=95)
    data = encoded.getvalue()
    try:
        (decoded,) = make_decoder(name, device).decode([data])
        if decoded is None:
            return False
        expected = np.asarray(Image.open(io.BytesIO(data)).convert("RGB")).transpose(2, 0, 1).astype(np.int16)
        return (tuple(decoded.shape) == expected.shape
                and float(np.abs(decoded.cpu().numpy().astype(np.int16) - expected).mean()) < 3.0)
    except Exception:  # noqa: BLE001 - any failure means: not usable here
        return False
