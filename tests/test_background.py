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
