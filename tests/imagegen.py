"""Generated test images: classes a tiny model can learn, odd files, camera-trap frames."""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import numpy as np
from PIL import Image

# Three classes a tiny CNN separates from pooled features: dark, bright, striped.
# Labels are real track-model species so the species facts show up in page tests.
CLASS_STYLES = {"gray fox": "dark", "bobcat": "bright", "coyote": "striped"}


def class_image(style: str, seed: int = 0, size: tuple[int, int] = (96, 80)) -> Image.Image:
    rng = np.random.default_rng(seed)
    w, h = size
    if style == "dark":
        base = rng.normal(35, 10, (h, w, 3))
    elif style == "bright":
        base = rng.normal(215, 10, (h, w, 3))
    elif style == "striped":
        stripes = ((np.arange(w) // 6) % 2) * 200 + 25
        base = np.broadcast_to(stripes[None, :, None], (h, w, 3)).astype(float) + rng.normal(0, 10, (h, w, 3))
    else:
        raise ValueError(style)
    return Image.fromarray(np.clip(base, 0, 255).astype(np.uint8), "RGB")


def noise_image(seed: int = 0, size: tuple[int, int] = (64, 48)) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8), "RGB")


def jpeg_bytes(img: Image.Image, quality: int = 90, **save_kwargs) -> bytes:
    buffer = io.BytesIO()
    img.save(buffer, "JPEG", quality=quality, **save_kwargs)
    return buffer.getvalue()


def truncated_jpeg(img: Image.Image | None = None) -> bytes:
    data = jpeg_bytes(img or noise_image(size=(256, 192)))
    return data[: len(data) // 2]


def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header claims ``width`` x ``height`` with (almost) no pixel data."""

    def chunk(kind: bytes, payload: bytes) -> bytes:
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 16)) + chunk(b"IEND", b"")


def write(path: Path, data: bytes | Image.Image, fmt: str | None = None, **kwargs) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(data, Image.Image):
        data.save(path, fmt, **kwargs)
    else:
        path.write_bytes(data)
    return path


def nir_frame(seed: int = 0, size: tuple[int, int] = (640, 480), animal: bool = True) -> Image.Image:
    """A night camera-trap frame as an NIR sensor gives it: grey, dim, noisy, vignetted.

    A fixed-camera scene (ground gradient, blotches of vegetation) lit by the trap's IR
    flash from the centre; with ``animal`` a bright-eyed dark body crosses the frame.
    """
    from PIL import ImageDraw, ImageFilter

    rng = np.random.default_rng(seed)
    w, h = size
    yy, xx = np.mgrid[0:h, 0:w]
    scene = 40 + 50 * yy / h + 12 * np.sin(xx / rng.uniform(9, 25))
    for _ in range(40):
        cx, cy, r = rng.integers(0, w), rng.integers(0, h), rng.integers(6, 45)
        scene += rng.uniform(-25, 35) * ((xx - cx) ** 2 + (yy - cy) ** 2 < r * r)
    flash = np.exp(-(((xx - w / 2) / (0.6 * w)) ** 2 + ((yy - h / 2) / (0.6 * h)) ** 2))
    pixels = scene * (0.4 + 0.8 * flash) * rng.uniform(0.5, 1.1) + rng.normal(0, 7, (h, w))
    img = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), "L")
    if animal:
        draw = ImageDraw.Draw(img)
        bw, bh = int(rng.integers(w // 6, w // 3)), int(rng.integers(h // 8, h // 4))
        cx, cy = int(rng.integers(bw, w - bw)), int(rng.integers(h // 2, h - bh))
        draw.ellipse((cx - bw // 2, cy - bh // 2, cx + bw // 2, cy + bh // 2), fill=int(rng.integers(15, 45)))
        hx = cx + bw // 2 - 4
        draw.ellipse((hx - bh // 3, cy - bh, hx + bh // 3, cy - bh // 3), fill=int(rng.integers(15, 45)))
        for dx in (-5, 5):  # eye shine in the IR flash
            draw.ellipse((hx + dx - 3, cy - 2 * bh // 3 - 3, hx + dx + 3, cy - 2 * bh // 3 + 3), fill=245)
    return img.filter(ImageFilter.GaussianBlur(0.8)).convert("RGB")
