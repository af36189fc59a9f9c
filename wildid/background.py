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

THUMB_SIZE = (96, 72)  # (width, height)
PIXEL_CHANGE = 24.0  # grey levels a thumbnail pixel must differ by to count as changed
FULL_CHANGE_FRACTION = 0.10  # this fraction of changed pixels gives empty_score 0
MIN_FRAMES = 3  # fewer frames give no background worth the name
BACKGROUND_SAMPLE = 25  # frames used for the median: bounded, so memory stays flat
DEFAULT_EMPTY_THRESHOLD = 0.9  # empty_score >= this -> likely empty


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


# --- crops without a detector: the largest changed region ---------------------------------------------
# A fixed camera's median background marks what changed in a frame.  The largest connected
# changed region (after a small closing, so an animal's parts join up) is the animal, padded
# because the 96x72 mask is coarse and a classifier wants some context.  PIXEL_CHANGE and
# MIN_REGION_FRACTION keep sensor noise and small flicker out; bench/crop.py measures the IoU.
MIN_REGION_FRACTION = 0.004  # of the thumbnail (about 28 of 6912 pixels): smaller is noise
CROP_PAD = 0.25  # of the region's width / height on each side
CROP_MODES = ("background",)


def changed_mask(thumb: np.ndarray, background: np.ndarray) -> np.ndarray:
    """uint8 mask (255 = changed) of a thumbnail against its camera's median background."""
    import cv2

    mask = (np.abs(_centred(thumb) - background) > PIXEL_CHANGE).astype(np.uint8) * 255
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (3, 3))
    return cv2.morphologyEx(mask, cv2.MORPH_CLOSE, kernel)


def foreground_region(thumb: np.ndarray, background: np.ndarray | None) -> tuple[float, float, float, float] | None:
    """Normalised (x, y, w, h) bounding box of the largest changed region; None when nothing
    (or only noise) changed, or the folder has no background."""
    import cv2

    if background is None:
        return None
    mask = changed_mask(thumb, background)
    count, _, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=8)
    if count <= 1:
        return None
    largest = 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
    x, y, w, h, area = (int(v) for v in stats[largest])
    if area < MIN_REGION_FRACTION * mask.size:
        return None
    height, width = mask.shape
    return (x / width, y / height, w / width, h / height)


def foreground_box(thumb: np.ndarray, background: np.ndarray | None,
                   pad: float = CROP_PAD) -> tuple[float, float, float, float] | None:
    """The crop for a frame: the largest changed region, padded; None = use the whole frame."""
    from wildid.detections import pad_box

    region = foreground_region(thumb, background)
    return None if region is None else pad_box(region, pad)


class BackgroundRegions:
    """Regions for batch: each frame's padded largest changed region (see foreground_box)."""

    needs_background = True

    def __init__(self, pad: float = CROP_PAD):
        self.pad = pad

    def plan(self, path, thumb, background):
        from wildid.detections import SOURCE_BACKGROUND, RegionPlan

        box = foreground_box(thumb, background, self.pad) if thumb is not None else None
        return RegionPlan(None if box is None else (box,), SOURCE_BACKGROUND)


def folder_backgrounds(paths: Sequence, load) -> dict:
    """{folder: median background} for the folders of ``paths`` (a sample of each folder's files)."""
    from collections import defaultdict
    from pathlib import Path

    by_folder: dict = defaultdict(list)
    for path in paths:
        by_folder[Path(path).parent].append(Path(path))
    backgrounds = {}
    for folder, files in by_folder.items():
        files.sort(key=lambda p: p.name)
        thumbs = []
        for i in sample_indices(len(files)):
            try:
                thumbs.append(thumbnail(load(files[i])))
            except Exception:  # noqa: BLE001 - an unreadable frame just leaves the sample
                continue
        backgrounds[folder] = median_background(thumbs)
    return backgrounds


def with_background_crops(data, pad: float = CROP_PAD):
    """Labelled data (wildid.datasets) with each sample's crop set to its padded changed region.

    The background is the median of each image folder (a fixed camera: use one folder per
    camera, e.g. class/CAMERA/image.jpg or a CSV whose paths lie in camera folders).  A frame
    where nothing changed keeps the whole frame (no crop)."""
    from dataclasses import replace

    from wildid.datasets import LabelledData
    from wildid.detections import pixel_box
    from wildid.imaging import load_image
    from wildid.metadata import read_metadata

    def load(path):
        return load_image(path, draft_size=max(THUMB_SIZE) * 2)

    backgrounds = folder_backgrounds([s.path for s in data.samples], load)
    samples = []
    for sample in data.samples:
        background = backgrounds.get(sample.path.parent)
        box = None
        if background is not None:
            try:
                box = foreground_box(thumbnail(load(sample.path)), background, pad)
            except Exception:  # noqa: BLE001 - unreadable images are reported by the trainer
                box = None
        if box is None:
            samples.append(replace(sample, crop=None))
            continue
        meta = read_metadata(sample.path)
        samples.append(replace(sample, crop=pixel_box(box, meta.width, meta.height) if meta.width else None))
    return LabelledData(tuple(samples), data.classes, data.source, data.kind, data.group_column, data.skipped)
