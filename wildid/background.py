"""Empty-frame score from a camera's median background (no model).

Tunnel and subnivean cameras have a fixed view, so the per-pixel median of frames of one
camera folder is the empty scene.  A frame that differs from it in only a few pixels is
probably blank.  ``empty_score`` is in [0, 1]: 1 = indistinguishable from the background
(likely empty), 0 = a large part of the frame changed.  Frames are compared as small
grey thumbnails after matching overall brightness, so noise and the exposure changes of
IR flashes do not count as change.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
from PIL import Image

from wildid import defaults

THUMB_SIZE = (96, 72)  # (width, height)
PIXEL_CHANGE = 24.0  # grey levels a thumbnail pixel must differ by to count as changed
FULL_CHANGE_FRACTION = 0.10  # this fraction of changed pixels gives empty_score 0
MIN_FRAMES = 3  # fewer frames give no background worth the name
BACKGROUND_SAMPLE = 25  # frames used for the median: bounded, so memory stays flat
DEFAULT_EMPTY_THRESHOLD = defaults.EMPTY_THRESHOLD  # empty_score >= this -> likely empty (app and CLI)


def thumbnail(img: Image.Image) -> np.ndarray:
    """Grey float32 thumbnail of THUMB_SIZE (box filter: averages sensor noise away)."""
    grey = img.convert("L")
    return np.asarray(grey.resize(THUMB_SIZE, Image.BOX), dtype=np.float32)


def sample_indices(count: int, size: int = BACKGROUND_SAMPLE) -> list[int]:
    """Up to ``size`` evenly spaced indices in range(count), deterministic."""
    if count <= size:
        return list(range(count))
    return sorted({round(i * (count - 1) / (size - 1)) for i in range(size)})


def median_background(thumbs: Sequence[np.ndarray]) -> np.ndarray | None:
    """Per-pixel median of brightness-matched thumbnails; None with fewer than MIN_FRAMES."""
    if len(thumbs) < MIN_FRAMES:
        return None
    stack = np.stack([_centred(t) for t in thumbs])
    return np.median(stack, axis=0)


def changed_fraction(thumb: np.ndarray, background: np.ndarray) -> float:
    diff = np.abs(_centred(thumb) - background)
    return float((diff > PIXEL_CHANGE).mean())


def empty_score(thumb: np.ndarray, background: np.ndarray | None) -> float | None:
    if background is None:
        return None
    score = 1.0 - min(1.0, changed_fraction(thumb, background) / FULL_CHANGE_FRACTION)
    return round(score, 4)


def empty_scores(images: Sequence[Image.Image]) -> list[float | None]:
    """Scores for the frames of one camera, the background taken from these same frames."""
    thumbs = [thumbnail(img) for img in images]
    background = median_background([thumbs[i] for i in sample_indices(len(thumbs))])
    return [empty_score(t, background) for t in thumbs]


def _centred(thumb: np.ndarray) -> np.ndarray:
    """Remove the frame's overall brightness (median), so exposure changes are not change."""
    return thumb - np.median(thumb)
