"""The EXIF tags that facts.py records, read from a JPEG's EXIF block (jpeg_header.py finds it) without Pillow.

On the GPU path a JPEG is never opened with Pillow, and opening it only for its EXIF (Image.open + getexif +
get_ifd, all Python) would hold the interpreter lock for longer than everything else the reader threads do per
file. This walks IFD0, the EXIF IFD and the GPS IFD of the TIFF structure with plain byte indexing and keeps only
the tags asked for, with the values Pillow gives them (text decoded as Latin-1 without its trailing NUL, numbers
as ints, rationals as floats), so facts.py turns them into the same ImageFacts. Anything malformed is left out.
"""

from __future__ import annotations

EXIF_IFD, GPS_IFD = 0x8769, 0x8825
_TYPE_SIZES = {1: 1, 2: 1, 3: 2, 4: 4, 5: 8, 7: 1, 9: 4, 10: 8}
_MAX_ENTRIES = 512  # a directory longer than this is garbage


def read_tags(data: bytes, start: int, end: int, wanted: dict[int, frozenset]) -> dict[int, dict]:
    """{IFD (0, EXIF_IFD or GPS_IFD): {tag: value}} for the tags in wanted[ifd], from the TIFF structure at
    data[start:end]. Never raises."""
    try:
        return _read(data, start, end, wanted)
    except (IndexError, ValueError, OverflowError, ZeroDivisionError):
        return {}


def _read(data: bytes, start: int, end: int, wanted: dict[int, frozenset]) -> dict[int, dict]:
    order = data[start:start + 2]
    if order == b"II":
        endian = "little"
    elif order == b"MM":
        endian = "big"
    else:
        return {}

    def number(at: int, width: int, signed: bool = False) -> int:
        if at < start or at + width > end:
            raise ValueError("outside the EXIF block")
        return int.from_bytes(data[at:at + width], endian, signed=signed)

    found: dict[int, dict] = {}
    pending = [(0, start + number(start + 4, 4))]
    seen = set()
    while pending:
        ifd, at = pending.pop()
        if at in seen or ifd in found:
            continue
        seen.add(at)
        values: dict = {}
        found[ifd] = values
        count = number(at, 2)
        if count > _MAX_ENTRIES:
            continue
        for entry in range(at + 2, at + 2 + 12 * count, 12):
            tag, kind, items = number(entry, 2), number(entry + 2, 2), number(entry + 4, 4)
            if ifd == 0 and tag in (EXIF_IFD, GPS_IFD) and kind in (4, 13):
                pending.append((tag, start + number(entry + 8, 4)))
                continue
            if tag not in wanted.get(ifd, ()) or kind not in _TYPE_SIZES:
                continue
            size = _TYPE_SIZES[kind] * items
            where = entry + 8 if size <= 4 else start + number(entry + 8, 4)
            if where < start or where + size > end:
                continue
            value = _value(data, where, kind, items, number)
            if value is not None:
                values[tag] = value
    return found


def _value(data: bytes, where: int, kind: int, items: int, number):
    if kind == 2:  # ASCII
        text = data[where:where + items]
        return (text[:-1] if text.endswith(b"\x00") else text).decode("latin-1", "replace")
    if kind in (1, 7):  # BYTE, UNDEFINED
        return data[where:where + items]
    width = _TYPE_SIZES[kind]
    if kind in (5, 10):  # (S)RATIONAL: numerator / denominator
        signed = kind == 10
        parts = []
        for i in range(items):
            numerator = number(where + 8 * i, 4, signed)
            denominator = number(where + 8 * i + 4, 4, signed)
            parts.append(numerator / denominator if denominator else float("nan"))
        values = tuple(parts)
    else:  # SHORT, LONG, SLONG
        values = tuple(number(where + width * i, width, kind == 9) for i in range(items))
    return values[0] if len(values) == 1 else values
