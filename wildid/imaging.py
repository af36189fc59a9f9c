"""Robust image loading, NIR handling, crops and quality metrics.

Every loader returns an 8-bit RGB ``PIL.Image`` or raises :class:`ImageError` with a
one-line reason.  Files are only ever read, never written.
"""

from __future__ import annotations

import io
import os
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
# A 20000x20000 image is 400 MP; refuse before decoding rather than run out of memory.
MAX_PIXELS = int(os.environ.get("WILDID_MAX_PIXELS", 150_000_000))
MAX_FILE_BYTES = int(os.environ.get("WILDID_MAX_FILE_BYTES", 300 * 1024 * 1024))
# Photos uploaded in the app: checkpoints and zips may be up to 2 GB (server.maxUploadSize), a photo
# stays at this size (the uploaders pass it as max_upload_size; check_upload enforces it in code).
MAX_UPLOAD_IMAGE_MB = int(os.environ.get("WILDID_MAX_UPLOAD_IMAGE_MB", 50))

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


def load_image(source: ImageSource, draft_size: int | None = None, max_pixels: int = MAX_PIXELS) -> Image.Image:
    """Decode ``source`` to an upright 8-bit RGB image.

    ``draft_size`` lets JPEGs decode at a reduced scale (1/2, 1/4, 1/8) as long as both
    sides stay >= draft_size: a 12 MP photo for a 224 px model then costs a fraction of a
    full decode.  EXIF orientation is applied; palette, alpha, CMYK, 16-bit and greyscale
    images are converted.  Animated images give their first frame.
    """
    if isinstance(source, Image.Image):
        return to_rgb(source)
    label = _describe(source)
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
            img = ImageOps.exif_transpose(img) or img
        except Exception:  # noqa: BLE001 - garbage EXIF must not cost the picture
            pass
        return to_rgb(img)
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


def to_rgb(img: Image.Image) -> Image.Image:
    """8-bit RGB from any PIL mode; 16-bit / float data are contrast-stretched."""
    mode = img.mode
    if mode == "RGB":
        return img
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        return Image.fromarray(_stretch_to_uint8(np.asarray(img)), "L").convert("RGB")
    if mode in ("RGBA", "LA", "PA", "La", "RGBa") or (mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return img.convert("RGB")


def _stretch_to_uint8(array: np.ndarray) -> np.ndarray:
    """Map high-bit-depth data (e.g. 16-bit NIR) to 0-255 using robust percentiles."""
    data = array.astype(np.float32)
    finite = data[np.isfinite(data)]
    if finite.size == 0:
        return np.zeros(array.shape, dtype=np.uint8)
    low, high = np.percentile(finite, [0.1, 99.9])
    if high <= low:
        high = low + 1.0
    scaled = (np.nan_to_num(data, nan=low) - low) / (high - low)
    return (np.clip(scaled, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


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
