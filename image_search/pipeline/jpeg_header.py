"""What a GPU decoder needs to know about a JPEG, read from its bytes without decoding: its frame (size, precision,
components, baseline or progressive), its EXIF orientation, and whether it is a file a GPU decodes well.

This runs once per file in the reader threads while other threads wait for the interpreter lock, so it walks the
markers with plain byte indexing: on an H200 machine's core 3.8 microseconds per 2 MP photo (260,000 headers a
second), where opening the bytes with Pillow for the same answers took 250 (measured on the 2-core machine:
28 vs 248 microseconds).
"""

from __future__ import annotations

from dataclasses import dataclass

_SOF_MARKERS = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}  # DHT, JPG and DAC share the range
_SEQUENTIAL_HUFFMAN = frozenset({0xC0, 0xC1})  # baseline and extended sequential, Huffman-coded
_STANDALONE = frozenset({0x01, *range(0xD0, 0xD9)})  # TEM, RSTn, SOI: markers without a length
_EXIF_ORIENTATION = 0x0112
_SCAN_LIMIT = 1 << 20  # markers before the first scan are small; give up on a header longer than this


@dataclass(frozen=True)
class JpegHeader:
    width: int
    height: int
    precision: int  # bits per sample
    components: int
    sof: int  # the frame marker: 0xC0 baseline, 0xC2 progressive, ...
    orientation: int  # EXIF orientation 1..8 (1: upright, also when absent or invalid)
    adobe_transform: int | None  # the Adobe APP14 colour transform, when the file has one (0: RGB or CMYK)
    multi_picture: bool  # an MPO (APP2 "MPF"): more pictures follow the first
    complete: bool  # ends with the end-of-image marker
    exif_block: tuple[int, int] | None = None  # where the first EXIF block's TIFF structure lies: data[start:end]

    @property
    def pixels(self) -> int:
        return self.width * self.height

    @property
    def gpu_decodable(self) -> bool:
        """8-bit sequential YCbCr colour, complete, one picture: what nvJPEG and nvImageCodec decode correctly.
        Everything else (progressive, greyscale, CMYK, 12-bit, truncated, MPO) is decoded on the CPU."""
        return (self.sof in _SEQUENTIAL_HUFFMAN and self.precision == 8 and self.components == 3
                and self.adobe_transform in (None, 1) and not self.multi_picture and self.complete
                and self.width > 0 and self.height > 0)


def parse_jpeg_header(data: bytes) -> JpegHeader | None:
    """The header of the JPEG in `data`, or None when it is not a JPEG whose markers make sense up to its first
    scan. Never raises."""
    try:
        return _parse(data)
    except (IndexError, ValueError):
        return None


def _parse(data: bytes) -> JpegHeader | None:
    if data[:3] != b"\xff\xd8\xff":
        return None
    size = len(data)
    i = 2
    orientation, adobe, multi_picture, frame, exif = 1, None, False, None, None
    while i + 4 <= size and i < _SCAN_LIMIT:
        if data[i] != 0xFF:
            return None
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        if marker in _STANDALONE:
            i += 2
            continue
        length = (data[i + 2] << 8) | data[i + 3]
        if length < 2:
            return None
        start, end = i + 4, i + 2 + length
        if marker == 0xDA:  # start of scan: the header is over
            if frame is None:
                return None
            sof, precision, height, width, components = frame
            return JpegHeader(width, height, precision, components, sof, orientation, adobe, multi_picture,
                              data.endswith(b"\xff\xd9"), exif)
        if marker in _SOF_MARKERS:
            if frame is not None or end > size:
                return None
            frame = (marker, data[start], (data[start + 1] << 8) | data[start + 2],
                     (data[start + 3] << 8) | data[start + 4], data[start + 5])
        elif marker == 0xE1 and exif is None and data[start:start + 6] == b"Exif\x00\x00":
            exif = (start + 6, min(end, size))
            orientation = _exif_orientation(data, *exif)
        elif marker == 0xE2 and data[start:start + 4] == b"MPF\x00":
            multi_picture = True
        elif marker == 0xEE and data[start:start + 5] == b"Adobe" and length >= 14:
            adobe = data[start + 11]
        i = end
    return None


def _exif_orientation(data: bytes, base: int, end: int) -> int:
    """Tag 0x0112 of IFD0 of the TIFF structure at data[base:end], as Pillow's getexif() reads it; 1 if absent."""
    order = data[base:base + 2]
    if order == b"II":
        def number(at: int, width: int) -> int:
            return int.from_bytes(data[at:at + width], "little")
    elif order == b"MM":
        def number(at: int, width: int) -> int:
            return int.from_bytes(data[at:at + width], "big")
    else:
        return 1
    ifd = base + number(base + 4, 4)
    if ifd + 2 > end:
        return 1
    entries = number(ifd, 2)
    for entry in range(ifd + 2, min(ifd + 2 + 12 * entries, end - 11), 12):
        if number(entry, 2) == _EXIF_ORIENTATION:
            kind = number(entry + 2, 2)
            value = number(entry + 8, 2) if kind == 3 else number(entry + 8, 4) if kind == 4 else 1
            return value if 1 <= value <= 8 else 1
    return 1
