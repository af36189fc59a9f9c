"""A corpus of broken and odd image files for the fuzz tests (deterministic, ~1 s to build).

    entries = build_corpus(tmp_path / "corpus")
    for entry in entries: entry.path, entry.category, entry.expect

``expect`` is what a robust loader must do with the entry:

- ``ok``: a valid (if odd) image; it must decode to an RGB picture.
- ``error``: it must be refused with a one-line :class:`wildid.errors.WildidError`.
- ``any``: either is fine (a truncated or bit-flipped file may still decode), but never an
  uncaught exception or a hang.

``kind`` says what the entry is on disk: ``file``, ``dir`` (a folder named like an image),
``symlink`` (a loop or a dangling link) or ``unreadable`` (chmod 000; only made when not root,
because root reads such files anyway).
"""

from __future__ import annotations

import io
import os
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from tests.imagegen import class_image, png_header_only


@dataclass(frozen=True)
class CorpusEntry:
    name: str
    path: Path
    category: str
    expect: str  # ok | error | any
    kind: str = "file"  # file | dir | symlink | unreadable


# --- small building blocks ---------------------------------------------------------------------------------
def _encode(img: Image.Image, fmt: str, **kwargs) -> bytes:
    buffer = io.BytesIO()
    img.save(buffer, fmt, **kwargs)
    return buffer.getvalue()


def _png_chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload) & 0xFFFFFFFF)


def _png(width: int, height: int, bit_depth: int, color_type: int, raw_rows: bytes, extra: bytes = b"") -> bytes:
    ihdr = struct.pack(">IIBBBBB", width, height, bit_depth, color_type, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + extra
            + _png_chunk(b"IDAT", zlib.compress(raw_rows, 9)) + _png_chunk(b"IEND", b""))


def png_rgb48(width: int = 40, height: int = 30) -> bytes:
    """16 bits per channel RGB (PIL cannot write these itself)."""
    rng = np.random.default_rng(3)
    pixels = rng.integers(0, 65536, (height, width, 3), dtype=np.uint16).astype(">u2")
    raw = b"".join(b"\x00" + pixels[y].tobytes() for y in range(height))
    return _png(width, height, 16, 2, raw)


def png_bomb_1bit(side: int = 16000) -> bytes:
    """A real, valid 1-bit PNG of side x side pixels (256 MP) that compresses to ~30 KB."""
    row = b"\x00" + b"\x00" * ((side + 7) // 8)
    compressor = zlib.compressobj(9)
    data = b"".join(compressor.compress(row * 1000) for _ in range(side // 1000))
    data += compressor.compress(row * (side % 1000)) + compressor.flush()
    ihdr = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", data) + _png_chunk(b"IEND", b"")


def png_ztxt_bomb(megabytes: int = 16) -> bytes:
    """A small valid PNG carrying a zTXt chunk that inflates to ``megabytes`` MB."""
    payload = b"Comment\x00\x00" + zlib.compress(b"A" * (megabytes << 20), 9)
    base = _encode(class_image("bright", 1, (16, 16)), "PNG")
    return base[:33] + _png_chunk(b"zTXt", payload) + base[33:]


def jpeg_with_size(width: int, height: int) -> bytes:
    """A small JPEG whose SOF marker is patched to claim ``width`` x ``height``."""
    data = bytearray(_encode(class_image("striped", 2, (64, 48)), "JPEG", quality=80))
    i = 2
    while i < len(data):
        marker = data[i + 1]
        length = struct.unpack(">H", data[i + 2:i + 4])[0]
        if marker in (0xC0, 0xC1, 0xC2):
            data[i + 5:i + 9] = struct.pack(">HH", height, width)
            return bytes(data)
        i += 2 + length
    raise AssertionError("no SOF marker")


def gif_with_size(screen: tuple[int, int], frame: tuple[int, int]) -> bytes:
    """A GIF with the given logical-screen and first-frame sizes and almost no pixel data."""
    header = b"GIF89a" + struct.pack("<HH", *screen) + b"\x80\x00\x00" + b"\x00\x00\x00\xff\xff\xff"
    descriptor = b"\x2c" + struct.pack("<HHHH", 0, 0, *frame) + b"\x00"
    lzw = b"\x02\x02\x44\x01\x00"  # min code size 2, one sub-block, terminator
    return header + descriptor + lzw + b"\x3b"


def bmp_with_size(width: int, height: int) -> bytes:
    """A BMP header claiming ``width`` x ``height`` 24-bit pixels, followed by 64 bytes."""
    pixels = b"\x80" * 64
    info = struct.pack("<IiiHHIIiiII", 40, width, height, 1, 24, 0, 0, 2835, 2835, 0, 0)
    header = b"BM" + struct.pack("<IHHI", 14 + len(info) + len(pixels), 0, 0, 14 + len(info))
    return header + info + pixels


def tiff_with_size(width: int, height: int) -> bytes:
    """A little-endian greyscale TIFF claiming ``width`` x ``height`` with 100 bytes of strip."""
    entries = [
        (256, 4, 1, width), (257, 4, 1, height), (258, 3, 1, 8), (259, 3, 1, 1), (262, 3, 1, 1),
        (273, 4, 1, 0), (277, 3, 1, 1), (278, 4, 1, height), (279, 4, 1, 100),
    ]
    ifd_offset = 8
    ifd_size = 2 + 12 * len(entries) + 4
    strip_offset = ifd_offset + ifd_size
    body = struct.pack("<H", len(entries))
    for tag, kind, count, value in entries:
        value = strip_offset if tag == 273 else value
        packed = struct.pack("<HHI", tag, kind, count) + (struct.pack("<HH", value, 0) if kind == 3 else struct.pack("<I", value))
        body += packed
    body += struct.pack("<I", 0)
    return b"II*\x00" + struct.pack("<I", ifd_offset) + body + b"\x7f" * 100


def webp_vp8x_with_canvas(width: int, height: int) -> bytes:
    """A WebP whose VP8X chunk claims a ``width`` x ``height`` canvas around a 16x16 image."""
    small = _encode(class_image("dark", 3, (16, 16)), "WEBP", lossless=True)
    image_chunk = small[12:]
    vp8x = b"VP8X" + struct.pack("<I", 10) + b"\x00\x00\x00\x00" + (width - 1).to_bytes(3, "little") + (height - 1).to_bytes(3, "little")
    body = b"WEBP" + vp8x + image_chunk
    return b"RIFF" + struct.pack("<I", len(body)) + body


def jpeg_with_app1(payload: bytes, img: Image.Image | None = None) -> bytes:
    """A JPEG with ``payload`` as its APP1 (EXIF) segment, inserted right after SOI."""
    data = _encode(img or class_image("bright", 4, (64, 48)), "JPEG", quality=85)
    segment = b"\xff\xe1" + struct.pack(">H", len(payload) + 2) + payload
    return data[:2] + segment + data[2:]


def exif_orientation(value: int, tag_type: int = 3) -> bytes:
    """A minimal big-endian EXIF block with one Orientation entry of any value / type."""
    if tag_type == 3:
        entry = struct.pack(">HHIHH", 0x0112, 3, 1, value & 0xFFFF, 0)
    else:  # a string-typed orientation
        entry = struct.pack(">HHI", 0x0112, 2, 4) + b"abc\x00"
    return b"Exif\x00\x00" + b"MM\x00*" + struct.pack(">I", 8) + struct.pack(">H", 1) + entry + struct.pack(">I", 0)


def bit_flip(data: bytes, flips: int, seed: int, skip: int = 0) -> bytes:
    """``data`` with ``flips`` random bits inverted (after the first ``skip`` bytes)."""
    rng = np.random.default_rng(seed)
    out = bytearray(data)
    for position in rng.integers(skip, len(out), flips):
        out[position] ^= 1 << int(rng.integers(0, 8))
    return bytes(out)


# --- the corpus --------------------------------------------------------------------------------------------
def _base_images() -> dict[str, tuple[str, bytes]]:
    photo = class_image("striped", 7, (160, 120))
    return {
        "jpg": (".jpg", _encode(photo, "JPEG", quality=88)),
        "progjpg": (".jpg", _encode(photo, "JPEG", quality=88, progressive=True)),
        "png": (".png", _encode(photo, "PNG")),
        "webp": (".webp", _encode(photo, "WEBP", quality=80)),
        "gif": (".gif", _encode(photo.convert("P", palette=Image.ADAPTIVE), "GIF")),
        "tif": (".tif", _encode(photo, "TIFF", compression="tiff_deflate")),
        "bmp": (".bmp", _encode(photo, "BMP")),
    }


def build_corpus(root: Path | str) -> list[CorpusEntry]:
    """Write every corpus file under ``root`` (created) and return the entries."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    entries: list[CorpusEntry] = []

    def add(name: str, data: bytes | Image.Image, category: str, expect: str, fmt: str | None = None, **kwargs) -> None:
        path = root / name
        if isinstance(data, Image.Image):
            data.save(path, fmt, **kwargs)
        else:
            path.write_bytes(data)
        entries.append(CorpusEntry(name, path, category, expect))

    bases = _base_images()

    # Valid originals: the control group.
    for key, (ext, data) in bases.items():
        add(f"valid_{key}{ext}", data, "valid", "ok")

    # Truncated at many offsets (absolute byte counts and fractions of the file).
    for key, (ext, data) in bases.items():
        cuts = sorted({1, 2, 4, 8, 16, 33, 100, *(int(len(data) * f) for f in (0.1, 0.25, 0.5, 0.75, 0.9, 0.99)), len(data) - 2})
        for cut in cuts:
            add(f"trunc_{key}_{cut}{ext}", data[:cut], "truncated", "any")

    # Bit flips: 1, 8 and 64 random bits, a few seeds, header region spared or not.
    for key, (ext, data) in bases.items():
        for seed, flips in enumerate((1, 1, 8, 8, 64, 64)):
            add(f"flip_{key}_{flips}b_s{seed}{ext}", bit_flip(data, flips, seed, skip=0 if seed % 2 else 16), "bitflip", "any")

    # Wrong extension: the bytes are fine, the name lies.
    for key, ext in (("png", ".jpg"), ("jpg", ".png"), ("webp", ".tif"), ("gif", ".jpeg"), ("tif", ".bmp"), ("bmp", ".webp")):
        add(f"wrongext_{key}_as{ext}", bases[key][1], "wrong-extension", "ok")

    # Zero bytes.
    for ext in (".jpg", ".jpeg", ".png", ".gif", ".webp", ".tif", ".bmp"):
        add(f"zero{ext}", b"", "zero-bytes", "error")

    # Decompression bombs: huge declared sizes in tiny files, and one real compressed bomb.
    add("bomb_png_header_100000x100000.png", png_header_only(100_000, 100_000), "bomb", "error")
    add("bomb_png_header_65000x65000.png", png_header_only(65_000, 65_000), "bomb", "error")
    add("bomb_png_header_2^31x1.png", png_header_only(2**31 - 1, 1), "bomb", "error")
    add("bomb_png_1bit_16000x16000.png", png_bomb_1bit(16_000), "bomb", "error")
    add("bomb_png_ztxt_16MB.png", png_ztxt_bomb(16), "bomb", "any")
    add("bomb_jpeg_65000x65000.jpg", jpeg_with_size(65_000, 65_000), "bomb", "error")
    add("bomb_jpeg_65000x10.jpg", jpeg_with_size(65_000, 10), "bomb", "any")
    add("bomb_gif_screen_65000x65000.gif", gif_with_size((65_000, 65_000), (65_000, 65_000)), "bomb", "error")
    add("bomb_gif_frame_65000x65000.gif", gif_with_size((10, 10), (65_000, 65_000)), "bomb", "error")
    add("bomb_bmp_65000x65000.bmp", bmp_with_size(65_000, 65_000), "bomb", "error")
    add("bomb_tiff_65000x65000.tif", tiff_with_size(65_000, 65_000), "bomb", "error")
    add("bomb_webp_canvas_65000x65000.webp", webp_vp8x_with_canvas(65_000, 65_000), "bomb", "error")

    # Degenerate sizes.
    for ext, fmt in ((".jpg", "JPEG"), (".png", "PNG"), (".gif", "GIF"), (".webp", "WEBP"), (".tif", "TIFF"), (".bmp", "BMP")):
        add(f"one_by_one{ext}", Image.new("RGB", (1, 1), (200, 30, 30)), "1x1", "ok", fmt)
    add("wide_50000x10.png", Image.new("L", (50_000, 10), 120), "extreme-aspect", "ok")
    add("tall_10x50000.png", Image.new("L", (10, 50_000), 120), "extreme-aspect", "ok")
    add("wide_50000x10.jpg", Image.new("RGB", (50_000, 10), (90, 120, 60)), "extreme-aspect", "ok", quality=70)
    add("wide_65500x1.png", Image.new("1", (65_500, 1), 1), "extreme-aspect", "ok")

    # High bit depth and float.
    ramp16 = (np.linspace(0, 65535, 48 * 64).reshape(48, 64)).astype(np.uint16)
    add("grey16.png", Image.fromarray(ramp16), "16-bit", "ok")
    add("grey16.tif", Image.fromarray(ramp16), "16-bit", "ok")
    add("grey16_flat.png", Image.fromarray(np.full((32, 32), 4000, np.uint16)), "16-bit", "ok")
    add("rgb48.png", png_rgb48(), "16-bit", "ok")
    add("int32.tif", Image.fromarray((np.arange(40 * 30, dtype=np.int32).reshape(30, 40) * 100000)), "16-bit", "ok")
    floats = np.linspace(-3.0, 7.0, 40 * 30, dtype=np.float32).reshape(30, 40)
    add("float32.tif", Image.fromarray(floats), "float", "ok")
    with_nan = floats.copy()
    with_nan[::3, ::5] = np.nan
    with_nan[1, 1], with_nan[2, 2] = np.inf, -np.inf
    add("float32_nan_inf.tif", Image.fromarray(with_nan), "float", "ok")
    add("float32_all_nan.tif", Image.fromarray(np.full((20, 20), np.nan, np.float32)), "float", "ok")

    # CMYK and other colour modes.
    photo = class_image("bright", 8, (80, 60))
    add("cmyk.jpg", photo.convert("CMYK"), "cmyk", "ok", "JPEG")
    add("cmyk.tif", photo.convert("CMYK"), "cmyk", "ok", "TIFF")
    add("ycbcr.tif", photo.convert("YCbCr"), "colour-mode", "ok", "TIFF")
    add("lab.tif", photo.convert("LAB"), "colour-mode", "any", "TIFF")
    add("grey.jpg", photo.convert("L"), "colour-mode", "ok", "JPEG")
    add("bilevel.png", photo.convert("1"), "colour-mode", "ok", "PNG")
    add("grey_alpha.png", photo.convert("LA"), "colour-mode", "ok", "PNG")
    add("rgba.webp", photo.convert("RGBA"), "colour-mode", "ok", "WEBP")

    # Palette with transparency.
    palette = photo.convert("P", palette=Image.ADAPTIVE, colors=16)
    add("palette_trns.png", palette, "palette-transparency", "ok", "PNG", transparency=0)
    add("palette_trns.gif", palette, "palette-transparency", "ok", "GIF", transparency=3)
    add("palette_no_trns.bmp", palette, "palette-transparency", "ok", "BMP")

    # Animated.
    frames = [class_image(style, i, (48, 40)) for i, style in enumerate(("dark", "bright", "striped", "dark"))]
    add("animated.gif", frames[0], "animated", "ok", "GIF", save_all=True, append_images=frames[1:], duration=80, loop=0)
    add("animated.webp", frames[0], "animated", "ok", "WEBP", save_all=True, append_images=frames[1:], duration=80)
    add("animated_apng.png", frames[0], "animated", "ok", "PNG", save_all=True, append_images=frames[1:], duration=80)
    add("multipage.tif", frames[0], "animated", "ok", "TIFF", save_all=True, append_images=frames[1:])

    # EXIF garbage and odd orientations.
    rng = np.random.default_rng(11)
    for value in (0, 1, 6, 8, 9, 99, 65535):
        add(f"exif_orientation_{value}.jpg", jpeg_with_app1(exif_orientation(value)), "exif", "ok")
    add("exif_orientation_string.jpg", jpeg_with_app1(exif_orientation(0, tag_type=2)), "exif", "ok")
    for seed in range(4):
        junk = b"Exif\x00\x00" + rng.integers(0, 256, 200 + 300 * seed, dtype=np.uint8).tobytes()
        add(f"exif_random_{seed}.jpg", jpeg_with_app1(junk), "exif", "ok")
    add("exif_bad_ifd_offset.jpg", jpeg_with_app1(b"Exif\x00\x00MM\x00*\xff\xff\xff\xf0"), "exif", "ok")
    add("exif_huge_count.jpg", jpeg_with_app1(b"Exif\x00\x00MM\x00*\x00\x00\x00\x08\xff\xff" + b"\x01" * 64), "exif", "ok")
    add("exif_truncated_header.jpg", jpeg_with_app1(b"Exif\x00\x00II"), "exif", "ok")
    exif = Image.Exif()
    exif[0x0112] = 6
    add("exif_rotated_6.png", photo, "exif", "ok", "PNG", exif=exif.tobytes())
    png = _encode(photo, "PNG")
    add("png_exif_garbage.png", png[:33] + _png_chunk(b"eXIf", b"MM\x00*\x00\x00\xff\xff") + png[33:], "exif", "ok")

    # Non-images dressed as images.
    non_images = {
        "text.jpg": b"hello, this is not a photo\n" * 20,
        "html.png": b"<!doctype html><html><body>not an image</body></html>",
        "pdf.tif": b"%PDF-1.4\n1 0 obj << /Type /Catalog >> endobj\ntrailer\n%%EOF\n",
        "zip.webp": b"PK\x03\x04" + b"\x00" * 60,
        "elf.bmp": b"\x7fELF\x02\x01\x01" + b"\x00" * 120,
        "json.gif": b'{"not": "an image"}',
        "random.jpg": rng.integers(0, 256, 4096, dtype=np.uint8).tobytes(),
        "magic_only.jpg": b"\xff\xd8\xff",
        "magic_only.png": b"\x89PNG\r\n\x1a\n",
        "magic_only.gif": b"GIF89a",
        "magic_random.jpg": b"\xff\xd8\xff\xe0" + rng.integers(0, 256, 2048, dtype=np.uint8).tobytes(),
        "magic_random.png": b"\x89PNG\r\n\x1a\n" + rng.integers(0, 256, 2048, dtype=np.uint8).tobytes(),
        "riff_only.webp": b"RIFF\x04\x00\x00\x00WEBP",
        "tiff_header_only.tif": b"II*\x00\x08\x00\x00\x00",
        "nul_bytes.png": b"\x00" * 1000,
        "svg.png": b'<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10"/>',
        "UPPER.JPG": b"not an image either",
    }
    for name, data in non_images.items():
        add(f"nonimage_{name}", data, "non-image", "error")

    # Things that are not regular files.
    folder = root / "a_folder.jpg"
    folder.mkdir(exist_ok=True)
    (folder / "inside.txt").write_text("a folder named like an image")
    entries.append(CorpusEntry("a_folder.jpg", folder, "directory", "error", kind="dir"))
    for name, target in (("loop_a.jpg", "loop_b.jpg"), ("loop_b.jpg", "loop_a.jpg"), ("loop_self.jpg", "loop_self.jpg"),
                         ("dangling.jpg", "does_not_exist.jpg")):
        link = root / name
        if not link.is_symlink():
            os.symlink(target, link)
        entries.append(CorpusEntry(name, link, "symlink", "error", kind="symlink"))
    if os.geteuid() != 0:  # root reads chmod-000 files anyway, so the case means nothing there
        locked = root / "unreadable.jpg"
        locked.write_bytes(bases["jpg"][1])
        locked.chmod(0)
        entries.append(CorpusEntry("unreadable.jpg", locked, "permissions", "error", kind="unreadable"))
    return entries


def running_as_root() -> bool:
    return os.geteuid() == 0


def regular_files(entries: list[CorpusEntry]) -> list[CorpusEntry]:
    """Entries that are readable regular files (what a folder scan yields as files)."""
    return [e for e in entries if e.kind in ("file", "unreadable")]

