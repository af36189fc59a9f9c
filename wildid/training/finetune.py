"""Fine-tuning the last blocks of a backbone together with the head.

``finetune_model`` trains on augmented images (every epoch decodes and runs the whole network);
``progressive`` mode unfreezes one more block every ``step`` epochs.
"""

from __future__ import annotations

import copy
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import nn

from wildid.cards import ModelCard
from wildid.datasets import LabelledData
from wildid.errors import WildidError
from wildid.training.features import load_sample, prefetch
from wildid.training.head import classifier_layer, nll
from wildid.training.progress import Progress, ProgressFn, StopFlag, check_stop, with_val


def backbone_units(model: nn.Module) -> list[nn.Module]:
    """The backbone as blocks from input to output (the head excluded), for partial unfreezing."""
    if all(hasattr(model, f"layer{i}") for i in range(1, 5)):  # timm / torchvision ResNet
        return [getattr(model, f"layer{i}") for i in range(1, 5)]
    blocks = getattr(model, "blocks", None)
    if isinstance(blocks, nn.Sequential):
        units: list[nn.Module] = list(blocks)
        tail = [getattr(model, n) for n in ("conv_head", "bn2", "norm", "fc_norm") if isinstance(getattr(model, n, None), nn.Module)]
        tail = [m for m in tail if any(True for _ in m.parameters())]
        if tail:
            units.append(nn.ModuleList(tail))
        return units
    head_ids = {id(m) for m in classifier_layer(model).modules()}
    return [m for m in model.children() if id(m) not in head_ids and any(True for _ in m.parameters())]


def set_trainable(model: nn.Module, n_units: int) -> int:
    """Freeze everything, then unfreeze the head and the last ``n_units`` backbone blocks."""
    for p in model.parameters():
        p.requires_grad_(False)
    units = backbone_units(model)
    n_units = max(0, min(n_units, len(units)))
    for unit in units[len(units) - n_units:]:
        for p in unit.parameters():
            p.requires_grad_(True)
    for p in classifier_layer(model).parameters():
        p.requires_grad_(True)
    return n_units


def train_mode_for_trainable(model: nn.Module) -> None:
    """Train mode only where parameters are trained: frozen BatchNorm keeps its statistics."""
    model.eval()
    for module in model.modules():
        own = list(module.parameters(recurse=False))
        if own and all(p.requires_grad for p in own):
            module.train()
    for module in model.modules():
        if isinstance(module, nn.Dropout):
            module.train()


def train_transform(card: ModelCard, nir: bool):
    """Augmentations of the track study: resize, +-30 degree rotations, flips, colour jitter (not for NIR)."""
    from torchvision import transforms as T
    from torchvision.transforms import InterpolationMode

    size = card.input_size[1:]
    interpolation = InterpolationMode(card.interpolation if card.interpolation != "lanczos" else "lanczos")
    steps = [
        T.RandomRotation(30, interpolation=InterpolationMode.BILINEAR),
        T.RandomResizedCrop(size, scale=(0.6, 1.0), interpolation=interpolation),
        T.RandomHorizontalFlip(),
    ]
    if not nir:
        steps.append(T.ColorJitter(brightness=0.3, contrast=0.3, saturation=0.3, hue=0.03))
    steps += [T.ToTensor(), T.Normalize(card.mean, card.std)]
    return T.Compose(steps)


def preload_images(card: ModelCard, data: LabelledData, workers: int, progress: ProgressFn | None, stop: StopFlag):
    """Decode every image once at working size (for augmented epochs); unreadable ones are reported."""
    from wildid.predictor import draft_size_for

    side = draft_size_for(card)
    images: dict[int, Image.Image] = {}
    bad: dict[int, str] = {}

    def prepare(index: int) -> Image.Image:
        img = load_sample(data.samples[index], card.channel_mode, side)
        scale = side / min(img.size)
        if scale < 1:
            img = img.resize((max(1, round(img.width * scale)), max(1, round(img.height * scale))), Image.BILINEAR)
        return img

    total = len(data.samples)
    for n, (index, img) in enumerate(prefetch(range(total), prepare, workers), start=1):
        check_stop(stop, "training stopped while reading images")
        if isinstance(img, Exception):
            bad[index] = str(img) if isinstance(img, WildidError) else f"{type(img).__name__}: {img}"
        else:
            images[index] = img
        if progress and (n % 16 == 0 or n == total):
            progress(Progress("features", done=n, total=total, message="reading images"))
    return [images[i] for i in range(total) if i in images], bad


def finetune_model(
    initial: nn.Module,
    card: ModelCard,
    images: list[Image.Image],
    y: np.ndarray,
    config: Any,
    fold: int,
    folds: int,
    val: tuple[list[Image.Image], np.ndarray] | None,
    progress: ProgressFn | None,
    stop: StopFlag,
) -> nn.Module:
    from wildid.predictor import build_transform

    torch.manual_seed(config.seed + fold)
    model = copy.deepcopy(initial)
    augment = train_transform(card, config.nir)
    evaluate = build_transform(card)
    n_units = len(backbone_units(model))
    loss_fn = nn.CrossEntropyLoss()
    epochs = config.n_epochs
    lr = config.learning_rate
    head_params = list(classifier_layer(model).parameters())
    head_ids = {id(p) for p in head_params}
    backbone_params = [p for p in model.parameters() if id(p) not in head_ids]
    optimizer = torch.optim.AdamW(
        [{"params": head_params, "lr": lr}, {"params": backbone_params, "lr": lr * 0.1}],
        weight_decay=config.weight_decay,
    )
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=epochs)
    rng = np.random.default_rng(config.seed + fold)
    for epoch in range(1, epochs + 1):
        if config.mode == "progressive":
            trained = set_trainable(model, (epoch - 1) // max(1, config.step))
        else:
            trained = set_trainable(model, config.unfreeze)
        train_mode_for_trainable(model)
        order = rng.permutation(len(images))
        total_loss, correct = 0.0, 0
        for start in range(0, len(order), config.batch_size):
            check_stop(stop)
            idx = order[start:start + config.batch_size]
            batch = torch.stack([augment(images[i]) for i in idx])
            target = torch.from_numpy(y[idx]).long()
            logits = model(batch)
            loss = loss_fn(logits, target)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            total_loss += loss.item() * len(idx)
            correct += int((logits.argmax(1) == target).sum())
        scheduler.step()
        report = Progress("epoch", fold, folds, epoch, epochs, total_loss / len(images), correct / len(images),
                          message=f"{trained}/{n_units} blocks trained")
        if val is not None and len(val[0]):
            logits = predict_logits(model, evaluate, val[0], config.batch_size)
            report = with_val(report, nll(logits, val[1]), float((logits.argmax(1) == val[1]).mean()))
        if progress:
            progress(report)
    return model.eval()


def predict_logits(model: nn.Module, transform, images: list[Image.Image], batch_size: int) -> np.ndarray:
    model.eval()
    out = []
    with torch.inference_mode():
        for start in range(0, len(images), batch_size):
            batch = torch.stack([transform(img) for img in images[start:start + batch_size]])
            out.append(model(batch).float().numpy())
    return np.concatenate(out)
