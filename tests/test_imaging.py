"""Image loading: odd modes, orientation, broken files, enormous images, JPEG draft decoding."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.imagegen import jpeg_bytes, noise_image, png_header_only, truncated_jpeg, write
from wildid.errors import ImageError
from wildid.imaging import crop, enhance_nir, load_image, quality_metrics, to_channel_mode


def test_exif_orientation_is_applied(tmp_path):
    img = Image.new("RGB", (60, 30), (200, 10, 10))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise on display
    path = write(tmp_path / "rotated.jpg", img, "JPEG", exif=exif.tobytes())
    assert load_image(path).size == (30, 60)


@pytest.mark.parametrize(
    "make",
    [
        lambda: Image.new("CMYK", (20, 10), (0, 255, 255, 0)),
        lambda: Image.new("L", (20, 10), 128),
        lambda: Image.new("1", (20, 10), 1),
        lambda: Image.new("RGBA", (20, 10), (10, 200, 10, 128)),
        lambda: Image.new("P", (20, 10), 3),
        lambda: Image.new("LA", (20, 10), (100, 255)),
    ],
)
def test_modes_become_rgb(make, tmp_path):
    img = make()
    fmt = "JPEG" if img.mode == "CMYK" else "PNG"
    path = write(tmp_path / f"odd.{fmt.lower()}", img, fmt)
    out = load_image(path)
    assert out.mode == "RGB" and out.size == (20, 10)


def test_sixteen_bit_nir_is_stretched(tmp_path):
    ramp = (np.linspace(1000, 5000, 64 * 32).reshape(32, 64)).astype(np.uint16)
    path = write(tmp_path / "nir16.png", Image.fromarray(ramp))
    out = np.asarray(load_image(path))
    assert out.dtype == np.uint8 and out.shape == (32, 64, 3)
    assert out.min() <= 2 and out.max() >= 253  # full range used, not a black frame


def test_alpha_composited_on_white():
    img = Image.new("RGBA", (4, 4), (0, 0, 0, 0))
    assert load_image(img).getpixel((0, 0)) == (255, 255, 255)


@pytest.mark.parametrize(
    "content, fragment",
    [
        (b"", "empty file"),
        (b"hello, I am a text file", "not an image"),
        (truncated_jpeg(), "image data"),
        (png_header_only(20000, 20000), "20000x20000"),
    ],
)
def test_bad_files_get_one_line(content, fragment, tmp_path):
    path = write(tmp_path / "photo.jpg", content)
    with pytest.raises(ImageError) as err:
        load_image(path)
    assert fragment in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(ImageError):
        load_image(io.BytesIO(content))


def test_missing_and_folder_paths(tmp_path):
    with pytest.raises(ImageError, match="no such file"):
        load_image(tmp_path / "nope.jpg")
    with pytest.raises(ImageError, match="folder"):
        load_image(tmp_path)


def test_jpeg_draft_decodes_smaller(tmp_path):
    path = write(tmp_path / "big.jpg", jpeg_bytes(noise_image(size=(4000, 3000))))
    assert load_image(path).size == (4000, 3000)
    small = load_image(path, draft_size=256)
    assert small.size == (500, 375)  # 1/8 scale, both sides still >= 256


def test_crop_and_bad_box():
    img = noise_image(size=(100, 80))
    assert crop(img, (10, 20, 30, 40)).size == (30, 40)
    assert crop(img, (90, 70, 50, 50)).size == (10, 10)  # clipped to the image
    with pytest.raises(ImageError, match="outside"):
        crop(img, (200, 200, 10, 10))


def test_quality_flags():
    dark = Image.new("RGB", (64, 48), (5, 5, 5))
    metrics = quality_metrics(dark)
    assert metrics["dark"] and metrics["blurry"] and not metrics["overexposed"]
    sharp = quality_metrics(noise_image(size=(64, 48)))
    assert not sharp["blurry"] and sharp["laplacian_var"] > 1000


def test_nir_mode_and_clahe():
    img = noise_image(size=(64, 48))
    grey = np.asarray(to_channel_mode(img, "nir"))
    assert (grey[..., 0] == grey[..., 1]).all() and (grey[..., 1] == grey[..., 2]).all()
    dim = Image.fromarray((np.asarray(img) // 8).astype(np.uint8))
    assert np.asarray(enhance_nir(dim)).std() > np.asarray(dim).std()


def test_drawn_box_becomes_fractions_and_cuts_the_same_region_at_any_scale():
    from wildid.imaging import box_from_selection, crop_fraction

    selection = {"box": [{"x": [300, 100], "y": [20, 180]}], "points": []}
    box = box_from_selection(selection, 400, 200)
    assert box == (0.25, 0.1, 0.75, 0.9)
    assert box_from_selection({"box": [], "points": []}, 400, 200) is None  # nothing drawn: the full photo
    assert box_from_selection({"points": [{"x": 40, "y": 20}, {"x": 200, "y": 100}]}, 400, 200) == (0.1, 0.1, 0.5, 0.5)
    gradient = np.tile(np.arange(400, dtype=np.uint8)[None, :, None] // 2, (200, 1, 3))
    big = Image.fromarray(gradient)
    small = big.resize((200, 100))
    assert crop_fraction(big, box).size == (200, 160) and crop_fraction(small, box).size == (100, 80)
    assert abs(np.asarray(crop_fraction(big, box)).mean() - np.asarray(crop_fraction(small, box)).mean()) < 1.0
    with pytest.raises(ImageError, match="too small"):
        box_from_selection({"box": [{"x": [10, 11], "y": [10, 100]}]}, 400, 200)


def test_photo_upload_cap_names_the_limit_and_checkpoints_may_be_2_gb():
    import tomllib

    from wildid.imaging import MAX_UPLOAD_IMAGE_MB, check_upload

    check_upload("ok.jpg", MAX_UPLOAD_IMAGE_MB * 1024 * 1024)
    with pytest.raises(ImageError, match=f"over the {MAX_UPLOAD_IMAGE_MB} MB limit for photos"):
        check_upload("huge.jpg", MAX_UPLOAD_IMAGE_MB * 1024 * 1024 + 1)
    config = tomllib.loads((Path(__file__).resolve().parent.parent / ".streamlit" / "config.toml").read_text())
    assert config["server"]["maxUploadSize"] == 2048


def test_upright_size_follows_exif_orientation():
    import io

    from wildid.imaging import upright_size

    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90: stored 300x200, shown 200x300
    buffer = io.BytesIO()
    Image.new("RGB", (300, 200)).save(buffer, "JPEG", exif=exif)
    buffer.name = "rotated.jpg"
    assert upright_size(buffer) == (200, 300)
    assert load_image(buffer).size == (200, 300)
