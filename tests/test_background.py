"""empty_score from the median background of a fixed camera view (wildid.background)."""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw

from wildid import background


def scene(rng_seed: int = 1, size=(320, 240)) -> np.ndarray:
    """A fixed textured tunnel view: gradient + blotches, the same for every frame."""
    rng = np.random.default_rng(rng_seed)
    w, h = size
    yy, xx = np.mgrid[0:h, 0:w]
    base = 60 + 80 * xx / w + 30 * np.sin(yy / 17.0)
    for _ in range(25):
        cx, cy, r = rng.integers(0, w), rng.integers(0, h), rng.integers(5, 30)
        base += 25 * ((xx - cx) ** 2 + (yy - cy) ** 2 < r * r)
    return base


def frame(base: np.ndarray, seed: int, blob: bool = False, gain: float = 0.0) -> Image.Image:
    """One exposure: sensor noise and a global brightness change; optionally an animal blob."""
    rng = np.random.default_rng(seed)
    pixels = base + gain + rng.normal(0, 8, base.shape)
    img = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), "L")
    if blob:
        draw = ImageDraw.Draw(img)
        h, w = base.shape
        cx, cy = rng.integers(80, w - 80), rng.integers(60, h - 60)
        draw.ellipse((cx - 45, cy - 28, cx + 45, cy + 28), fill=int(rng.integers(5, 20)))
        draw.ellipse((cx + 35, cy - 38, cx + 60, cy - 12), fill=10)
    return img.convert("RGB")


def test_empty_score_separates_frames_with_and_without_an_animal():
    base = scene()
    empties = [frame(base, seed, gain=g) for seed, g in zip(range(12), [0, 5, -5, 10, -10, 0, 3, -3, 8, -8, 0, 6])]
    animals = [frame(base, 100 + seed, blob=True, gain=g) for seed, g in zip(range(6), [0, 5, -5, 10, -10, 0])]
    scores = background.empty_scores(empties + animals)
    empty_scores, animal_scores = scores[: len(empties)], scores[len(empties):]
    assert min(empty_scores) > max(animal_scores)
    assert min(empty_scores) >= background.DEFAULT_EMPTY_THRESHOLD
    assert max(animal_scores) < background.DEFAULT_EMPTY_THRESHOLD
    assert all(0.0 <= s <= 1.0 for s in scores)


def test_no_background_from_fewer_than_three_frames():
    base = scene()
    assert background.empty_scores([frame(base, 0), frame(base, 1)]) == [None, None]
    assert background.median_background([]) is None


def test_sample_indices_bounded_and_spread():
    assert background.sample_indices(5) == [0, 1, 2, 3, 4]
    picked = background.sample_indices(10_000, 25)
    assert len(picked) == 25 and picked[0] == 0 and picked[-1] == 9_999
    assert picked == sorted(set(picked))


def test_thumbnail_is_fixed_size_grey():
    thumb = background.thumbnail(Image.new("RGB", (4000, 3000), (10, 200, 30)))
    assert thumb.shape == (background.THUMB_SIZE[1], background.THUMB_SIZE[0]) and thumb.dtype == np.float32


def animal_frame(base: np.ndarray, seed: int, box: tuple[int, int, int, int] | None, gain: float = 0.0) -> Image.Image:
    """A scene exposure with a dark animal filling the pixel box (x, y, w, h), or none."""
    rng = np.random.default_rng(seed)
    pixels = base + gain + rng.normal(0, 8, base.shape)
    if box:
        x, y, w, h = box
        pixels[y:y + h, x:x + w] = rng.normal(12, 4, (h, w))
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), "L").convert("RGB")


def box_iou(a, b) -> float:
    ix = max(0.0, min(a[0] + a[2], b[0] + b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[1] + a[3], b[1] + b[3]) - max(a[1], b[1]))
    return ix * iy / (a[2] * a[3] + b[2] * b[3] - ix * iy)


def test_foreground_region_finds_the_animal_and_nothing_in_empty_frames():
    base = scene(3)
    boxes = [(20 + 25 * i, 30 + 15 * (i % 4), 70, 40) for i in range(8)]
    frames = [animal_frame(base, i, box, gain=(-8, 0, 8)[i % 3]) for i, box in enumerate(boxes)]
    empties = [animal_frame(base, 50 + i, None, gain=6 * i) for i in range(3)]
    thumbs = [background.thumbnail(f) for f in frames + empties]
    bg = background.median_background(thumbs)
    w, h = base.shape[1], base.shape[0]
    for thumb, (x, y, bw, bh) in zip(thumbs, boxes):
        region = background.foreground_region(thumb, bg)
        assert region is not None and box_iou(region, (x / w, y / h, bw / w, bh / h)) > 0.6
        crop = background.foreground_box(thumb, bg)
        assert crop[0] <= x / w and crop[1] <= y / h  # padded: holds the whole animal
        assert crop[0] + crop[2] >= (x + bw) / w and crop[1] + crop[3] >= (y + bh) / h
    assert all(background.foreground_box(t, bg) is None for t in thumbs[len(frames):])
    assert background.foreground_box(thumbs[0], None) is None  # no background: whole frame


def test_batch_crop_background_classifies_the_region(models_root, tmp_path):
    """A bright animal on a dark fixed scene: the crop is the animal, so the tiny model says
    bobcat (bright) with the crop and gray fox (dark) on the whole frame."""
    from tests.imagegen import write
    from wildid import detections as md
    from wildid.batch import iter_results, run_batch
    from wildid.registry import load_predictor

    rng = np.random.default_rng(1)
    base = np.clip(rng.normal(35, 6, (240, 320)), 0, 255)
    for i in range(6):
        pixels = base + rng.normal(0, 3, base.shape)
        x, y = 30 + 40 * i, 40 + 20 * (i % 3)
        pixels[y:y + 70, x:x + 60] = rng.normal(215, 8, (70, 60))
        write(tmp_path / "cam" / f"{i}.png", Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), "L").convert("RGB"))
    whole, cropped = tmp_path / "whole.csv", tmp_path / "crop.csv"
    run_batch(tmp_path / "cam", load_predictor("tiny"), whole)
    run_batch(tmp_path / "cam", load_predictor("tiny"), cropped, regions=background.BackgroundRegions())
    assert {r["label"] for r in iter_results(whole)} == {"gray fox"}
    rows = list(iter_results(cropped))
    assert {r["label"] for r in rows} == {"bobcat"} and {r["box_source"] for r in rows} == {"background"}
    for i, row in enumerate(sorted(rows, key=lambda r: r["relpath"])):
        x, y = 30 + 40 * i, 40 + 20 * (i % 3)
        box = md.parse_box(row["box"])
        assert box[0] <= x / 320 + 0.02 and box[0] + box[2] >= (x + 60) / 320 - 0.02
        assert box[1] <= y / 240 + 0.02 and box[1] + box[3] >= (y + 70) / 240 - 0.02
        assert box[2] < 0.5  # a crop, not the frame
