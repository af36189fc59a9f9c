"""Why did the model say that?  Grad-CAM maps, first-layer filters, activation maps.

Grad-CAM (Selvaraju et al. 2017): weight each channel of a late feature map by the mean
gradient of the class score with respect to it, sum, keep the positive part.

- CNNs (timm or torchvision): the last top-level module whose output is still a spatial
  map (timm ResNet ``layer4``, EfficientNet ``bn2``, torchvision ``features``).
- ViTs: the tokens entering the last block's attention (``blocks[-1].norm1``), reshaped to
  the patch grid.  The final tokens would not do: with class-token pooling only the class
  token reaches the head, so the patch tokens there get no gradient at all.

Written with forward hooks by hand rather than with the ``grad-cam`` package: the app
shares one cached model between all sessions, and a hook that records every forward pass
(as that package's does) would mix in other sessions' images.  Our hooks record only the
calling thread's pass, gradients come from ``torch.autograd.grad`` (nothing accumulates in
the shared parameters' ``.grad``), and the map is placed back on the original image through
the card's resize/centre-crop geometry, which the package cannot know.
"""

from __future__ import annotations

import math
import threading
import weakref
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator

import numpy as np
import torch
from PIL import Image
from torch import nn

from wildid.cards import ModelCard
from wildid.errors import WildidError
from wildid.imaging import to_channel_mode


@dataclass(frozen=True)
class CamResult:
    heatmap: np.ndarray  # (height, width) of the image, float32 in [0, 1]
    class_index: int
    label: str
    layer: str
    score: float  # the class probability the map explains


# --- layers ---------------------------------------------------------------------------
_LAYER_CACHE: "weakref.WeakKeyDictionary[nn.Module, dict]" = weakref.WeakKeyDictionary()
_CACHE_LOCK = threading.Lock()


@contextmanager
def _capture(model: nn.Module, names: list[str]) -> Iterator[dict[str, torch.Tensor]]:
    """Outputs of the named sub-modules during this thread's forward passes only."""
    owner = threading.get_ident()
    captured: dict[str, torch.Tensor] = {}
    handles = []

    def make_hook(name: str):
        def hook(_module, _inputs, output):
            if threading.get_ident() == owner:
                captured[name] = output[0] if isinstance(output, (tuple, list)) else output

        return hook

    for name in names:
        handles.append(model.get_submodule(name).register_forward_hook(make_hook(name)))
    try:
        yield captured
    finally:
        for handle in handles:
            handle.remove()


def _is_token_model(model: nn.Module) -> bool:
    blocks = getattr(model, "blocks", None)
    return hasattr(model, "patch_embed") and isinstance(blocks, nn.Sequential) and len(blocks) > 0


def _probe(model: nn.Module, input_size: tuple[int, int, int]) -> dict:
    """Which modules give spatial maps (run once per model on a blank input, cached)."""
    with _CACHE_LOCK:
        cached = _LAYER_CACHE.get(model)
    if cached is not None and cached["input_size"] == tuple(input_size):
        return cached
    candidates = [name for name, _ in model.named_children()]
    feature_modules = [info["module"] for info in getattr(model, "feature_info", []) or [] if isinstance(info, dict) and "module" in info]
    names = list(dict.fromkeys(candidates + feature_modules))
    device = next(model.parameters()).device
    with torch.inference_mode(), _capture(model, names) as outputs:
        model(torch.zeros((1, *input_size), device=device))
    spatial = [name for name in candidates if name in outputs and outputs[name].ndim == 4 and min(outputs[name].shape[-2:]) > 1]
    if _is_token_model(model):
        cam_layer = f"blocks.{len(model.blocks) - 1}.norm1"
        try:
            model.get_submodule(cam_layer)
        except AttributeError:
            cam_layer = f"blocks.{len(model.blocks) - 1}"
        layers = [f"blocks.{i}" for i in range(len(model.blocks))]
        if "patch_embed" in outputs:
            layers = ["patch_embed", *layers]
    else:
        if not spatial:
            raise WildidError("this network has no spatial feature map to explain (Grad-CAM needs a CNN or a ViT)")
        cam_layer = spatial[-1]
        layers = [name for name in feature_modules if name in outputs and outputs[name].ndim == 4] or spatial
    result = {"input_size": tuple(input_size), "cam_layer": cam_layer, "layers": layers}
    with _CACHE_LOCK:
        _LAYER_CACHE[model] = result
    return result


def cam_layer(model: nn.Module, input_size: tuple[int, int, int] = (3, 224, 224)) -> str:
    """Name of the module whose output Grad-CAM explains."""
    return _probe(model, input_size)["cam_layer"]


def layer_choices(model: nn.Module, input_size: tuple[int, int, int] = (3, 224, 224)) -> list[str]:
    """Layers worth showing activation maps for, shallow to deep (timm feature stages)."""
    return list(_probe(model, input_size)["layers"])


def _as_maps(model: nn.Module, output: torch.Tensor) -> torch.Tensor:
    """A layer's output as (B, C, H, W): token sequences are reshaped to the patch grid."""
    if output.ndim == 4:
        return output
    if output.ndim != 3:
        raise WildidError(f"cannot draw a map from a layer output of shape {tuple(output.shape)}")
    tokens = output.shape[1]
    grid = getattr(getattr(model, "patch_embed", None), "grid_size", None)
    if grid is not None and tokens >= grid[0] * grid[1]:
        height, width = int(grid[0]), int(grid[1])
    else:
        side = int(math.isqrt(tokens))
        height = width = side
    prefix = tokens - height * width
    if prefix < 0 or height * width == 0:
        raise WildidError(f"cannot lay {tokens} tokens out on a patch grid")
    patches = output[:, prefix:, :]
    return patches.transpose(1, 2).reshape(output.shape[0], output.shape[2], height, width)


def _normalise(array: np.ndarray) -> np.ndarray:
    array = np.nan_to_num(array.astype(np.float32))
    low, high = float(array.min()), float(array.max())
    if high - low <= 1e-12:
        return np.zeros_like(array, dtype=np.float32)
    return ((array - low) / (high - low)).astype(np.float32)


def _resize_map(array: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Bilinear resize of a float map to (width, height)."""
    import cv2

    width, height = size
    return cv2.resize(array.astype(np.float32), (max(1, width), max(1, height)), interpolation=cv2.INTER_LINEAR)


# --- Grad-CAM -----------------------------------------------------------------------------
def grad_cam_tensor(model: nn.Module, batch: torch.Tensor, class_index: int | None = None, layer: str | None = None) -> tuple[np.ndarray, int, float, str]:
    """Grad-CAM over the model input: ((H, W) map in [0, 1], class index, probability, layer).

    ``batch`` is one preprocessed image (1, C, H, W).  ``class_index`` None explains the
    top-1 class.  Thread-safe on a shared model; the model's parameters are not touched.
    """
    if batch.ndim != 4 or batch.shape[0] != 1:
        raise ValueError(f"grad_cam_tensor wants one image (1, C, H, W), got {tuple(batch.shape)}")
    layer = layer or cam_layer(model, tuple(batch.shape[1:]))
    device = next(model.parameters()).device
    with torch.inference_mode(False), torch.enable_grad():
        # The input needs a gradient so the graph exists even if all parameters are frozen.
        inputs = batch.detach().clone().to(device, dtype=torch.float32).requires_grad_(True)
        with _capture(model, [layer]) as outputs:
            logits = model(inputs)
        if isinstance(logits, (tuple, list)):
            logits = logits[0]
        activation = outputs.get(layer)
        if activation is None:
            raise WildidError(f"layer {layer!r} did not run in the forward pass")
        probs = torch.softmax(logits.detach().float(), dim=1)[0]
        index = int(probs.argmax()) if class_index is None else int(class_index)
        (gradient,) = torch.autograd.grad(logits[0, index], activation, allow_unused=False)
    maps = _as_maps(model, activation.detach())
    grads = _as_maps(model, gradient.detach())
    weights = grads.mean(dim=(2, 3), keepdim=True)
    cam = torch.relu((weights * maps).sum(dim=1))[0].float().cpu().numpy()
    height, width = batch.shape[-2:]
    cam = _normalise(_resize_map(_normalise(cam), (width, height)))
    return cam, index, float(probs[index]), layer


def crop_geometry(image_size: tuple[int, int], card: ModelCard) -> tuple[float, float, float, float]:
    """The (left, top, width, height) region of the original image the model sees.

    Mirrors timm's eval transform: resize so the image covers input_size / crop_pct,
    then take the centre crop of input_size.
    """
    width, height = image_size
    target_h, target_w = card.input_size[1:]
    scale_h, scale_w = math.floor(target_h / card.crop_pct), math.floor(target_w / card.crop_pct)
    if scale_h == scale_w:
        scale = scale_h / min(width, height)
    else:
        scale = max(scale_h / height, scale_w / width)
    crop_w, crop_h = min(width, target_w / scale), min(height, target_h / scale)
    return (width - crop_w) / 2, (height - crop_h) / 2, crop_w, crop_h


def cam_to_image(cam: np.ndarray, image_size: tuple[int, int], card: ModelCard) -> np.ndarray:
    """Place an input-resolution map on the original image; outside the crop the model saw nothing (0)."""
    width, height = image_size
    left, top, crop_w, crop_h = crop_geometry(image_size, card)
    out = np.zeros((height, width), dtype=np.float32)
    x0, y0 = int(round(left)), int(round(top))
    x1, y1 = min(width, int(round(left + crop_w))), min(height, int(round(top + crop_h)))
    if x1 > x0 and y1 > y0:
        out[y0:y1, x0:x1] = _resize_map(cam, (x1 - x0, y1 - y0))
    return np.clip(out, 0.0, 1.0)


def _torch_model(predictor) -> nn.Module:
    model = getattr(predictor, "model", None)
    if not isinstance(model, nn.Module):
        raise WildidError("explanations need the torch back end (this model runs on ONNX Runtime)")
    return model


def grad_cam(predictor, image: Image.Image, target: int | str | None = None) -> CamResult:
    """Grad-CAM of ``image`` (an RGB PIL image) for the predictor's top-1 or a given class.

    The heatmap has the image's size, values in [0, 1].
    """
    model = _torch_model(predictor)
    card: ModelCard = predictor.card
    if isinstance(target, str):
        if target not in card.classes:
            raise WildidError(f"class {target!r} is not one of this model's classes")
        target = card.classes.index(target)
    batch = predictor.preprocess(image).unsqueeze(0)
    cam, index, score, layer = grad_cam_tensor(model, batch, target)
    heatmap = cam_to_image(cam, image.size, card)
    return CamResult(heatmap=heatmap, class_index=index, label=card.classes[index], layer=layer, score=score)


def colorize(values: np.ndarray, colormap: str = "jet") -> np.ndarray:
    """(H, W) floats in [0, 1] -> (H, W, 3) uint8 RGB."""
    import cv2

    codes = {"jet": cv2.COLORMAP_JET, "viridis": cv2.COLORMAP_VIRIDIS, "inferno": cv2.COLORMAP_INFERNO}
    scaled = (np.clip(values, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    return cv2.cvtColor(cv2.applyColorMap(scaled, codes[colormap]), cv2.COLOR_BGR2RGB)


def overlay(image: Image.Image, heatmap: np.ndarray, alpha: float = 0.45) -> Image.Image:
    """The heatmap blended over the image (same size)."""
    base = np.asarray(image.convert("RGB"), dtype=np.float32)
    if heatmap.shape != base.shape[:2]:
        heatmap = _resize_map(heatmap, (base.shape[1], base.shape[0]))
    colour = colorize(heatmap).astype(np.float32)
    # Weight the colour by the map too, so cold regions keep the photo visible.
    weight = alpha * (0.35 + 0.65 * np.clip(heatmap, 0, 1))[..., None]
    return Image.fromarray(np.clip(base * (1 - weight) + colour * weight, 0, 255).astype(np.uint8))


# --- workshop: filters and activations ----------------------------------------------------
def first_conv(model: nn.Module) -> tuple[str, nn.Conv2d]:
    for name, module in model.named_modules():
        if isinstance(module, nn.Conv2d):
            return name, module
    raise WildidError("this network has no convolution to show filters for")


def tile(images: list[np.ndarray], columns: int, cell: int, gap: int = 2, background: int = 255) -> Image.Image:
    """Lay (h, w, 3) uint8 tiles out on a grid, each scaled to ``cell`` px (nearest)."""
    if not images:
        raise ValueError("nothing to tile")
    columns = max(1, min(columns, len(images)))
    rows = math.ceil(len(images) / columns)
    sheet = Image.new("RGB", (columns * (cell + gap) + gap, rows * (cell + gap) + gap), (background,) * 3)
    for i, array in enumerate(images):
        tile_image = Image.fromarray(array).resize((cell, cell), Image.NEAREST)
        row, col = divmod(i, columns)
        sheet.paste(tile_image, (gap + col * (cell + gap), gap + row * (cell + gap)))
    return sheet


def first_layer_filters(model: nn.Module, max_filters: int = 64, cell: int = 40) -> tuple[Image.Image, str]:
    """The first convolution's kernels as small RGB pictures, and a one-line description."""
    name, conv = first_conv(model)
    weights = conv.weight.detach().float().cpu().numpy()  # (out, in, kh, kw)
    shown = weights[:max_filters]
    tiles = []
    for kernel in shown:
        rgb = kernel[:3] if kernel.shape[0] >= 3 else np.repeat(kernel.mean(axis=0, keepdims=True), 3, axis=0)
        rgb = np.transpose(rgb, (1, 2, 0))
        # Symmetric scaling keeps 0 at mid-grey: light = excites, dark = inhibits.
        bound = float(np.abs(rgb).max()) or 1.0
        tiles.append(((rgb / bound) * 127.5 + 128.0).clip(0, 255).astype(np.uint8))
    sheet = tile(tiles, columns=8, cell=cell)
    description = (
        f"{name}: {weights.shape[0]} filters of {weights.shape[2]}x{weights.shape[3]} px over "
        f"{weights.shape[1]} channels (showing {len(shown)})"
    )
    return sheet, description


def activation_maps(model: nn.Module, batch: torch.Tensor, layer: str, max_maps: int = 16, cell: int = 96) -> tuple[Image.Image, str]:
    """The most active channels of ``layer`` for one preprocessed image, as a grid picture."""
    if batch.ndim == 3:
        batch = batch.unsqueeze(0)
    device = next(model.parameters()).device
    with torch.inference_mode(), _capture(model, [layer]) as outputs:
        model(batch[:1].to(device, dtype=torch.float32))
    if layer not in outputs:
        raise WildidError(f"layer {layer!r} did not run in the forward pass")
    maps = _as_maps(model, outputs[layer].float())[0].cpu().numpy()  # (C, H, W)
    strength = maps.reshape(maps.shape[0], -1).mean(axis=1)
    order = np.argsort(-strength, kind="stable")[:max_maps]
    tiles = [colorize(_normalise(maps[i]), "viridis") for i in order]
    sheet = tile(tiles, columns=4, cell=cell)
    description = f"{layer}: {maps.shape[0]} channels at {maps.shape[2]}x{maps.shape[1]}; the {len(order)} most active shown"
    return sheet, description


def preprocess_for(predictor, image: Image.Image) -> torch.Tensor:
    """The (1, C, H, W) tensor the predictor would see for ``image``."""
    return predictor.preprocess(to_channel_mode(image, predictor.card.channel_mode)).unsqueeze(0)
