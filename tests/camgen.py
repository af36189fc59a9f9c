"""Generated fixed-camera folders: a biologist's first-day folder of near-infrared frames.

Each camera folder has its own fixed scene (NIR-like grey: a gradient, blotches, a few twigs);
a frame is either empty (sensor noise and a flash-like brightness change only) or shows one
animal: a "vole" (dark, round body with a thin tail) or a "stoat" (pale, slim body with dark
spots and a dark tail tip), large enough that a tiny model tells them apart.  Animals come in
short bursts of the same species, as at a real camera.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

SPECIES = ("vole", "stoat")
EMPTY = "empty"


def scene(rng: np.random.Generator, size: tuple[int, int]) -> np.ndarray:
    w, h = size
    yy, xx = np.mgrid[0:h, 0:w]
    base = 55 + 60 * xx / w * rng.uniform(0.6, 1.4) + 18 * np.sin(yy / rng.uniform(10, 25))
    for _ in range(25):
        cx, cy, r = rng.integers(0, w), rng.integers(0, h), rng.integers(5, max(6, w // 10))
        base += rng.uniform(-25, 25) * ((xx - cx) ** 2 + (yy - cy) ** 2 < r * r)
    for _ in range(4):
        angle, offset = rng.uniform(0, np.pi), rng.uniform(-w, w)
        base += 18 * (np.abs(np.cos(angle) * xx + np.sin(angle) * yy - offset) < 2)
    return base


def draw_animal(pixels: np.ndarray, kind: str, rng: np.random.Generator, small: bool = False) -> None:
    """Paint one animal into ``pixels`` (in place), 30-45% of the frame wide (``small``: 8-12%,
    an animal far from the camera, which the empty score can miss)."""
    h, w = pixels.shape
    width = int(rng.uniform(0.08, 0.12) * w) if small else int(rng.uniform(0.30, 0.45) * w)
    height = int(width * (0.6 if kind == "vole" else 0.4))
    x0 = int(rng.integers(5, w - width - 5))
    y0 = int(rng.integers(5, h - height - 5))
    yy, xx = np.mgrid[0:height, 0:width].astype(float)
    u, v = (xx + 0.5) / width * 2 - 1, (yy + 0.5) / height * 2 - 1
    if kind == "vole":
        body = (u / 0.75 + 0.25) ** 2 + v ** 2 < 1
        tail = (u > 0.45) & (np.abs(v - 0.3 * (u - 0.45)) < 0.1)
        mask, grey = body | tail, np.full(u.shape, 22.0) + 8 * np.sin(xx / 2.5)
    else:
        mask = (u / 0.9) ** 2 + (v / 0.6) ** 2 < 1
        grey = np.full(u.shape, 215.0)
        for _ in range(6):
            cx, cy = rng.uniform(-0.7, 0.7), rng.uniform(-0.4, 0.4)
            grey[(u - cx) ** 2 + (v - cy) ** 2 < 0.03] = 60
        grey[u > 0.75] = 30
    if rng.random() < 0.5:
        mask, grey = mask[:, ::-1], grey[:, ::-1]
    region = pixels[y0:y0 + height, x0:x0 + width]
    region[mask] = grey[mask] + rng.normal(0, 5, int(mask.sum()))


def fixed_camera_folder(root: Path, cameras: int = 3, frames: int = 24, empty_share: float = 0.5,
                        size: tuple[int, int] = (320, 240), seed: int = 0, small_share: float = 0.0) -> dict[str, str]:
    """Write ``root/camNN/NNNN.jpg`` frames; returns {relpath: true label} (vole, stoat or empty).

    Within each camera, frames alternate between bursts of empties and bursts of one species
    (2-4 frames each); ``empty_share`` of the bursts are empty, ``small_share`` of the animal
    frames show the animal small and far away."""
    rng = np.random.default_rng(seed)
    truth: dict[str, str] = {}
    for cam in range(cameras):
        base = scene(rng, size)
        index = 0
        species_turn = cam
        while index < frames:
            burst = int(rng.integers(2, 5))
            if rng.random() < empty_share:
                label = EMPTY
            else:
                label = SPECIES[species_turn % len(SPECIES)]
                species_turn += 1
            for _ in range(min(burst, frames - index)):
                pixels = base + rng.uniform(-10, 10) + rng.normal(0, 5, base.shape)
                if label != EMPTY:
                    draw_animal(pixels, label, rng, small=bool(rng.random() < small_share))
                rel = f"cam{cam + 1:02d}/{index:04d}.jpg"
                path = root / rel
                path.parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), "L").convert("RGB").save(path, quality=90)
                truth[rel] = label
                index += 1
    return truth
