"""Robust image loading, NIR handling, crops and quality metrics.

Every loader returns an 8-bit RGB ``PIL.Image`` or raises :class:`ImageError` with a
one-line reason.  Files are only ever read, never written.
"""

from __future__ import annotations

import io
import os
import threading
import warnings
from pathlib import Path
from typing import BinaryIO, Union

import numpy as np
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

from wildid.errors import ImageError

ImageSource = Union[str, os.PathLike, bytes, BinaryIO, Image.Image]
# A crop as fractions of the upright photo: (left, top, right, bottom), each in [0, 1].  Fractions,
# not pixels, so the same box means the same region whatever scale the photo was decoded at.
Box = tuple[float, float, float, float]

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp", ".webp", ".gif"})
# The decoded-pixel cap, checked on the size the header declares, before decoding.  Chosen from
# measured peak memory (bench/upload_memory.py, one fresh process per decode): at 64 MP the worst
# format (lossless WebP with alpha, 16 bytes per pixel inside Pillow's decoder) peaks at +0.98 GB,
# RGBA PNG / float TIFF / 16-bit PNG at 0.45-0.57 GB, RGB at 0.25 GB.  With at most LARGE_DECODES
# (2) big decodes at once that is ~2 GB, under a tenth of the 24 GB target machine, and 64 MP still
# takes every camera-trap frame and 61 MP full-frame / 50 MP phone photos.  A 12000x12000 PNG
# (144 MP: +2.7 GB before) is refused at its header.
MAX_PIXELS = int(os.environ.get("WILDID_MAX_PIXELS", 64_000_000))
MAX_FILE_BYTES = int(os.environ.get("WILDID_MAX_FILE_BYTES", 300 * 1024 * 1024))
# Photos uploaded in the app: checkpoints and zips may be up to 2 GB (server.maxUploadSize), a photo
# stays at this size (the uploaders pass it as max_upload_size; check_upload enforces it in code).
MAX_UPLOAD_IMAGE_MB = int(os.environ.get("WILDID_MAX_UPLOAD_IMAGE_MB", 50))
# Decodes of big images at once, whatever the number of sessions or batch threads: with the cap
# above, peak decode memory stays under LARGE_DECODES x ~0.85 GB (2 = the CPU cores, so no
# throughput is lost).  Images up to LARGE_IMAGE_PIXELS (12 MP frames) decode freely.
LARGE_IMAGE_PIXELS = 16_000_000
LARGE_DECODES = threading.BoundedSemaphore(int(os.environ.get("WILDID_LARGE_DECODES", 2)))
# Percentiles for the 16-bit stretch come from at most this many evenly spaced pixels: the same
# figures to within a grey level, without sorting a copy of a 64 MP frame.
STRETCH_SAMPLE = 1_000_000
STRIP_ROWS = 256

# Quality flags (the lemming study filtered frames on brightness and sharpness).
DARK_MEAN = 25.0
OVEREXPOSED_MEAN = 230.0
BLURRY_LAPLACIAN_VAR = 30.0
QUALITY_WIDTH = 512

ImageFile.LOAD_TRUNCATED_IMAGES = False
# PIL's own bomb check fires at open() with a message that lacks the image size; load_image
# enforces MAX_PIXELS itself (after JPEG draft scaling, which makes huge JPEGs cheap).
Image.MAX_IMAGE_PIXELS = None


def is_image_file(path: Path | str) -> bool:
    return Path(path).suffix.lower() in IMAGE_EXTENSIONS


def _describe(source: ImageSource) -> str:
    if isinstance(source, (str, os.PathLike)):
        return Path(source).name
    name = getattr(source, "name", None)
    return str(name) if name else "image"


def _open(source: ImageSource) -> Image.Image:
    label = _describe(source)
    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        if not path.exists():
            raise ImageError(f"{path}: no such file")
        if path.is_dir():
            raise ImageError(f"{path}: is a folder, not an image")
        try:
            size = path.stat().st_size
        except OSError as exc:
            raise ImageError(f"{path}: cannot read ({exc.strerror or exc})") from None
        if size == 0:
            raise ImageError(f"{label}: empty file (0 bytes)")
        if size > MAX_FILE_BYTES:
            raise ImageError(f"{label}: file is {size / 1e6:.0f} MB, over the {MAX_FILE_BYTES / 1e6:.0f} MB limit")
        opener: Union[str, BinaryIO] = str(path)
    elif isinstance(source, (bytes, bytearray, memoryview)):
        if len(source) == 0:
            raise ImageError(f"{label}: empty file (0 bytes)")
        if len(source) > MAX_FILE_BYTES:
            raise ImageError(f"{label}: file is {len(source) / 1e6:.0f} MB, over the {MAX_FILE_BYTES / 1e6:.0f} MB limit")
        opener = io.BytesIO(bytes(source))
    else:
        data = source.read()
        if not data:
            raise ImageError(f"{label}: empty file (0 bytes)")
        if len(data) > MAX_FILE_BYTES:
            raise ImageError(f"{label}: file is {len(data) / 1e6:.0f} MB, over the {MAX_FILE_BYTES / 1e6:.0f} MB limit")
        opener = io.BytesIO(data)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            return Image.open(opener)
    except PermissionError:
        raise ImageError(f"{label}: permission denied") from None
    except Image.DecompressionBombError:
        raise ImageError(f"{label}: image has too many pixels to decode safely (limit {MAX_PIXELS / 1e6:.0f} MP)") from None
    except (UnidentifiedImageError, ValueError, SyntaxError):
        raise ImageError(f"{label}: not an image, or a format that cannot be read") from None
    except OSError as exc:
        raise ImageError(f"{label}: cannot read ({exc.strerror or exc})") from None


def check_upload(name: str, size: int, limit_mb: int = MAX_UPLOAD_IMAGE_MB) -> None:
    """ImageError naming the limit when an uploaded photo is bigger than ``limit_mb``."""
    if size > limit_mb * 1024 * 1024:
        raise ImageError(f"{Path(name).name}: {size / 1024 / 1024:.0f} MB, over the {limit_mb} MB limit for photos; "
                         f"send a smaller copy")


def load_image(source: ImageSource, draft_size: int | None = None, max_pixels: int | None = None) -> Image.Image:
    """Decode ``source`` to an upright 8-bit RGB image.

    ``draft_size`` lets JPEGs decode at a reduced scale (1/2, 1/4, 1/8) as long as both
    sides stay >= draft_size: a 12 MP photo for a 224 px model then costs a fraction of a
    full decode.  EXIF orientation is applied; palette, alpha, CMYK, 16-bit and greyscale
    images are converted.  Animated images give their first frame.
    """
    if isinstance(source, Image.Image):
        return to_rgb(source)
    label = _describe(source)
    max_pixels = MAX_PIXELS if max_pixels is None else max_pixels
    img = _open(source)
    try:
        width, height = img.size
        if width < 1 or height < 1:
            raise ImageError(f"{label}: image has no pixels ({width}x{height})")
        # The declared size counts, not the draft-scaled one: a tiny file claiming 65000x65000
        # would still decode 66 MP at 1/8 scale.
        if width * height > max_pixels:
            raise ImageError(
                f"{label}: image is {width}x{height} ({width * height / 1e6:.0f} MP), over the "
                f"{max_pixels / 1e6:.0f} MP limit; downscale it first"
            )
        if draft_size and img.format == "JPEG":
            img.draft("RGB", (draft_size, draft_size))
        large = img.size[0] * img.size[1] > LARGE_IMAGE_PIXELS
        if large:
            LARGE_DECODES.acquire()
        try:
            return _decode(img, label)
        finally:
            if large:
                LARGE_DECODES.release()
    except MemoryError:
        raise ImageError(f"{label}: not enough memory to decode this image") from None


def upright_size(source: ImageSource) -> tuple[int, int]:
    """(width, height) of the photo as shown upright, from its header (no pixel decode)."""
    if isinstance(source, Image.Image):
        return source.size
    if hasattr(source, "seek"):
        source.seek(0)
    img = _open(source)
    width, height = img.size
    try:
        orientation = img.getexif().get(0x0112, 1)
    except Exception:  # noqa: BLE001 - garbage EXIF: take the stored size
        orientation = 1
    if hasattr(source, "seek"):
        source.seek(0)
    return (height, width) if orientation in (5, 6, 7, 8) else (width, height)
def _decode(img: Image.Image, label: str) -> Image.Image:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            img.load()
    except (OSError, ValueError, SyntaxError, EOFError, IndexError, ZeroDivisionError) as exc:
        reason = "truncated" if "truncated" in str(exc).lower() else "corrupt"
        raise ImageError(f"{label}: {reason} image data, cannot decode ({exc})") from None
    except Image.DecompressionBombError:
        raise ImageError(f"{label}: image has too many pixels to decode safely") from None
    try:
        # In place: without an orientation tag exif_transpose would return a full copy.
        ImageOps.exif_transpose(img, in_place=True)
    except Exception:  # noqa: BLE001 - garbage EXIF must not cost the picture
        pass
    return to_rgb(img)


def to_rgb(img: Image.Image) -> Image.Image:
    """8-bit RGB from any PIL mode; 16-bit / float data are contrast-stretched.

    Written for peak memory (an upload's decoded size is the attacker's choice): transparency is
    flattened by pasting onto a white RGB canvas through the alpha band (~8 bytes per pixel at
    the peak, where alpha_composite over RGBA copies took ~16).
    """
    mode = img.mode
    if mode == "RGB":
        return img
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        return Image.fromarray(_stretch_to_uint8(img), "L").convert("RGB")
    if mode in ("RGBA", "LA", "PA", "La", "RGBa") or (mode == "P" and "transparency" in img.info):
        rgba = img if mode == "RGBA" else img.convert("RGBA")
        canvas = Image.new("RGB", rgba.size, (255, 255, 255))
        canvas.paste(rgba, mask=rgba)  # RGB bands through the alpha band, no converted copy
        return canvas
    return img.convert("RGB")


def _stretch_to_uint8(img: Image.Image) -> np.ndarray:
    """Map high-bit-depth data (e.g. 16-bit NIR) to 0-255 using robust percentiles.

    Worked in strips of STRIP_ROWS rows, so the float32 working copy is a strip, not the frame;
    the percentiles come from an evenly spaced sample of at most STRETCH_SAMPLE pixels.
    """
    width, height = img.size
    rows = max(1, STRIP_ROWS)
    step = max(1, (width * height) // STRETCH_SAMPLE)
    samples = []
    for top in range(0, height, rows):
        strip = np.asarray(img.crop((0, top, width, min(height, top + rows)))).reshape(-1)
        samples.append(strip[(-top * width) % step::step].astype(np.float32))
    sample = np.concatenate(samples) if samples else np.zeros(0, np.float32)
    finite = sample[np.isfinite(sample)]
    out = np.zeros((height, width), dtype=np.uint8)
    if finite.size == 0:
        return out
    low, high = (float(v) for v in np.percentile(finite, [0.1, 99.9]))
    if high <= low:
        high = low + 1.0
    scale = 255.0 / (high - low)
    for top in range(0, height, rows):
        data = np.asarray(img.crop((0, top, width, min(height, top + rows))), dtype=np.float32).copy()
        np.nan_to_num(data, copy=False, nan=low, posinf=high, neginf=low)
        data -= low
        data *= scale
        np.clip(data, 0.0, 255.0, out=data)
        data += 0.5
        out[top:top + data.shape[0]] = data.astype(np.uint8)
    return out


def to_channel_mode(img: Image.Image, channel_mode: str) -> Image.Image:
    """``nir``: grey replicated to three channels, as NIR models were trained on."""
    if channel_mode == "nir":
        return img.convert("L").convert("RGB")
    return img if img.mode == "RGB" else img.convert("RGB")


def enhance_nir(img: Image.Image, clip_limit: float = 2.0, tile: int = 8) -> Image.Image:
    """CLAHE on the lightness channel: lifts detail out of dark NIR frames."""
    import cv2

    lab = cv2.cvtColor(np.asarray(img.convert("RGB")), cv2.COLOR_RGB2LAB)
    clahe = cv2.createCLAHE(clipLimit=clip_limit, tileGridSize=(tile, tile))
    lab[..., 0] = clahe.apply(lab[..., 0])
    return Image.fromarray(cv2.cvtColor(lab, cv2.COLOR_LAB2RGB))


def crop(img: Image.Image, box: tuple[float, float, float, float]) -> Image.Image:
    """Crop ``box`` = (x, y, width, height) in pixels, clipped to the image."""
    x, y, w, h = (float(v) for v in box)
    left, top = max(0.0, x), max(0.0, y)
    right, bottom = min(float(img.width), x + w), min(float(img.height), y + h)
    if right - left < 2 or bottom - top < 2:
        raise ImageError(f"crop box {tuple(box)} lies outside the {img.width}x{img.height} image or is too small")
    return img.crop((round(left), round(top), round(right), round(bottom)))


def check_box(box: Box) -> Box:
    """``box`` clipped to [0, 1] and ordered; ImageError if it is (almost) empty."""
    left, top, right, bottom = (min(1.0, max(0.0, float(v))) for v in box)
    left, right = sorted((left, right))
    top, bottom = sorted((top, bottom))
    if right - left < 0.01 or bottom - top < 0.01:
        raise ImageError(f"crop box {tuple(round(v, 3) for v in box)} is too small: draw a larger box")
    return left, top, right, bottom


def box_from_selection(selection: dict | None, width: int, height: int) -> Box | None:
    """The box drawn on a plotly image of ``width`` x ``height`` (Streamlit's selection state:
    ``{"box": [{"x": [x0, x1], "y": [y0, y1]}], "points": [...]}``) as fractions, or None.

    The last drawn box wins; without box coordinates the extent of the selected points is used.
    """
    if not selection:
        return None
    boxes = [b for b in selection.get("box") or [] if len(b.get("x") or []) >= 2 and len(b.get("y") or []) >= 2]
    if boxes:
        xs, ys = boxes[-1]["x"], boxes[-1]["y"]
    else:
        points = selection.get("points") or []
        if len(points) < 2:
            return None
        xs, ys = [p["x"] for p in points], [p["y"] for p in points]
    return check_box((min(xs) / width, min(ys) / height, max(xs) / width, max(ys) / height))


def crop_fraction(img: Image.Image, box: Box) -> Image.Image:
    """Cut ``box`` (fractions of the image, see :data:`Box`) out of ``img``."""
    left, top, right, bottom = check_box(box)
    width, height = img.size
    pixels = (round(left * width), round(top * height), round(right * width), round(bottom * height))
    if pixels[2] - pixels[0] < 2 or pixels[3] - pixels[1] < 2:
        raise ImageError(f"crop box covers less than 2x2 pixels of the {width}x{height} image")
    return img.crop(pixels)


def quality_metrics(img: Image.Image) -> dict[str, float | bool]:
    """Brightness and sharpness of a frame, with dark / overexposed / blurry flags.

    Sharpness is the variance of the Laplacian on a grey copy scaled to a fixed width,
    so it compares across camera resolutions.
    """
    import cv2

    grey = img.convert("L")
    if grey.width > QUALITY_WIDTH:
        grey = grey.resize((QUALITY_WIDTH, max(1, round(grey.height * QUALITY_WIDTH / grey.width))), Image.BILINEAR)
    array = np.asarray(grey)
    mean_intensity = float(array.mean())
    laplacian_var = float(cv2.Laplacian(array, cv2.CV_64F).var())
    return {
        "mean_intensity": round(mean_intensity, 2),
        "laplacian_var": round(laplacian_var, 2),
        "dark": mean_intensity < DARK_MEAN,
        "overexposed": mean_intensity > OVEREXPOSED_MEAN,
        "blurry": laplacian_var < BLURRY_LAPLACIAN_VAR,
    }
