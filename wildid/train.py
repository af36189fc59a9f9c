"""Transfer learning from labelled images, with (grouped) cross-validation.

    data = load_labelled("tracks/")                       # ImageFolder, or a CSV path,label[,group,crop]
    result = train(data, TrainConfig(arch="efficientnet_lite0", mode="linear"), out="models/my-tracks")
    result.card.metrics["accuracy"]

Modes:
  ``linear``       the backbone is frozen; its features are computed once (eval transform,
                   cached in memory and on disk keyed by file + mtime + model) and a new
                   linear head is fitted on them.  Seconds to minutes on a CPU.
  ``finetune``     the last ``unfreeze`` blocks and the head are trained on augmented images.
  ``progressive``  starts with the head only and unfreezes one more block every ``step`` epochs.

Validation is stratified K-fold, or stratified *group* K-fold when the data has groups
(sequence, camera, site), so frames of one group never sit on both sides of a split.
Out-of-fold predictions give per-fold accuracy, per-class precision / recall / F1 and the
confusion matrix; they go into the card's ``metrics``.  The final model is trained on all
data and written with :func:`wildid.registry.save_model`.

Nothing here imports streamlit: the page passes a ``progress`` callback and a stop flag.
"""

from __future__ import annotations

import copy
import hashlib
import math
import os
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import numpy as np
import torch
from PIL import Image
from torch import nn

from wildid import fingerprint
from wildid.cards import CARD_FILE, ModelCard, load_card, today
from wildid.datasets import LabelledData, Sample, load_labelled  # noqa: F401 - re-exported
from wildid.errors import DataError, WildidError
from wildid.imaging import crop as crop_image
from wildid.imaging import load_image, to_channel_mode

MODES = ("linear", "finetune", "progressive")
WEIGHT_SOURCES = ("package", "hub", "none")
DEFAULT_EPOCHS = {"linear": 60, "finetune": 8, "progressive": 8}
FEATURE_CACHE_VERSION = 1


class TrainingStopped(WildidError):
    """The user pressed stop; nothing was written."""


# --- data checks (reading labelled data: wildid.datasets) ----------------------------------------
def check_data(data: LabelledData, folds: int) -> None:
    """Raise DataError when the data cannot give a model or the requested validation."""
    if not data.samples:
        reasons = Counter(reason.split(":")[-1].strip() for _, reason in data.skipped)
        common = f" (e.g. {reasons.most_common(1)[0][0]})" if reasons else ""
        raise DataError(f"no readable images in {data.source}: {len(data.skipped)} file(s) skipped{common}")
    counts = {c: n for c, n in data.class_counts().items() if n > 0}
    if len(counts) < 2:
        only = next(iter(counts), "?")
        raise DataError(f"only one class ({only!r}) in {data.source}: a classifier needs images of at least 2 classes")
    if folds >= 2:
        small = sorted((n, c) for c, n in counts.items() if n < folds)
        if small:
            listed = ", ".join(f"{c!r} has {n}" for n, c in small[:5])
            raise DataError(
                f"class {listed} image(s), fewer than the {folds} folds: add images, merge or drop the class, "
                f"or use --folds {max(2, small[0][0])}" if small[0][0] >= 2 else
                f"class {listed} image(s), fewer than the {folds} folds: add images, or merge or drop the class"
            )
        if data.group_column:
            n_groups = len(set(data.groups or []))
            if n_groups < folds:
                raise DataError(
                    f"only {n_groups} distinct {data.group_column} value(s), fewer than the {folds} folds: "
                    f"use --folds {max(2, n_groups)} or drop --groups" if n_groups >= 2 else
                    f"only {n_groups} distinct {data.group_column} value: grouped validation needs at least 2"
                )


def make_folds(labels: Sequence[str], groups: Sequence[str] | None, folds: int, seed: int = 0) -> list[tuple[np.ndarray, np.ndarray]]:
    """(train_idx, val_idx) pairs; stratified, and grouped when ``groups`` is given."""
    from sklearn.model_selection import StratifiedGroupKFold, StratifiedKFold

    y = np.asarray(labels)
    x = np.zeros((len(y), 1))
    if groups is not None:
        splitter = StratifiedGroupKFold(n_splits=folds, shuffle=True, random_state=seed)
        splits = splitter.split(x, y, np.asarray(groups))
    else:
        splitter = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
        splits = splitter.split(x, y)
    return [(np.asarray(tr), np.asarray(va)) for tr, va in splits]


# --- configuration and progress -------------------------------------------------------------------
@dataclass(frozen=True)
class TrainConfig:
    arch: str = "efficientnet_lite0"
    mode: str = "linear"
    weights: str | None = None  # package | hub | none | PATH; None -> package for efficientnet_lite0
    epochs: int | None = None  # None -> DEFAULT_EPOCHS[mode]
    folds: int = 5
    nir: bool = False
    batch_size: int = 32
    lr: float | None = None
    weight_decay: float = 1e-4
    unfreeze: int = 2  # finetune: blocks trained besides the head
    step: int = 2  # progressive: epochs between unfreezing one more block
    seed: int = 0
    task: str = "custom"
    title: str = ""
    workers: int = 2
    cache: bool = True

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise DataError(f"unknown mode {self.mode!r}; use one of {', '.join(MODES)}")
        if self.epochs is not None and self.epochs < 1:
            raise DataError(f"epochs must be at least 1, got {self.epochs}")
        if self.folds < 0 or self.folds == 1:
            raise DataError(f"folds must be 0 (no validation) or at least 2, got {self.folds}")

    @property
    def n_epochs(self) -> int:
        return self.epochs or DEFAULT_EPOCHS[self.mode]

    @property
    def learning_rate(self) -> float:
        return self.lr or (1e-2 if self.mode == "linear" else 1e-3)

    @property
    def channel_mode(self) -> str:
        return "nir" if self.nir else "rgb"


@dataclass(frozen=True)
class Progress:
    """One report from the trainer.

    stage: "features" (done/total images), "epoch" (one finished epoch of ``fold``),
    "fold" (a fold finished; val_acc is its accuracy), "saved".
    fold: 1..K for validation folds, 0 for the final model on all data.
    """

    stage: str
    fold: int = 0
    folds: int = 0
    epoch: int = 0
    epochs: int = 0
    loss: float | None = None
    acc: float | None = None
    val_loss: float | None = None
    val_acc: float | None = None
    done: int = 0
    total: int = 0
    message: str = ""


ProgressFn = Callable[[Progress], None]
StopFlag = threading.Event | Callable[[], bool] | None


@dataclass
class TrainResult:
    card: ModelCard
    model: nn.Module
    metrics: dict[str, Any]
    history: list[Progress]
    data: LabelledData
    warnings: list[str] = field(default_factory=list)
    seconds: float = 0.0


def _stopped(stop: StopFlag) -> bool:
    if stop is None:
        return False
    if isinstance(stop, threading.Event):
        return stop.is_set()
    return bool(stop())


def resolve_weights(arch: str, weights: str | None) -> tuple[str, list[str]]:
    """The weight source to use and any warnings; a clear message when none is available offline."""
    from wildid.backbones import packaged_weights_for

    if weights is None or weights == "":
        if packaged_weights_for(arch) is not None:
            return "package", []
        raise DataError(
            f"{arch} has no offline ImageNet weights: give --weights PATH (a local state_dict or safetensors "
            f"file of {arch}), --weights hub (downloads, needs internet), or --weights none (random "
            f"initialisation, only for tests); tf_efficientnet_lite0 and tf_efficientnet_lite2 work offline with "
            f"--weights package"
        )
    warnings = []
    if weights == "none":
        warnings.append(
            f"training {arch} from random weights (--weights none): expect far lower accuracy than from pretrained weights"
        )
    elif weights not in WEIGHT_SOURCES and not Path(weights).expanduser().is_file():
        raise DataError(f"--weights {weights!r} is neither package, hub, none nor an existing file")
    return weights, warnings


def base_card(name: str, config: TrainConfig, classes: Sequence[str], weights: str | None = None) -> ModelCard:
    """The card of a new model: the architecture actually built and the preprocessing its weights expect."""
    from wildid.backbones import card_preprocessing, resolve_arch

    arch = resolve_arch(config.arch, weights)
    return ModelCard(
        name=name,
        arch=arch,
        classes=tuple(classes),
        title=config.title or name,
        task=config.task,
        channel_mode=config.channel_mode,
        **card_preprocessing(arch, weights),
    )


# --- network helpers -----------------------------------------------------------------------------
def classifier_layer(model: nn.Module) -> nn.Linear:
    head = model.get_classifier() if hasattr(model, "get_classifier") else getattr(model, "fc", None)
    if not isinstance(head, nn.Linear):
        raise WildidError(f"{type(model).__name__}: the classifier is not a single linear layer; use linear-probe friendly archs")
    return head


@torch.inference_mode()
def pooled_features(model: nn.Module, batch: torch.Tensor) -> torch.Tensor:
    """Pre-logit features (what the linear head sees)."""
    if hasattr(model, "forward_head"):
        return model.forward_head(model.forward_features(batch), pre_logits=True)
    head = model.fc
    model.fc = nn.Identity()
    try:
        return model(batch)
    finally:
        model.fc = head


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


def _train_mode_for_trainable(model: nn.Module) -> None:
    """Train mode only where parameters are trained: frozen BatchNorm keeps its statistics."""
    model.eval()
    for module in model.modules():
        own = list(module.parameters(recurse=False))
        if own and all(p.requires_grad for p in own):
            module.train()
    for module in model.modules():
        if isinstance(module, nn.Dropout):
            module.train()


# --- images and features ---------------------------------------------------------------------------
def _load_sample(sample: Sample, channel_mode: str, draft_size: int | None) -> Image.Image:
    img = load_image(sample.path, draft_size=None if sample.crop else draft_size)
    if sample.crop:
        img = crop_image(img, sample.crop)
    return to_channel_mode(img, channel_mode)


def _sample_key(sample: Sample, channel_mode: str) -> str:
    try:
        stat = sample.path.stat()
        stamp = f"{stat.st_mtime_ns}:{stat.st_size}"
    except OSError:
        stamp = "missing"
    text = f"{sample.path.resolve()}|{stamp}|{sample.crop}|{channel_mode}"
    return hashlib.sha1(text.encode()).hexdigest()


def _weights_identity(source: str) -> str:
    if source in WEIGHT_SOURCES:
        return source
    path = Path(source).expanduser()
    stat = path.stat()
    return f"{path.resolve()}:{stat.st_mtime_ns}:{stat.st_size}"


def _cache_root() -> Path:
    return Path(os.environ.get("WILDID_CACHE", Path.home() / ".cache" / "wildid")) / "features"


class FeatureCache:
    """Backbone features per image, in memory and on disk.

    Keyed by (model: arch + weight source + preprocessing) and (file: path + mtime + size + crop
    + channel mode), so a changed image or another backbone never reuses stale features.
    Random weights (``none``) are not cached on disk: they are not a reproducible backbone.
    """

    _memory: dict[str, dict[str, np.ndarray]] = {}
    _lock = threading.Lock()

    def __init__(self, card: ModelCard, weights: str, enabled: bool = True, seed: int = 0):
        cfg = card.data_config()
        # Random weights depend on the seed; pretrained ones do not.
        salt = f"seed{seed}" if weights == "none" else ""
        model_text = f"v{FEATURE_CACHE_VERSION}|{card.arch}|{_weights_identity(weights)}|{salt}|{sorted(cfg.items())}"
        self.model_key = hashlib.sha1(model_text.encode()).hexdigest()[:16]
        self.enabled = enabled
        self.persistent = enabled and weights != "none"
        self.path = _cache_root() / f"{card.arch.replace(':', '_').replace('/', '_')}-{self.model_key}.npz"
        self.dirty = False
        with self._lock:
            if enabled and self.model_key not in self._memory:
                self._memory[self.model_key] = self._read_disk() if self.persistent else {}
            self.entries = self._memory.setdefault(self.model_key, {}) if enabled else {}

    def _read_disk(self) -> dict[str, np.ndarray]:
        if not self.path.is_file():
            return {}
        try:
            with np.load(self.path, allow_pickle=False) as data:
                keys, vectors = data["keys"], data["vectors"]
                return {str(k): vectors[i] for i, k in enumerate(keys)}
        except Exception:  # noqa: BLE001 - a damaged cache is rebuilt, never fatal
            return {}

    def get(self, key: str) -> np.ndarray | None:
        return self.entries.get(key) if self.enabled else None

    def put(self, key: str, vector: np.ndarray) -> None:
        if self.enabled:
            self.entries[key] = vector
            self.dirty = True

    def flush(self) -> None:
        if not (self.persistent and self.dirty and self.entries):
            return
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            keys = np.array(list(self.entries))
            vectors = np.stack([self.entries[k] for k in keys]).astype(np.float32)
            tmp = self.path.with_name(self.path.name + f".{os.getpid()}.tmp.npz")
            np.savez(tmp, keys=keys, vectors=vectors)
            tmp.replace(self.path)
            self.dirty = False
        except OSError:
            pass  # caching is an optimisation; a read-only home must not stop training

    @classmethod
    def clear_memory(cls) -> None:
        with cls._lock:
            cls._memory.clear()


def _prefetch(items: Sequence[Any], fn: Callable[[Any], Any], workers: int) -> Iterable[tuple[Any, Any]]:
    """(item, fn(item) or the exception) in order, loading ahead on a few threads."""
    if workers <= 1:
        for item in items:
            try:
                yield item, fn(item)
            except Exception as exc:  # noqa: BLE001
                yield item, exc
        return

    def safe(item):
        try:
            return fn(item)
        except Exception as exc:  # noqa: BLE001
            return exc

    with ThreadPoolExecutor(max_workers=workers) as pool:
        window = max(4, workers * 8)
        futures = []
        iterator = iter(items)
        for item in iterator:
            futures.append((item, pool.submit(safe, item)))
            if len(futures) >= window:
                first, fut = futures.pop(0)
                yield first, fut.result()
        for item, fut in futures:
            yield item, fut.result()


def extract_features(
    model: nn.Module,
    card: ModelCard,
    data: LabelledData,
    cache: FeatureCache,
    batch_size: int = 32,
    workers: int = 2,
    progress: ProgressFn | None = None,
    stop: StopFlag = None,
) -> tuple[np.ndarray, dict[int, str]]:
    """Features for every sample (eval transform) and {index: reason} for unreadable files."""
    from wildid.predictor import build_transform, draft_size_for

    transform = build_transform(card)
    draft = draft_size_for(card)
    keys = [_sample_key(s, card.channel_mode) for s in data.samples]
    features: dict[int, np.ndarray] = {}
    bad: dict[int, str] = {}
    todo = []
    for index, key in enumerate(keys):
        cached = cache.get(key)
        if cached is not None:
            features[index] = cached
        else:
            todo.append(index)
    total = len(keys)
    done = total - len(todo)
    if progress:
        progress(Progress("features", done=done, total=total, message=f"{done} cached"))

    def prepare(index: int) -> torch.Tensor:
        return transform(_load_sample(data.samples[index], card.channel_mode, draft))

    model.eval()
    batch_idx: list[int] = []
    batch: list[torch.Tensor] = []

    def run_batch() -> None:
        nonlocal done
        out = pooled_features(model, torch.stack(batch)).float().cpu().numpy()
        for i, vector in zip(batch_idx, out):
            features[i] = vector
            cache.put(keys[i], vector)
        done += len(batch)
        batch_idx.clear()
        batch.clear()
        if progress:
            progress(Progress("features", done=done + len(bad), total=total))

    try:
        for index, tensor in _prefetch(todo, prepare, workers):
            if _stopped(stop):
                raise TrainingStopped("training stopped while computing features; nothing was written")
            if isinstance(tensor, Exception):
                reason = str(tensor) if isinstance(tensor, WildidError) else f"{type(tensor).__name__}: {tensor}"
                bad[index] = reason
                continue
            batch_idx.append(index)
            batch.append(tensor)
            if len(batch) >= batch_size:
                run_batch()
        if batch:
            run_batch()
    finally:
        cache.flush()
    order = [i for i in range(total) if i not in bad]
    if not order:
        return np.zeros((0, 0), dtype=np.float32), bad
    return np.stack([features[i] for i in order]).astype(np.float32), bad


# --- linear head ------------------------------------------------------------------------------------
@dataclass
class LinearHead:
    weight: np.ndarray  # [C, D] acting on raw (unstandardised) features
    bias: np.ndarray  # [C]

    def logits(self, features: np.ndarray) -> np.ndarray:
        return features @ self.weight.T + self.bias

    def install(self, model: nn.Module) -> None:
        head = classifier_layer(model)
        with torch.no_grad():
            head.weight.copy_(torch.from_numpy(self.weight.astype(np.float32)))
            head.bias.copy_(torch.from_numpy(self.bias.astype(np.float32)))


def fit_linear_head(
    features: np.ndarray,
    y: np.ndarray,
    n_classes: int,
    config: TrainConfig,
    fold: int,
    folds: int,
    val: tuple[np.ndarray, np.ndarray] | None = None,
    progress: ProgressFn | None = None,
    stop: StopFlag = None,
) -> LinearHead:
    """Softmax regression on standardised features (mini-batch AdamW, cosine schedule), folded back to raw features.

    Plain numpy: on a busy CPU torch's per-step overhead (~10 ms for a [32, D] x [D, C] layer) would
    dominate; here a step costs well under a millisecond and is independent of torch's threads.
    """
    rng = np.random.default_rng(config.seed + fold)
    mean = features.mean(axis=0)
    std = features.std(axis=0) + 1e-6
    x = ((features - mean) / std).astype(np.float64)
    xv = yv = None
    if val is not None and len(val[0]):
        xv, yv = (val[0] - mean) / std, np.asarray(val[1])
    w = np.zeros((x.shape[1], n_classes))
    b = np.zeros(n_classes)
    m_w, v_w, m_b, v_b = np.zeros_like(w), np.zeros_like(w), np.zeros_like(b), np.zeros_like(b)
    beta1, beta2, eps = 0.9, 0.999, 1e-8
    epochs = config.n_epochs
    batch = max(8, config.batch_size)
    step = 0
    for epoch in range(1, epochs + 1):
        if _stopped(stop):
            raise TrainingStopped("training stopped by the user; nothing was written")
        lr = config.learning_rate * 0.5 * (1 + math.cos(math.pi * (epoch - 1) / epochs))
        order = rng.permutation(len(x))
        total_loss, correct = 0.0, 0
        for start in range(0, len(x), batch):
            idx = order[start:start + batch]
            xb, yb = x[idx], y[idx]
            probs = _softmax_rows(xb @ w + b)
            total_loss -= float(np.log(np.clip(probs[np.arange(len(idx)), yb], 1e-12, None)).sum())
            correct += int((probs.argmax(1) == yb).sum())
            probs[np.arange(len(idx)), yb] -= 1.0
            grad_w, grad_b = xb.T @ probs / len(idx), probs.mean(axis=0)
            step += 1
            w *= 1 - lr * config.weight_decay  # decoupled weight decay (AdamW)
            for param, grad, m, v in ((w, grad_w, m_w, v_w), (b, grad_b, m_b, v_b)):
                m *= beta1
                m += (1 - beta1) * grad
                v *= beta2
                v += (1 - beta2) * grad * grad
                param -= lr * (m / (1 - beta1 ** step)) / (np.sqrt(v / (1 - beta2 ** step)) + eps)
        report = Progress("epoch", fold, folds, epoch, epochs, total_loss / len(x), correct / len(x))
        if xv is not None:
            probs = _softmax_rows(xv @ w + b)
            report = _with_val(report, _log_loss(probs, yv), float((probs.argmax(1) == yv).mean()))
        if progress:
            progress(report)
    weight = (w / std[:, None]).T  # [C, D] on raw features
    bias = b - weight @ mean
    return LinearHead(weight, bias)


def _softmax_rows(logits: np.ndarray) -> np.ndarray:
    logits = logits - logits.max(axis=1, keepdims=True)
    exp = np.exp(logits)
    return exp / exp.sum(axis=1, keepdims=True)


def _with_val(report: Progress, val_loss: float, val_acc: float) -> Progress:
    from dataclasses import replace

    return replace(report, val_loss=val_loss, val_acc=val_acc)


# --- fine-tuning ------------------------------------------------------------------------------------
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
        img = _load_sample(data.samples[index], card.channel_mode, side)
        scale = side / min(img.size)
        if scale < 1:
            img = img.resize((max(1, round(img.width * scale)), max(1, round(img.height * scale))), Image.BILINEAR)
        return img

    total = len(data.samples)
    for n, (index, img) in enumerate(_prefetch(range(total), prepare, workers), start=1):
        if _stopped(stop):
            raise TrainingStopped("training stopped while reading images; nothing was written")
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
    config: TrainConfig,
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
        _train_mode_for_trainable(model)
        order = rng.permutation(len(images))
        total_loss, correct = 0.0, 0
        for start in range(0, len(order), config.batch_size):
            if _stopped(stop):
                raise TrainingStopped("training stopped by the user; nothing was written")
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
            probs = predict_images(model, evaluate, val[0], config.batch_size)
            report = _with_val(report, _log_loss(probs, val[1]), float((probs.argmax(1) == val[1]).mean()))
        if progress:
            progress(report)
    return model.eval()


def predict_images(model: nn.Module, transform, images: list[Image.Image], batch_size: int) -> np.ndarray:
    from wildid.predictor import softmax

    model.eval()
    out = []
    with torch.inference_mode():
        for start in range(0, len(images), batch_size):
            batch = torch.stack([transform(img) for img in images[start:start + batch_size]])
            out.append(model(batch).float().numpy())
    return softmax(np.concatenate(out))


def _log_loss(probs: np.ndarray, y: np.ndarray) -> float:
    return float(-np.mean(np.log(np.clip(probs[np.arange(len(y)), y], 1e-12, 1.0))))


# --- metrics ------------------------------------------------------------------------------------------
def validation_metrics(
    y_true: np.ndarray, y_pred: np.ndarray, classes: Sequence[str], fold_acc: list[float], how: str
) -> dict[str, Any]:
    from sklearn.metrics import confusion_matrix, precision_recall_fscore_support

    labels = list(range(len(classes)))
    precision, recall, f1, support = precision_recall_fscore_support(y_true, y_pred, labels=labels, zero_division=0)
    matrix = confusion_matrix(y_true, y_pred, labels=labels)
    return {
        "accuracy": round(float(np.mean(fold_acc)), 4),
        "accuracy_std": round(float(np.std(fold_acc)), 4),
        "macro_f1": round(float(np.mean(f1)), 4),
        "pooled_accuracy": round(float((y_true == y_pred).mean()), 4),
        "fold_accuracy": [round(float(a), 4) for a in fold_acc],
        "measured_by": how,
        "per_class": {
            c: {"precision": round(float(p), 4), "recall": round(float(r), 4), "f1": round(float(f), 4), "support": int(s)}
            for c, p, r, f, s in zip(classes, precision, recall, f1, support)
        },
        "confusion_matrix": {"labels": list(classes), "matrix": matrix.astype(int).tolist(), "rows": "true", "columns": "predicted"},
    }


# --- the whole run ---------------------------------------------------------------------------------------
def resolve_out(out: str | os.PathLike) -> Path:
    """A bare name goes under the first model root (models/ or WILDID_MODELS); a path is used as is."""
    from wildid.registry import default_output_root

    text = str(out)
    if os.sep not in text and "/" not in text:
        return default_output_root() / text
    return Path(text).expanduser()


def check_out(folder: Path, overwrite: bool) -> None:
    if (folder / CARD_FILE).is_file() and not overwrite:
        try:
            card = load_card(folder)
            has_weights = card.has_weights
        except WildidError:
            has_weights = True
        if has_weights:
            raise DataError(f"{folder} already holds a trained model; choose another --out or pass --overwrite")
    if folder.exists() and not folder.is_dir():
        raise DataError(f"{folder} exists and is not a folder")


def train(
    data: LabelledData,
    config: TrainConfig,
    out: str | os.PathLike | None = None,
    command: str = "",
    progress: ProgressFn | None = None,
    stop: StopFlag = None,
    overwrite: bool = False,
) -> TrainResult:
    """Validate (K folds), train the final model on all data and, with ``out``, save it."""
    from wildid.backbones import pretrained_backbone
    from wildid.registry import save_model

    started = time.perf_counter()
    history: list[Progress] = []

    def report(p: Progress) -> None:
        if p.stage != "features":
            history.append(p)
        if progress:
            progress(p)

    folder = resolve_out(out) if out is not None else None
    if folder is not None:
        check_out(folder, overwrite)
    name = folder.name if folder is not None else "trained"
    weights, warnings = resolve_weights(config.arch, config.weights)
    check_data(data, config.folds)  # cheap checks before any image is decoded

    torch.manual_seed(config.seed)
    card = base_card(name, config, data.classes, weights)
    initial = pretrained_backbone(card.arch, len(data.classes), weights)
    initial.eval()
    classifier_layer(initial)  # fail early on archs whose head cannot be replaced

    if config.mode == "linear":
        cache = FeatureCache(card, weights, enabled=config.cache, seed=config.seed)
        features, bad = extract_features(initial, card, data, cache, config.batch_size, config.workers, report, stop)
    else:
        images, bad = preload_images(card, data, config.workers, report, stop)
    if bad:
        data = data.without(bad)
        warnings.append(f"skipped {len(bad)} unreadable file(s), e.g. {next(iter(bad.values()))}")
    check_data(data, config.folds)
    # Classes that lost all their images to unreadable files drop out of the model.
    present = [c for c in data.classes if data.class_counts()[c] > 0]
    if len(present) != len(data.classes):
        warnings.append(f"dropped class(es) without readable images: {', '.join(sorted(set(data.classes) - set(present)))}")
        data = LabelledData(data.samples, tuple(present), data.source, data.kind, data.group_column, data.skipped)
        card = card.replace(classes=tuple(present))
        initial = _reset_head(initial, len(present))
    index_of = {c: i for i, c in enumerate(data.classes)}
    y = np.array([index_of[label] for label in data.labels])
    n_classes = len(data.classes)

    metrics: dict[str, Any] = {}
    if config.folds >= 2:
        splits = make_folds(data.labels, data.groups, config.folds, config.seed)
        y_pred = np.full(len(y), -1)
        fold_acc = []
        for k, (tr, va) in enumerate(splits, start=1):
            if config.mode == "linear":
                head = fit_linear_head(features[tr], y[tr], n_classes, config, k, len(splits), (features[va], y[va]), report, stop)
                scores = head.logits(features[va])
            else:
                model = finetune_model(initial, card, [images[i] for i in tr], y[tr], config, k, len(splits),
                                       ([images[i] for i in va], y[va]), report, stop)
                from wildid.predictor import build_transform

                scores = predict_images(model, build_transform(card), [images[i] for i in va], config.batch_size)
            y_pred[va] = scores.argmax(1)
            fold_acc.append(float((y_pred[va] == y[va]).mean()))
            report(Progress("fold", k, len(splits), val_acc=fold_acc[-1]))
        grouped = f", grouped by {data.group_column}" if data.group_column else ""
        how = (f"{len(splits)}-fold stratified{' group' if data.group_column else ''} cross-validation{grouped} "
               f"({config.mode} mode, {config.n_epochs} epochs); accuracy is the mean over folds")
        metrics = validation_metrics(y, y_pred, data.classes, fold_acc, how)
    else:
        metrics = {"measured_by": "not validated (--folds 0)"}
    metrics["images"] = len(y)

    # Final model on all data.
    if config.mode == "linear":
        head = fit_linear_head(features, y, n_classes, config, 0, 0, None, report, stop)
        model = copy.deepcopy(initial)
        head.install(model)
    else:
        model = finetune_model(initial, card, images, y, config, 0, 0, None, report, stop)
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)

    provenance = {
        "trained": today(),
        "command": command,
        "data": data.source,
        "data_summary": data.summary(),
        "mode": config.mode,
        "epochs": config.n_epochs,
        "weights": weights,
        "seed": config.seed,
        "folds": config.folds,
        "seconds": round(time.perf_counter() - started, 1),
        # Digests of the training files, so an evaluation on them is caught (wildid.fingerprint).
        "training_files": fingerprint.sketch(sample.path for sample in data.samples),
    }
    if data.skipped:
        provenance["skipped_examples"] = [f"{p}: {r}" for p, r in data.skipped[:10]]
    if warnings:
        provenance["warnings"] = warnings
    card = card.replace(
        metrics=metrics,
        provenance=provenance,
        description=f"{config.mode} transfer learning of {card.arch} on {len(y)} images from {Path(data.source).name}",
    )
    if _stopped(stop):
        raise TrainingStopped("training stopped by the user; nothing was written")
    if folder is not None:
        card = save_model(model, card, folder)
        report(Progress("saved", message=str(folder)))
    return TrainResult(card, model, metrics, history, data, warnings, time.perf_counter() - started)


def _reset_head(model: nn.Module, n_classes: int) -> nn.Module:
    model = copy.deepcopy(model)
    if hasattr(model, "reset_classifier"):
        model.reset_classifier(n_classes)
    else:
        model.fc = nn.Linear(model.fc.in_features, n_classes)
    return model


def command_line(data: str, out: str, config: TrainConfig, groups: str | None = None, overwrite: bool = False) -> str:
    """The `wildid train` command that reproduces a run (recorded in the card's provenance)."""
    import shlex

    parts = ["wildid", "train", str(data), "--out", str(out), "--arch", config.arch, "--mode", config.mode,
             "--epochs", str(config.n_epochs), "--folds", str(config.folds)]
    if config.weights:
        parts += ["--weights", str(config.weights)]
    if groups:
        parts += ["--groups", groups]
    if config.nir:
        parts.append("--nir")
    if config.mode == "finetune":
        parts += ["--unfreeze", str(config.unfreeze)]
    if config.mode == "progressive":
        parts += ["--step", str(config.step)]
    if config.lr:
        parts += ["--lr", str(config.lr)]
    if config.batch_size != 32:
        parts += ["--batch-size", str(config.batch_size)]
    if config.seed:
        parts += ["--seed", str(config.seed)]
    if config.task != "custom":
        parts += ["--task", config.task]
    if config.title:
        parts += ["--title", config.title]
    if overwrite:
        parts.append("--overwrite")
    return shlex.join(parts)


# --- for the app: a run in a background thread -------------------------------------------------------
def resolve_data_path(text: str) -> Path:
    """A data folder or CSV the app may read: inside the allowed root (WILDID_ALLOWED_ROOT, default home)."""
    from wildid.batch import ALLOWED_ROOT_ENV, allowed_root

    root = allowed_root()
    if not text or not text.strip():
        raise DataError(f"enter a folder (one sub-folder per class) or a CSV inside {root}")
    candidate = Path(text.strip()).expanduser()
    if not candidate.is_absolute():
        candidate = root / candidate
    resolved = candidate.resolve()
    if resolved != root and root not in resolved.parents:
        raise DataError(f"{text.strip()}: outside the allowed folder {root} (set {ALLOWED_ROOT_ENV} to change it)")
    if not resolved.exists():
        raise DataError(f"{text.strip()}: no such folder or CSV file")
    return resolved


class TrainingJob:
    """``train`` in a daemon thread; the page polls ``events`` and may call ``stop()``.

    Only plain Python state is shared with the thread (a list appended under a lock), so a
    page rerun can read it at any time.
    """

    def __init__(self, data: LabelledData, config: TrainConfig, out: str | os.PathLike, command: str = "",
                 overwrite: bool = False):
        self.data, self.config, self.out, self.command, self.overwrite = data, config, out, command, overwrite
        self.stop_event = threading.Event()
        self.events: list[Progress] = []
        self.latest_features: Progress | None = None
        self.result: TrainResult | None = None
        self.error: str | None = None
        self.stopped = False
        self.started = time.time()
        self._lock = threading.Lock()
        self.thread = threading.Thread(target=self._run, name="wildid-train", daemon=True)

    def start(self) -> "TrainingJob":
        self.thread.start()
        return self

    def _record(self, p: Progress) -> None:
        with self._lock:
            if p.stage == "features":
                self.latest_features = p
            else:
                self.events.append(p)

    def _run(self) -> None:
        try:
            self.result = train(self.data, self.config, self.out, self.command, self._record, self.stop_event, self.overwrite)
        except TrainingStopped as exc:
            self.stopped, self.error = True, str(exc)
        except WildidError as exc:
            self.error = str(exc)
        except Exception as exc:  # noqa: BLE001 - the page must show something, not hang
            self.error = f"training failed: {type(exc).__name__}: {exc}"

    def stop(self) -> None:
        self.stop_event.set()

    @property
    def running(self) -> bool:
        return self.thread.is_alive()

    def snapshot(self) -> tuple[list[Progress], Progress | None]:
        with self._lock:
            return list(self.events), self.latest_features

    def wait(self, timeout: float | None = None) -> bool:
        self.thread.join(timeout)
        return not self.running


def curve_rows(events: Iterable[Progress]) -> list[dict[str, Any]]:
    """Long-format rows (fold, epoch, metric, split, value) for the live loss / accuracy plots."""
    rows = []
    for p in events:
        if p.stage != "epoch":
            continue
        run = f"fold {p.fold}" if p.fold else "final (all data)"
        for metric, split, value in (("loss", "train", p.loss), ("accuracy", "train", p.acc),
                                     ("loss", "held-out", p.val_loss), ("accuracy", "held-out", p.val_acc)):
            if value is not None:
                rows.append({"run": run, "epoch": p.epoch, "metric": metric, "split": split, "value": float(value)})
    return rows
