"""EXIF date/time and camera model, and sequences (bursts) of frames from one camera.

Only image headers are read here (no pixel decoding), so reading the metadata of a whole
camera folder is cheap.  Nothing in this module raises on a bad file: missing or garbage
EXIF gives ``None`` / empty fields.
"""

from __future__ import annotations

import os
import re
import warnings
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Hashable, Iterable

from PIL import Image

EXIF_IFD = 0x8769
TAG_MAKE = 271
TAG_MODEL = 272
TAG_DATETIME = 306
TAG_ORIENTATION = 274
TAG_DATETIME_ORIGINAL = 36867
TAG_DATETIME_DIGITIZED = 36868
TAG_OFFSET_TIME_ORIGINAL = 36881

DEFAULT_SEQUENCE_GAP = 60.0  # seconds between frames of one burst / visit

_EXIF_DATETIME = re.compile(r"^\s*(\d{4})[:\-/](\d{2})[:\-/](\d{2})[ T](\d{2}):(\d{2}):(\d{2})")
_OFFSET = re.compile(r"^([+-])(\d{2}):?(\d{2})$")
# Formats whose PIL getexif() loads (decodes) the image when the EXIF is not in the header.
_EXIF_DECODES_PIXELS = frozenset({"PNG"})


@dataclass(frozen=True)
class FrameMetadata:
    datetime: datetime | None = None
    camera: str = ""
    width: int | None = None  # upright size (EXIF orientation applied), full resolution
    height: int | None = None

    @property
    def iso_datetime(self) -> str:
        return self.datetime.isoformat() if self.datetime else ""


def parse_exif_datetime(text: object, offset: object = None) -> datetime | None:
    """``"2024:01:31 23:59:58"`` (EXIF style, also with - or /) -> datetime, else None."""
    if isinstance(text, bytes):
        text = text.decode("ascii", "ignore")
    if not isinstance(text, str):
        return None
    match = _EXIF_DATETIME.match(text.replace("\x00", ""))
    if not match:
        return None
    try:
        value = datetime(*(int(part) for part in match.groups()))
    except ValueError:  # "0000:00:00 00:00:00" from cameras without a clock
        return None
    if isinstance(offset, str):
        found = _OFFSET.match(offset.strip().replace("\x00", ""))
        if found:
            sign = 1 if found.group(1) == "+" else -1
            delta = timedelta(hours=int(found.group(2)), minutes=int(found.group(3)))
            value = value.replace(tzinfo=timezone(sign * delta))
    return value


def _clean(value: object) -> str:
    if isinstance(value, bytes):
        value = value.decode("utf-8", "ignore")
    return str(value).replace("\x00", "").strip() if value is not None else ""


def metadata_from_image(img: Image.Image) -> FrameMetadata:
    """Metadata of an opened (not necessarily decoded) PIL image."""
    width, height = img.size
    if img.format in _EXIF_DECODES_PIXELS and "exif" not in img.info:
        # PIL's PNG getexif() decodes the whole image to look for an eXIf chunk after the pixel
        # data (no pixel limit: a 30 KB header-only PNG can claim 10^10 pixels).  Only an eXIf
        # chunk before the pixels (already in img.info) is read; otherwise just the size.
        return FrameMetadata(width=width, height=height)
    try:
        exif = img.getexif()
    except Exception:  # noqa: BLE001 - garbage EXIF must not cost the frame
        return FrameMetadata(width=width, height=height)
    try:
        sub = exif.get_ifd(EXIF_IFD)
    except Exception:  # noqa: BLE001
        sub = {}
    stamp = (
        parse_exif_datetime(sub.get(TAG_DATETIME_ORIGINAL), sub.get(TAG_OFFSET_TIME_ORIGINAL))
        or parse_exif_datetime(sub.get(TAG_DATETIME_DIGITIZED))
        or parse_exif_datetime(exif.get(TAG_DATETIME))
    )
    make, model = _clean(exif.get(TAG_MAKE)), _clean(exif.get(TAG_MODEL))
    camera = model if (not make or make.lower() in model.lower()) else f"{make} {model}".strip()
    if exif.get(TAG_ORIENTATION) in (5, 6, 7, 8):
        width, height = height, width
    return FrameMetadata(datetime=stamp, camera=camera, width=width, height=height)


def read_metadata(path: str | os.PathLike) -> FrameMetadata:
    """Header-only read of date/time, camera and size; empty metadata for unreadable files."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with Image.open(Path(path)) as img:
                return metadata_from_image(img)
    except Exception:  # noqa: BLE001 - unreadable files are reported by the decoder, not here
        return FrameMetadata()


TAG_GPS_IFD = 0x8825


def read_gps(path: str | os.PathLike) -> tuple[float, float] | None:
    """(latitude, longitude) in decimal degrees from EXIF GPS tags, or None (header-only read)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with Image.open(Path(path)) as img:
                if img.format in _EXIF_DECODES_PIXELS and "exif" not in img.info:
                    return None
                gps = img.getexif().get_ifd(TAG_GPS_IFD)
        lat = _degrees(gps.get(2), gps.get(1), "S")
        lon = _degrees(gps.get(4), gps.get(3), "W")
    except Exception:  # noqa: BLE001 - garbage GPS is no GPS
        return None
    if lat is None or lon is None or not (-90 <= lat <= 90 and -180 <= lon <= 180):
        return None
    return lat, lon


def _degrees(value, ref, negative: str) -> float | None:
    if value is None or len(value) != 3:
        return None
    degrees, minutes, seconds = (float(v) for v in value)
    result = degrees + minutes / 60.0 + seconds / 3600.0
    ref = _clean(ref).upper()
    return -result if ref == negative else result


def assign_sequences(
    frames: Iterable[tuple[Hashable, datetime | None]],
    gap_seconds: float = DEFAULT_SEQUENCE_GAP,
    prefix: str = "",
) -> dict[Hashable, str]:
    """Sequence ids for the frames of ONE camera: consecutive frames (in time order) at most
    ``gap_seconds`` apart share an id.

    Ids are ``f"{prefix}#{n:04d}"`` with n counting sequences in time order from 1, so they are
    deterministic (a resumed batch gives the same ids).  A frame without a timestamp is a
    sequence of its own, numbered after the timed ones in the given order.
    """
    items = list(frames)
    timed = sorted(((stamp, index, key) for index, (key, stamp) in enumerate(items) if stamp is not None),
                   key=lambda item: (_comparable(item[0]), item[1]))
    ids: dict[Hashable, str] = {}
    number, previous = 0, None
    for stamp, _, key in timed:
        moment = _comparable(stamp)
        if previous is None or (moment - previous).total_seconds() > gap_seconds:
            number += 1
        previous = moment
        ids[key] = f"{prefix}#{number:04d}"
    for key, stamp in items:
        if stamp is None:
            number += 1
            ids[key] = f"{prefix}#{number:04d}"
    return ids


def _comparable(stamp: datetime) -> datetime:
    """Aware and naive stamps in one camera folder: compare on local wall-clock time."""
    return stamp.replace(tzinfo=None)
