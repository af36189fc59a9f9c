"""Generated patterned "individuals" for re-identification tests and benchmarks.

Each individual is a coat: a fur-coloured texture with its own spot pattern (positions,
sizes, darkness, rosettes or solid spots), fixed by ``identity``.  A *view* of it
(``view`` seed) is rotated, shifted, brightened or darkened and re-noised, as a second
camera-trap photo of the same lynx would be.  A new ``identity`` is a new animal.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageEnhance, ImageFilter

CANVAS = 192  # the coat is drawn larger than a view, so rotations never show corners


def _coat(identity: int) -> Image.Image:
    rng = np.random.default_rng(10_000 + identity)
    base = np.array([185, 145, 95], float) + rng.normal(0, 18, 3)
    fur = rng.normal(0, 9, (CANVAS, CANVAS, 1)) + rng.normal(0, 4, (CANVAS, CANVAS, 3))
    coat = Image.fromarray(np.clip(base + fur, 0, 255).astype(np.uint8), "RGB").filter(ImageFilter.GaussianBlur(0.8))
    draw = ImageDraw.Draw(coat)
    n_spots = int(rng.integers(18, 60))
    mean_radius = rng.uniform(4, 11)
    darkness = rng.uniform(0.15, 0.55)
    rosette = rng.random() < 0.5
    elongation = rng.uniform(1.0, 2.2)
    for _ in range(n_spots):
        x, y = rng.uniform(0, CANVAS, 2)
        r = max(2.0, rng.normal(mean_radius, mean_radius / 4))
        rx, ry = r * elongation, r
        colour = tuple(int(c * darkness) for c in base)
        box = [x - rx, y - ry, x + rx, y + ry]
        if rosette:
            draw.ellipse(box, outline=colour, width=max(2, int(r / 2.5)))
        else:
            draw.ellipse(box, fill=colour)
    return coat


_COATS: dict[int, Image.Image] = {}


def coat_view(identity: int, view: int = 0, size: int = 96, max_rotation: float = 25.0,
              brightness: tuple[float, float] = (0.7, 1.3), rotate: float | None = None,
              brighten: float | None = None) -> Image.Image:
    """One photo of individual ``identity``; ``view`` seeds rotation, shift, brightness, noise
    (view 0 is the plain coat).  ``rotate`` (degrees) / ``brighten`` (factor) fix those two."""
    if identity not in _COATS:
        _COATS[identity] = _coat(identity)
    rng = np.random.default_rng(1_000_003 * identity + view)
    img = _COATS[identity]
    if view:
        angle = rng.uniform(-max_rotation, max_rotation)
        factor = rng.uniform(*brightness)
        img = img.rotate(angle if rotate is None else rotate, resample=Image.BILINEAR)
        img = ImageEnhance.Brightness(img).enhance(factor if brighten is None else brighten)
    side = int(CANVAS * 0.62)
    dx, dy = (rng.integers(-12, 13, 2) if view else (0, 0))
    left = (CANVAS - side) // 2 + int(dx)
    top = (CANVAS - side) // 2 + int(dy)
    img = img.crop((left, top, left + side, top + side)).resize((size, size), Image.BILINEAR)
    if view:
        noisy = np.asarray(img, float) + rng.normal(0, 5, (size, size, 3))
        img = Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8), "RGB")
    return img


def write_individuals(root: Path, identities, views, size: int = 96, prefix: str = "lynx") -> Path:
    """An individual-labelled folder: ``root/<prefix>-<id>/view-<v>.jpg``."""
    root = Path(root)
    for identity in identities:
        folder = root / f"{prefix}-{identity:03d}"
        folder.mkdir(parents=True, exist_ok=True)
        for view in views:
            coat_view(identity, view, size).save(folder / f"view-{view:02d}.jpg", quality=92)
    return root


# --- a deterministic handcrafted embedding (tests' "known good" re-ID model) ------------------------
import torch  # noqa: E402
from torch import nn  # noqa: E402

HANDCRAFTED_SIZE = 96


class CoatFeatures(nn.Module):
    """Rotation- and brightness-invariant coat statistics: chromaticity, spot coverage, a spot-size
    granulometry (erosions at growing scales), rosette fill, and a histogram of intensity relative
    to the image mean.  Centred and scaled by constants fitted on other generated individuals."""

    def __init__(self, mean, std, center: torch.Tensor | None = None, scale: torch.Tensor | None = None):
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1))
        n = 22  # 3 chroma + coverage + 5 erosions + rosette fill + 12 histogram bins
        self.register_buffer("center", torch.zeros(n) if center is None else center)
        self.register_buffer("scale", torch.ones(n) if scale is None else scale)

    def raw(self, x: torch.Tensor) -> torch.Tensor:
        rgb = (x * self.std + self.mean).clamp(0, 1)
        total = rgb.sum(dim=(1, 2, 3)) + 1e-6
        chroma = rgb.sum(dim=(2, 3)) / total[:, None]
        intensity = nn.functional.avg_pool2d(rgb.mean(dim=1, keepdim=True), 2)  # half size: cheaper pooling
        rel = intensity / (intensity.mean(dim=(2, 3), keepdim=True) + 1e-3)
        dark = torch.sigmoid((0.72 - rel) * 25)
        feats = [chroma, dark.mean(dim=(1, 2, 3))[:, None]]
        for size in (3, 5, 7, 9, 11):
            eroded = -nn.functional.max_pool2d(-dark, size, 1, size // 2)
            feats.append(eroded.mean(dim=(1, 2, 3))[:, None])
        closed = -nn.functional.max_pool2d(-nn.functional.max_pool2d(dark, 5, 1, 2), 5, 1, 2)
        feats.append((closed - dark).mean(dim=(1, 2, 3))[:, None])
        centers = torch.linspace(0.2, 1.3, 12, device=x.device).view(1, 12, 1, 1)
        weights = torch.exp(-((rel - centers) ** 2) / (2 * 0.05 ** 2))
        weights = weights / (weights.sum(dim=1, keepdim=True) + 1e-6)
        feats.append(weights.mean(dim=(2, 3)))
        return torch.cat(feats, dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (self.raw(x) - self.center) / self.scale


def make_handcrafted_model(root: Path, name: str = "coat-handcrafted", fit_identities=range(500, 520), views=range(3)):
    """A TorchScript embedding model folder (card kind="embedding") loadable by the registry."""
    from wildid.reid import calibrate_threshold, embedding_card, l2_normalise
    from wildid.predictor import build_transform

    card = embedding_card(name, "test_resnet", input_size=HANDCRAFTED_SIZE,
                          title="Handcrafted coat features (test model)")
    card = card.replace(arch="handcrafted-coat", weights="model.torchscript",
                        provenance={"data": "generated coats", "command": "tests/reidgen.py"})
    module = CoatFeatures(card.mean, card.std).eval()
    transform = build_transform(card)
    with torch.inference_mode():
        batch = torch.stack([transform(coat_view(i, v, HANDCRAFTED_SIZE)) for i in fit_identities for v in views])
        feats = module.raw(batch).view(len(fit_identities), len(views), -1)
    center = feats.mean(dim=(0, 1))
    within = feats.std(dim=1).mean(dim=0)  # spread between views of the same individual
    module = CoatFeatures(card.mean, card.std, center, within.clamp_min(1e-4)).eval()
    with torch.inference_mode():
        embeddings = l2_normalise(module(batch).numpy())
    labels = [str(i) for i in fit_identities for _ in views]
    card = card.replace(threshold=round(calibrate_threshold(embeddings, labels), 4))
    folder = Path(root) / name
    folder.mkdir(parents=True, exist_ok=True)
    example = torch.zeros((1, 3, HANDCRAFTED_SIZE, HANDCRAFTED_SIZE))
    torch.jit.trace(module, example).save(str(folder / "model.torchscript"))
    card.save(folder)
    return card.replace(folder=folder)
