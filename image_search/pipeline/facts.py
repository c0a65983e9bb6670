"""What an ingest records about an image file besides its vector: hashes of its bytes, its pixel size and format,
and the EXIF fields an investigator asks for (store/records.py's ImageFacts).

The facts come from the bytes the reader has already read to decode the file (decode.py, encoded_jpeg.py): the
file is read once, and hashed in memory in the reader's worker process. Measured in CPU time on this 2-core
machine (AMD EPYC with SHA-NI) for the benchmark's 2 MP JPEGs of 527 KB: SHA-256 0.40 ms, MD5 0.94 ms, the EXIF
fields 0.05 ms, so about 1.4 ms per file against the 57 ms of CPU time each image costs an ingest at 35 images/s
on two cores: about 2.5%. (hashlib's OpenSSL lets go of the GIL for buffers over 2 KB, so the threads of
ingest/backfill.py hash in parallel.) The EXIF fields come from the header Pillow parsed to decode the file (no
second parse). Missing, truncated or nonsensical EXIF leaves a field None and is never an error: seized drives
are full of it.
"""

from __future__ import annotations

import hashlib
import io
import math
import re
from datetime import datetime

from ..store.records import ImageFacts

_EXIF_IFD, _GPS_IFD = 0x8769, 0x8825
_MAKE, _MODEL, _ORIENTATION = 0x010F, 0x0110, 0x0112
_DATE_TIME_ORIGINAL, _OFFSET_TIME_ORIGINAL, _LENS_MODEL = 0x9003, 0x9011, 0xA434
_GPS_LATITUDE_REF, _GPS_LATITUDE, _GPS_LONGITUDE_REF, _GPS_LONGITUDE = 1, 2, 3, 4

_EXIF_DATE = re.compile(r"^\s*(\d{4})[:\-](\d{2})[:\-](\d{2})[ T](\d{2}):(\d{2}):(\d{2})")
_OFFSET = re.compile(r"^([+-])(\d{2}):(\d{2})$")
_MAX_TEXT = 200  # longer EXIF text is garbage, not a camera's name


def hashes_of(data: bytes) -> tuple[str, str]:
    """(SHA-256, MD5) of the bytes, lower-case hex."""
    return hashlib.sha256(data).hexdigest(), hashlib.md5(data, usedforsecurity=False).hexdigest()


def facts_from_bytes(data: bytes, image=None) -> ImageFacts:
    """The facts of one file from its bytes and, when the caller has opened it already, its PIL image (as opened:
    before a draft or the EXIF orientation change its size). Never raises."""
    sha256, md5 = hashes_of(data)
    opened_here = None
    if image is None:
        try:
            from PIL import Image

            image = opened_here = Image.open(io.BytesIO(data))  # parses the header only
        except Exception:  # noqa: BLE001 - a file Pillow cannot open still has its hashes
            image = None
    try:
        if image is None:
            return ImageFacts(sha256=sha256, md5=md5)
        width, height = image.size
        return ImageFacts(sha256=sha256, md5=md5, width=int(width), height=int(height),
                          format=image.format or None, **exif_fields(image))
    finally:
        if opened_here is not None:
            opened_here.close()


def exif_fields(image) -> dict:
    """The EXIF fields of ImageFacts that the image has, each None when absent or malformed."""
    try:
        exif = image.getexif()  # Pillow's warnings about EXIF quirks are filtered in pipeline/__init__.py
    except Exception:  # noqa: BLE001 - malformed EXIF: no EXIF
        return fields_from_tags({}, {}, {})
    return fields_from_tags(_safe(lambda: dict(exif)) or {}, _safe(lambda: dict(exif.get_ifd(_EXIF_IFD))) or {},
                            _safe(lambda: dict(exif.get_ifd(_GPS_IFD))) or {})


# The tags fields_from_tags reads, per IFD (0: IFD0), for readers that parse EXIF themselves (exif_tags.py).
WANTED_TAGS = {0: frozenset({_MAKE, _MODEL, _ORIENTATION}),
               _EXIF_IFD: frozenset({_DATE_TIME_ORIGINAL, _OFFSET_TIME_ORIGINAL, _LENS_MODEL}),
               _GPS_IFD: frozenset({_GPS_LATITUDE_REF, _GPS_LATITUDE, _GPS_LONGITUDE_REF, _GPS_LONGITUDE})}


def fields_from_tags(base: dict, detail: dict, gps: dict) -> dict:
    """The EXIF fields of ImageFacts from the tags of IFD0, the EXIF IFD and the GPS IFD."""
    fields = dict(taken_at=None, taken_offset=None, camera_make=None, camera_model=None, lens=None, gps_lat=None,
                  gps_lon=None, orientation=None)
    fields["camera_make"] = _text(base.get(_MAKE))
    fields["camera_model"] = _text(base.get(_MODEL))
    fields["lens"] = _text(detail.get(_LENS_MODEL))
    fields["orientation"] = _safe(lambda: _orientation(base.get(_ORIENTATION)))
    fields["taken_at"] = _safe(lambda: _date(detail.get(_DATE_TIME_ORIGINAL)))
    if fields["taken_at"] is not None:
        fields["taken_offset"] = _safe(lambda: _offset(detail.get(_OFFSET_TIME_ORIGINAL)))
    latitude = _safe(lambda: _degrees(gps.get(_GPS_LATITUDE), gps.get(_GPS_LATITUDE_REF), "S", 90.0))
    longitude = _safe(lambda: _degrees(gps.get(_GPS_LONGITUDE), gps.get(_GPS_LONGITUDE_REF), "W", 180.0))
    if latitude is not None and longitude is not None:  # half a position is no position
        fields["gps_lat"], fields["gps_lon"] = latitude, longitude
    return fields


def jpeg_facts(data: bytes, header) -> ImageFacts:
    """facts_from_bytes for a JPEG whose header jpeg_header.py has read, without Pillow (the GPU path never opens
    it with Pillow): the same facts, from the same bytes. Never raises."""
    from .exif_tags import read_tags

    sha256, md5 = hashes_of(data)
    tags = read_tags(data, *header.exif_block, WANTED_TAGS) if header.exif_block else {}
    return ImageFacts(sha256=sha256, md5=md5, width=header.width, height=header.height, format="JPEG",
                      **fields_from_tags(tags.get(0, {}), tags.get(_EXIF_IFD, {}), tags.get(_GPS_IFD, {})))


def _safe(compute):
    try:
        return compute()
    except Exception:  # noqa: BLE001 - whatever a malformed field raises, the field is just unknown
        return None


def _text(value) -> str | None:
    """An EXIF text as people read it: decoded, without the NUL padding and control characters cameras leave."""
    if isinstance(value, bytes):
        value = value.decode("utf-8", errors="replace")
    if not isinstance(value, str):
        return None
    cleaned = "".join(ch for ch in value if ch.isprintable()).strip()
    return cleaned[:_MAX_TEXT] if cleaned else None


def _orientation(value) -> int | None:
    number = int(value) if value is not None else None
    return number if number is not None and 1 <= number <= 8 else None


def _date(value) -> str | None:
    """'YYYY:MM:DD HH:MM:SS' (EXIF's form) as 'YYYY-MM-DDTHH:MM:SS'; None for blanks like '0000:00:00 00:00:00'."""
    match = _EXIF_DATE.match(_text(value) or "")
    if match is None:
        return None
    return datetime(*(int(part) for part in match.groups())).isoformat(timespec="seconds")


def _offset(value) -> str | None:
    match = _OFFSET.match(_text(value) or "")
    if match is None or int(match.group(2)) > 14 or int(match.group(3)) >= 60:
        return None
    return match.group(0)


def _degrees(value, reference, negative: str, limit: float) -> float | None:
    """EXIF (degrees, minutes, seconds) rationals and their N/S or E/W reference as signed decimal degrees."""
    if value is None:
        return None
    parts = [float(part) for part in (value if isinstance(value, (tuple, list)) else (value,))]
    if not 1 <= len(parts) <= 3 or any(not math.isfinite(p) or p < 0 for p in parts):
        return None
    degrees = sum(part / 60 ** i for i, part in enumerate(parts))
    if degrees > limit:
        return None
    reference = _text(reference)
    return -degrees if reference and reference.upper().startswith(negative) else degrees
