"""Learning a re-ID embedding with a batch-hard triplet loss (see the package docstring for why)."""

from __future__ import annotations

import datetime as _dt
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from wildid.cards import ModelCard
from wildid.errors import DataError
from wildid.imaging import load_image
from wildid.predictor import _chunks
from wildid.reid.embedding import embedding_card, l2_normalise
from wildid.reid.gallery import DEFAULT_THRESHOLD, individual_folders
from wildid.reid.similarity import calibrate_threshold, open_set_scores, pair_auroc


def batch_hard_triplet_loss(embeddings: torch.Tensor, labels: torch.Tensor, margin: float = 0.3) -> torch.Tensor:
    """Batch-hard triplet loss on L2-normalised embeddings (distance = 1 - cosine similarity).

    For each anchor: its farthest positive and nearest negative in the batch.
    """
    sims = embeddings @ embeddings.T
    dist = (1 - sims).clamp_min(0)
    same = labels[:, None] == labels[None, :]
    eye = torch.eye(len(labels), dtype=torch.bool, device=labels.device)
    pos_mask = same & ~eye
    neg_mask = ~same
    valid = pos_mask.any(dim=1) & neg_mask.any(dim=1)
    if not valid.any():
        return embeddings.sum() * 0
    hardest_pos = torch.where(pos_mask, dist, torch.full_like(dist, -1.0)).max(dim=1).values
    hardest_neg = torch.where(neg_mask, dist, torch.full_like(dist, 4.0)).min(dim=1).values
    return torch.relu(hardest_pos - hardest_neg + margin)[valid].mean()


def split_individuals(groups: dict[str, list], val_fraction: float, seed: int) -> tuple[dict, dict]:
    usable = {k: v for k, v in groups.items() if len(v) >= 2}
    if len(usable) < 4:
        raise DataError(
            f"training a re-ID embedding needs at least 4 individuals with 2+ images each (found {len(usable)})"
        )
    names = sorted(usable)
    rng = np.random.default_rng(seed)
    rng.shuffle(names)
    n_val = min(len(names) - 2, max(2, round(len(names) * val_fraction)))
    val = {k: usable[k] for k in names[:n_val]}
    train = {k: usable[k] for k in names[n_val:]}
    return train, val


def train_transform(card: ModelCard, max_rotation: float = 25.0):
    from torchvision import transforms

    from wildid.imaging import to_channel_mode

    size = card.input_size[1:]
    return transforms.Compose([
        transforms.Lambda(lambda img: to_channel_mode(img, card.channel_mode)),
        transforms.RandomRotation(max_rotation, interpolation=transforms.InterpolationMode.BILINEAR),
        transforms.RandomResizedCrop(size, scale=(0.55, 1.0), ratio=(0.8, 1.25), antialias=True),
        # No horizontal flip: a mirrored flank is another coat pattern.
        transforms.ColorJitter(brightness=0.35, contrast=0.25, saturation=0.15),
        transforms.ToTensor(),
        transforms.Normalize(card.mean, card.std),
    ])


@dataclass
class TrainResult:
    card: ModelCard
    history: list[dict[str, float]]


def train_embedding(
    data: Path | str,
    out: Path | str,
    arch: str = "resnet18",
    epochs: int = 10,
    weights: str = "none",
    input_size: int | None = None,
    batch_individuals: int = 8,
    per_individual: int = 4,
    lr: float | None = None,
    margin: float = 0.3,
    val_fraction: float = 0.3,
    steps_per_epoch: int | None = None,
    seed: int = 0,
    name: str | None = None,
    progress: Callable[[dict[str, float]], None] | None = None,
) -> TrainResult:
    """Learn an embedding from ``data/<individual>/*.jpg`` with a batch-hard triplet loss.

    Individuals are split into training and validation (open set); the best epoch by
    validation pair AUROC is kept; the card's threshold is chosen on the validation
    individuals (leave-one-out, Youden's J) and the card records the validation metrics.
    """
    from wildid.backbones import pretrained_backbone
    from wildid.predictor import build_transform
    from wildid.registry import save_model

    torch.manual_seed(seed)
    out = Path(out)
    groups = individual_folders(data)
    train_groups, val_groups = split_individuals(groups, val_fraction, seed)
    card = embedding_card(name or out.name, arch, input_size)
    model = pretrained_backbone(arch, 0, weights)
    augment = train_transform(card)
    evaluate_transform = build_transform(card)
    cache: dict[Path, Any] = {}

    def picture(path: Path):
        if path not in cache:
            cache[path] = load_image(path, draft_size=max(card.input_size[1:]) * 2).convert("RGB")
        return cache[path]

    def embed_val(net) -> tuple[np.ndarray, list[str]]:
        from wildid.imaging import to_channel_mode

        net.eval()
        labels = [k for k, items in val_groups.items() for _ in items]
        paths = [p for items in val_groups.values() for p in items]
        rows = []
        with torch.inference_mode():
            for chunk in _chunks(paths, 32):
                batch = torch.stack([evaluate_transform(to_channel_mode(picture(p), card.channel_mode)) for p in chunk])
                rows.append(l2_normalise(net(batch).numpy()))
        return np.concatenate(rows), labels

    def val_metrics(net) -> dict[str, float]:
        emb, labels = embed_val(net)
        known, unknown, correct = open_set_scores(emb, labels)
        from sklearn.metrics import roc_auc_score

        y = np.concatenate([np.ones(len(known)), np.zeros(len(unknown))])
        return {
            "val_pair_auroc": pair_auroc(emb, labels),
            "val_top1": float(correct.mean()) if len(correct) else float("nan"),
            "val_open_set_auroc": float(roc_auc_score(y, np.concatenate([known, unknown]))),
        }

    train_names = sorted(train_groups)
    n_images = sum(len(v) for v in train_groups.values())
    p = min(batch_individuals, len(train_names))
    k = per_individual
    steps = steps_per_epoch or max(1, math.ceil(n_images / (p * k)))
    lr = lr or (3e-4 if weights != "none" else 1e-3)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(1, epochs * steps))
    rng = np.random.default_rng(seed)
    history = [{"epoch": 0, "loss": float("nan"), **val_metrics(model)}]
    if progress:
        progress(history[-1])
    best_state = {key: v.detach().clone() for key, v in model.state_dict().items()}
    best_score = history[0]["val_pair_auroc"]
    started = time.time()
    for epoch in range(1, epochs + 1):
        model.train()
        losses = []
        for _ in range(steps):
            chosen = rng.choice(len(train_names), size=p, replace=False)
            batch, labels = [], []
            for index in chosen:
                items = train_groups[train_names[index]]
                picks = rng.choice(len(items), size=k, replace=len(items) < k)
                for pick in picks:
                    batch.append(augment(picture(items[pick])))
                    labels.append(int(index))
            embeddings = torch.nn.functional.normalize(model(torch.stack(batch)), dim=1)
            loss = batch_hard_triplet_loss(embeddings, torch.tensor(labels), margin)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            scheduler.step()
            losses.append(loss.item())
        row = {"epoch": epoch, "loss": float(np.mean(losses)), **val_metrics(model),
               "elapsed_s": round(time.time() - started, 1)}
        history.append(row)
        if progress:
            progress(row)
        if row["val_pair_auroc"] >= best_score:
            best_score = row["val_pair_auroc"]
            best_state = {key: v.detach().clone() for key, v in model.state_dict().items()}
    model.load_state_dict(best_state)
    model.eval()
    emb, labels = embed_val(model)
    threshold = calibrate_threshold(emb, labels)
    best = max(history, key=lambda r: r["val_pair_auroc"])
    metrics = {
        "val_pair_auroc": round(best["val_pair_auroc"], 4),
        "val_pair_auroc_untrained": round(history[0]["val_pair_auroc"], 4),
        "val_top1": round(best["val_top1"], 4),
        "val_open_set_auroc": round(best["val_open_set_auroc"], 4),
        "best_epoch": int(best["epoch"]),
        "measured_by": (
            f"leave-one-out on {len(val_groups)} validation individuals never seen in training "
            f"({sum(len(v) for v in val_groups.values())} images)"
        ),
    }
    card = card.replace(
        threshold=DEFAULT_THRESHOLD if threshold is None else round(threshold, 4),
        description="Embedding for re-identification of individuals; cosine similarity, L2-normalised.",
        provenance={
            "data": str(data),
            "date": _dt.date.today().isoformat(),
            "loss": f"batch-hard triplet, margin {margin}, P={p} x K={k}",
            "weights": str(weights),
            "epochs": epochs,
            "train_individuals": len(train_groups),
            "val_individuals": sorted(val_groups),
            "command": f"wildid train-reid {data} --out {out} --arch {arch} --epochs {epochs}",
        },
        metrics=metrics,
    )
    saved = save_model(model, card, out)
    return TrainResult(saved, history)
