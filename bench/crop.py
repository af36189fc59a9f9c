"""Benchmark: crops without a detector (--crop background) on generated fixed-camera sequences.

    .venv/bin/python bench/crop.py                 # 10 cameras x 30 frames, 640x480 NIR-like grey
    .venv/bin/python bench/crop.py --cameras 6 --frames 18    # a quicker run

Each camera has its own fixed textured scene (gradient, blotches, stripes: a tunnel or a trail
in near-infrared grey); each frame shows one animal sprite of three classes (long dark body
with a thin tail; round, banded body; pale body with spots) at a random place and size
(9-17% of the frame width), with sensor noise and a flash-like brightness change, so the
animal fills 1-3% of the frame.  One run prints:

1. how well the background crop finds the animal: IoU of the changed region (before padding)
   with the true box, how often the padded crop holds >= 90% of the animal, how often nothing
   was found (whole frame);
2. grouped-CV accuracy (folds grouped by camera, so no camera is on both sides) of a linear
   probe on the packaged EfficientNet-Lite0 ImageNet features (wildid.train, mode linear):
   full frame vs background crop, with the true box (padded like the background crop) as
   the upper bound, and the background crop at other paddings (the default CROP_PAD is the
   one chosen here).

Measured 2026-12-03 on 2 CPU cores shared with other jobs, default arguments (300 frames):
  background crop finds the animal: mean IoU 0.663, median 0.800, IoU >= 0.5 in 80.7%; padded
  crop holds >= 90% of the animal in 97.7%; nothing found 18.3% (those frames stay whole)
  grouped 5-fold accuracy: full frame 0.623 +- 0.087; background crop (pad 0.25) 0.950 +- 0.018;
  pad 0.1 0.953 +- 0.029; pad 0.5 0.933 +- 0.015; true box (pad 0.25) 0.997 +- 0.007.
  Pads 0.1 and 0.25 tie within the fold spread; 0.25 is kept because its crop holds the whole
  animal more often.
"""

from __future__ import annotations

import argparse
import csv
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

CLASSES = ("vole", "lemming", "stoat")
SIZE = (640, 480)


def scene(rng: np.random.Generator) -> np.ndarray:
    """A fixed camera view in NIR-like grey: gradient, blotches and a few stripes (litter, twigs)."""
    w, h = SIZE
    yy, xx = np.mgrid[0:h, 0:w]
    base = 50 + 70 * xx / w * rng.uniform(0.5, 1.5) + 25 * np.sin(yy / rng.uniform(12, 30))
    for _ in range(40):
        cx, cy, r = rng.integers(0, w), rng.integers(0, h), rng.integers(8, 60)
        base += rng.uniform(-30, 30) * ((xx - cx) ** 2 + (yy - cy) ** 2 < r * r)
    for _ in range(6):
        angle, offset = rng.uniform(0, np.pi), rng.uniform(-w, w)
        base += 20 * (np.abs(np.cos(angle) * xx + np.sin(angle) * yy - offset) < 3)
    return base


def sprite(kind: str, width: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(grey values, alpha mask) of an animal of ``kind``, ``width`` pixels long."""
    height = int(width * (0.45 if kind == "stoat" else 0.7 if kind == "lemming" else 0.55))
    yy, xx = np.mgrid[0:height, 0:width].astype(float)
    u, v = (xx + 0.5) / width * 2 - 1, (yy + 0.5) / height * 2 - 1
    if kind == "vole":  # dark, long body, thin tail to the right
        body = (u / 0.75 + 0.25) ** 2 + v ** 2 < 1
        tail = (u > 0.45) & (np.abs(v - 0.3 * (u - 0.45)) < 0.08)
        mask = body | tail
        grey = np.full(u.shape, 25.0) + 10 * np.sin(xx / 2.5)
    elif kind == "lemming":  # round, light with dark bands across the back
        mask = u ** 2 + (v / 0.95) ** 2 < 1
        grey = 150 + 90 * (np.sin(u * 9) > 0.2) * -1.0
    else:  # stoat: slim and pale with dark spots, dark tail tip
        mask = (u / 0.9) ** 2 + (v / 0.6) ** 2 < 1
        grey = np.full(u.shape, 205.0)
        for _ in range(6):
            cx, cy = rng.uniform(-0.7, 0.7), rng.uniform(-0.4, 0.4)
            grey[(u - cx) ** 2 + (v - cy) ** 2 < 0.02] = 60
        grey[u > 0.75] = 30
    if rng.random() < 0.5:
        grey, mask = grey[:, ::-1], mask[:, ::-1]
    return grey, mask


def make_sequences(folder: Path, cameras: int, frames: int, seed: int = 0) -> tuple[Path, dict[str, tuple]]:
    """JPEG frames under folder/camNN/, a labels CSV (path, label, camera) and the true boxes."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    rows, truth = [], {}
    for cam in range(cameras):
        base = scene(rng)
        for i in range(frames):
            kind = CLASSES[(i + cam) % len(CLASSES)]
            width = int(rng.uniform(0.09, 0.17) * SIZE[0])
            grey, mask = sprite(kind, width, rng)
            h, w = mask.shape
            x, y = int(rng.integers(10, SIZE[0] - w - 10)), int(rng.integers(10, SIZE[1] - h - 10))
            pixels = base + rng.uniform(-12, 12) + rng.normal(0, 6, base.shape)
            region = pixels[y:y + h, x:x + w]
            region[mask] = grey[mask] + rng.normal(0, 6, int(mask.sum()))
            rel = f"cam{cam:02d}/{i:04d}.jpg"
            path = folder / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), "L").convert("RGB").save(path, quality=90)
            ys, xs = np.nonzero(mask)
            truth[str(path)] = ((x + xs.min()) / SIZE[0], (y + ys.min()) / SIZE[1],
                                (xs.max() - xs.min() + 1) / SIZE[0], (ys.max() - ys.min() + 1) / SIZE[1])
            rows.append({"path": rel, "label": kind, "camera": f"cam{cam:02d}"})
    labels = folder / "labels.csv"
    with labels.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["path", "label", "camera"])
        writer.writeheader()
        writer.writerows(rows)
    return labels, truth


def iou(a: tuple, b: tuple) -> float:
    ax, ay, aw, ah = a
    bx, by, bw, bh = b
    ix = max(0.0, min(ax + aw, bx + bw) - max(ax, bx))
    iy = max(0.0, min(ay + ah, by + bh) - max(ay, by))
    inter = ix * iy
    return inter / (aw * ah + bw * bh - inter)


def covered(crop: tuple, box: tuple) -> float:
    """Share of ``box`` inside ``crop``."""
    cx, cy, cw, ch = crop
    bx, by, bw, bh = box
    ix = max(0.0, min(cx + cw, bx + bw) - max(cx, bx))
    iy = max(0.0, min(cy + ch, by + bh) - max(cy, by))
    return ix * iy / (bw * bh)


def crop_quality(data, truth: dict[str, tuple]) -> dict[str, float]:
    from wildid import background
    from wildid.imaging import load_image

    def load(path):
        return load_image(path, draft_size=max(background.THUMB_SIZE) * 2)

    backgrounds = background.folder_backgrounds([s.path for s in data.samples], load)
    ious, coverage, missed = [], [], 0
    for sample in data.samples:
        thumb = background.thumbnail(load(sample.path))
        region = background.foreground_region(thumb, backgrounds[sample.path.parent])
        true_box = truth[str(sample.path)]
        if region is None:
            missed += 1
            ious.append(0.0)
            coverage.append(1.0)  # the whole frame holds the animal, at full-frame resolution
            continue
        ious.append(iou(region, true_box))
        coverage.append(covered(background.foreground_box(thumb, backgrounds[sample.path.parent]), true_box))
    ious_a = np.array(ious)
    return {"mean_iou": float(ious_a.mean()), "median_iou": float(np.median(ious_a)),
            "iou_over_0.5": float((ious_a >= 0.5).mean()), "crop_holds_90pct": float((np.array(coverage) >= 0.9).mean()),
            "nothing_found": missed / len(ious)}


def with_true_boxes(data, truth: dict[str, tuple], pad: float):
    from dataclasses import replace

    from wildid.datasets import LabelledData
    from wildid.detections import pad_box, pixel_box

    samples = tuple(replace(s, crop=pixel_box(pad_box(truth[str(s.path)], pad), *SIZE)) for s in data.samples)
    return LabelledData(samples, data.classes, data.source, data.kind, data.group_column, data.skipped)


def grouped_accuracy(data, folds: int) -> tuple[float, float, float]:
    from wildid.train import TrainConfig, train

    started = time.perf_counter()
    result = train(data, TrainConfig(arch="efficientnet_lite0", mode="linear", folds=folds, nir=True, cache=False))
    return result.metrics["accuracy"], result.metrics["accuracy_std"], time.perf_counter() - started


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cameras", type=int, default=10)
    parser.add_argument("--frames", type=int, default=30, help="frames per camera")
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--pads", type=float, nargs="*", default=[0.1, 0.5], help="other paddings to compare")
    args = parser.parse_args(argv)

    from wildid import background
    from wildid.datasets import load_labelled

    with tempfile.TemporaryDirectory(prefix="wildid-bench-crop-") as tmp:
        os.environ.setdefault("WILDID_CACHE", str(Path(tmp) / "cache"))
        labels, truth = make_sequences(Path(tmp) / "frames", args.cameras, args.frames)
        data = load_labelled(labels, groups="camera")
        print(f"{len(data.samples)} frames, {args.cameras} cameras, {len(CLASSES)} classes, "
              f"{args.folds}-fold CV grouped by camera; linear probe on EfficientNet-Lite0 (package weights)")
        started = time.perf_counter()
        quality = crop_quality(data, truth)
        print(f"background crop finds the animal: mean IoU {quality['mean_iou']:.3f}, median {quality['median_iou']:.3f}, "
              f"IoU >= 0.5 in {quality['iou_over_0.5']:.1%}; padded crop holds >= 90% of the animal in "
              f"{quality['crop_holds_90pct']:.1%}; nothing found {quality['nothing_found']:.1%} "
              f"({time.perf_counter() - started:.1f} s)")
        variants = [("full frame", data),
                    (f"background crop (pad {background.CROP_PAD})", background.with_background_crops(data))]
        variants += [(f"background crop (pad {pad})", background.with_background_crops(data, pad)) for pad in args.pads]
        variants.append((f"true box (pad {background.CROP_PAD}, upper bound)", with_true_boxes(data, truth, background.CROP_PAD)))
        print(f"{'variant':44s} {'accuracy':>9s} {'+-':>6s} {'seconds':>8s}")
        for name, variant in variants:
            accuracy, spread, seconds = grouped_accuracy(variant, args.folds)
            print(f"{name:44s} {accuracy:9.3f} {spread:6.3f} {seconds:8.1f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
