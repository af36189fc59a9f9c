"""The training recipe: configuration, validation folds, the final model and its card.

    data = load_labelled("tracks/")                       # ImageFolder, or a CSV path,label[,group,crop]
    result = train(data, TrainConfig(), out="models/my-tracks")
    result.card.metrics["accuracy"], result.card.temperature

The default (``mode="linear"``): the packaged EfficientNet-Lite backbone stays frozen; its
features are computed once for the 8 flips / quarter-turns of every image (cached); a logistic
regression is fitted on them with C chosen by grouped inner cross-validation, the views to average
(none | flip | d8) are chosen the same way, and the temperature that calibrates the confidence comes
from the inner out-of-fold logits.  All choices are made inside each training part, so the outer
cross-validation figures are honest, and with ``--folds 0`` the model is still calibrated.

``finetune`` / ``progressive`` train the last blocks on augmented images (slow on a CPU).

Validation is stratified K-fold, grouped by ``--groups`` when given, else by near-duplicate photos
(perceptual hash), so copies of one photo never sit on both sides of a split.
"""

from __future__ import annotations

import copy
import os
import shlex
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch import nn

from wildid import fingerprint
from wildid.cards import CARD_FILE, ModelCard, load_card, today
from wildid.datasets import LabelledData
from wildid.errors import DataError, WildidError
from wildid.training.data import check_data, make_folds, near_duplicate_groups
from wildid.training.features import FeatureCache, WEIGHT_SOURCES, average_views, extract_features
from wildid.training.finetune import finetune_model, predict_logits, preload_images
from wildid.training.head import LinearHead, classifier_layer, fit_adamw_head, fit_logistic_head, nll
from wildid.training.progress import Progress, ProgressFn, StopFlag, check_stop
from wildid.views import VIEW_NAMES, needs_square

MODES = ("linear", "finetune", "progressive")
HEADS = ("logreg", "adamw")
VIEW_CHOICES = ("auto",) + VIEW_NAMES
AUTO_VIEW_CANDIDATES = ("none", "flip", "d8")
DEFAULT_ARCH = "tf_efficientnet_lite0"
DEFAULT_EPOCHS = {"linear": 60, "finetune": 8, "progressive": 8}  # linear: the adamw baseline head only


@dataclass(frozen=True)
class TrainConfig:
    arch: str = DEFAULT_ARCH
    mode: str = "linear"
    weights: str | None = None  # package | hub | none | PATH; None -> package for the EfficientNet-Lite archs
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
    head: str = "logreg"  # linear mode: logreg (default) | adamw (the earlier numpy head, a baseline)
    views: str = "auto"  # auto (chosen by inner CV) | none | flip | rot4 | d8
    calibrate: bool = True  # temperature scaling on held-out logits
    dedupe: bool = True  # without --groups, keep near-duplicate photos on one side of every split

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise DataError(f"unknown mode {self.mode!r}; use one of {', '.join(MODES)}")
        if self.head not in HEADS:
            raise DataError(f"unknown head {self.head!r}; use one of {', '.join(HEADS)}")
        if self.views not in VIEW_CHOICES:
            raise DataError(f"unknown views {self.views!r}; use one of {', '.join(VIEW_CHOICES)}")
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


@dataclass
class TrainResult:
    card: ModelCard
    model: nn.Module
    metrics: dict[str, Any]
    history: list[Progress]
    data: LabelledData
    warnings: list[str] = field(default_factory=list)
    seconds: float = 0.0


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


# --- the linear recipe: views + logistic regression + temperature ------------------------------------
@dataclass
class LinearFit:
    head: LinearHead
    views: str
    summary: dict


def candidate_views(config: TrainConfig, card: ModelCard) -> tuple[str, tuple[str, ...]]:
    """(views to extract features for, view sets to choose among)."""
    square = card.input_size[1] == card.input_size[2]
    if config.views != "auto":
        if needs_square(config.views) and not square:
            raise DataError(f"--views {config.views} rotates the image and needs a square input size")
        return config.views, (config.views,)
    return ("d8", AUTO_VIEW_CANDIDATES) if square else ("flip", ("none", "flip"))


def fit_linear(per_view: np.ndarray, y: np.ndarray, n_classes: int, groups: Sequence[str] | None,
               config: TrainConfig, extracted: str, candidates: Sequence[str], fold: int = 0, folds: int = 0,
               val: tuple[np.ndarray, np.ndarray] | None = None, progress: ProgressFn | None = None,
               stop: StopFlag = None) -> LinearFit:
    """The head (and the views it averages) for one training set; nothing outside it is looked at."""
    if config.head == "adamw":
        views = candidates[0] if len(candidates) == 1 else "none"
        x = average_views(per_view, views, extracted)
        val_x = (average_views(val[0], views, extracted), val[1]) if val is not None else None
        head = fit_adamw_head(x, y, n_classes, config.n_epochs, config.learning_rate, config.weight_decay,
                              config.batch_size, config.seed, fold, folds, val_x, progress, stop)
        return LinearFit(head, views, {"head": "adamw"})
    best: LinearFit | None = None
    scores = {}
    for views in candidates:
        head, summary = fit_logistic_head(average_views(per_view, views, extracted), y, n_classes, groups,
                                          seed=config.seed, calibrate=config.calibrate, stop=stop)
        # Inner out-of-fold log loss after calibration: what each choice of views would give on new photos.
        score = nll(summary["oof_logits"], summary["oof_y"], head.temperature) if "oof_logits" in summary else 0.0
        scores[views] = round(score, 4)
        if best is None or score < best.summary["score"]:
            best = LinearFit(head, views, dict(summary, score=score))
    assert best is not None
    best.summary["views_inner_log_loss"] = scores
    if progress:
        progress(Progress("head", fold, folds, message=f"views {best.views}, C {best.head.C:.3g}, "
                                                          f"temperature {best.head.temperature:.2f}"))
    return best


# --- metrics ------------------------------------------------------------------------------------------
def calibration_metrics(logits: np.ndarray, y: np.ndarray, temperatures: np.ndarray) -> dict[str, float]:
    """ECE and log loss of held-out logits with temperature 1 and with the fitted temperatures."""
    from wildid.metrics import expected_calibration_error
    from wildid.predictor import softmax

    out = {}
    for label, t in (("uncalibrated", np.ones(len(y))), ("calibrated", np.asarray(temperatures, dtype=float))):
        scaled = logits / t[:, None]
        probs = softmax(scaled)
        correct = probs.argmax(1) == y
        out[f"ece_{label}"] = round(expected_calibration_error(correct, probs.max(1)), 4)
        out[f"log_loss_{label}"] = round(nll(scaled, y), 4)
    out["ece"] = out["ece_calibrated"]
    return out


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


def validation_groups(data: LabelledData, config: TrainConfig, warnings: list[str]) -> tuple[list[str] | None, str]:
    """Groups the folds keep together, and how to describe them: the --groups column, else near-duplicate photos."""
    if data.group_column:
        return data.groups, f"grouped by {data.group_column}"
    if not config.dedupe:
        return None, ""
    by_path = dict(zip(sorted({s.path for s in data.samples}), near_duplicate_groups(sorted({s.path for s in data.samples}))))
    groups = [by_path[s.path] for s in data.samples]
    folds = max(config.folds, 2)
    per_class: dict[str, set] = {}
    for label, group in zip(data.labels, groups):
        per_class.setdefault(label, set()).add(group)
    if min(len(g) for g in per_class.values()) < folds:
        warnings.append("near-duplicate photos could not be kept apart (too few distinct photos in a class): "
                        "folds are not grouped")
        return None, ""
    n_merged = len(groups) - len(set(groups))
    return groups, f"grouped by near-duplicate photos ({n_merged} image(s) share a group)"


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

    linear = config.mode == "linear"
    if linear:
        extracted, candidates = candidate_views(config, card)
        if config.head == "adamw" and config.views == "auto":
            extracted, candidates = "none", ("none",)
        cache = FeatureCache(card, weights, enabled=config.cache, seed=config.seed, views=extracted)
        per_view, bad = extract_features(initial, card, data, cache, config.batch_size, config.workers, report, stop,
                                         views=extracted)
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
        initial = reset_head(initial, len(present))
    index_of = {c: i for i, c in enumerate(data.classes)}
    y = np.array([index_of[label] for label in data.labels])
    n_classes = len(data.classes)
    groups, grouped_how = validation_groups(data, config, warnings)
    group_array = np.asarray(groups) if groups is not None else None

    def sub(idx: np.ndarray) -> list[str] | None:
        return None if group_array is None else group_array[idx].tolist()

    metrics: dict[str, Any] = {}
    oof_logits = None
    if config.folds >= 2:
        splits = make_folds(data.labels, groups, config.folds, config.seed)
        oof_logits = np.zeros((len(y), n_classes))
        temperatures = np.ones(len(y))
        fold_acc, fold_views = [], []
        for k, (tr, va) in enumerate(splits, start=1):
            if linear:
                fit = fit_linear(per_view[tr], y[tr], n_classes, sub(tr), config, extracted, candidates, k, len(splits),
                                 (per_view[va], y[va]), report, stop)
                oof_logits[va] = fit.head.logits(average_views(per_view[va], fit.views, extracted))
                temperatures[va] = fit.head.temperature
                fold_views.append(fit.views)
            else:
                model = finetune_model(initial, card, [images[i] for i in tr], y[tr], config, k, len(splits),
                                       ([images[i] for i in va], y[va]), report, stop)
                from wildid.predictor import build_transform

                oof_logits[va] = predict_logits(model, build_transform(card), [images[i] for i in va], config.batch_size)
            fold_acc.append(float((oof_logits[va].argmax(1) == y[va]).mean()))
            report(Progress("fold", k, len(splits), val_acc=fold_acc[-1]))
        if not linear and config.calibrate:
            # Fine-tuned folds: one temperature from all held-out logits (the final model is trained the same way).
            from wildid.training.head import fit_temperature

            temperatures[:] = fit_temperature(oof_logits, y)
        kind = "stratified group" if groups is not None else "stratified"
        recipe = (f"{config.mode} mode, logistic regression with C and views chosen by inner grouped CV, temperature "
                  f"from inner out-of-fold logits" if linear and config.head == "logreg" else
                  f"{config.mode} mode, {config.head if linear else 'fine-tuned'} head, {config.n_epochs} epochs")
        how = (f"{len(splits)}-fold {kind} cross-validation{', ' + grouped_how if grouped_how else ''} "
               f"({recipe}); accuracy is the mean over folds")
        metrics = validation_metrics(y, oof_logits.argmax(1), data.classes, fold_acc, how)
        metrics.update(calibration_metrics(oof_logits, y, temperatures))
        if fold_views:
            metrics["fold_views"] = fold_views
    else:
        metrics = {"measured_by": "not validated (--folds 0)"}
    metrics["images"] = len(y)

    # Final model on all data.
    temperature, views, fit_info = 1.0, "none", {}
    if linear:
        fit = fit_linear(per_view, y, n_classes, groups, config, extracted, candidates, 0, 0, None, report, stop)
        model = copy.deepcopy(initial)
        fit.head.install(model)
        temperature, views = fit.head.temperature, fit.views
        fit_info = {"head": config.head, "views": views}
        if fit.head.C is not None:
            fit_info.update(C=fit.head.C, inner_folds=fit.summary.get("inner_folds", 0),
                            views_inner_log_loss=fit.summary.get("views_inner_log_loss", {}))
    else:
        model = finetune_model(initial, card, images, y, config, 0, 0, None, report, stop)
        if config.calibrate and oof_logits is not None:
            temperature = float(np.median(temperatures))
        elif config.calibrate:
            warnings.append("not calibrated: fine-tuning with --folds 0 has no held-out logits to fit a temperature on")
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)

    provenance = {
        "trained": today(),
        "command": command,
        "data": data.source,
        "data_summary": data.summary(),
        "mode": config.mode,
        "weights": weights,
        "seed": config.seed,
        "folds": config.folds,
        "seconds": round(time.perf_counter() - started, 1),
        # Digests of the training files, so an evaluation on them is caught (wildid.fingerprint).
        "training_files": fingerprint.sketch(sample.path for sample in data.samples),
        **({"fit": fit_info} if fit_info else {}),
    }
    if not linear or config.head == "adamw":
        provenance["epochs"] = config.n_epochs
    if data.skipped:
        provenance["skipped_examples"] = [f"{p}: {r}" for p, r in data.skipped[:10]]
    if warnings:
        provenance["warnings"] = warnings
    card = card.replace(
        metrics=metrics,
        provenance=provenance,
        temperature=round(float(temperature), 6),
        views=views,
        description=f"{config.mode} transfer learning of {card.arch} on {len(y)} images from {Path(data.source).name}",
    )
    check_stop(stop)
    if folder is not None:
        card = save_model(model, card, folder)
        report(Progress("saved", message=str(folder)))
    return TrainResult(card, model, metrics, history, data, warnings, time.perf_counter() - started)


def reset_head(model: nn.Module, n_classes: int) -> nn.Module:
    model = copy.deepcopy(model)
    if hasattr(model, "reset_classifier"):
        model.reset_classifier(n_classes)
    else:
        model.fc = nn.Linear(model.fc.in_features, n_classes)
    return model


def command_line(data: str, out: str, config: TrainConfig, groups: str | None = None, overwrite: bool = False) -> str:
    """The `wildid train` command that reproduces a run (recorded in the card's provenance)."""
    defaults = TrainConfig()
    parts = ["wildid", "train", str(data), "--out", str(out)]
    if config.arch != defaults.arch:
        parts += ["--arch", config.arch]
    if config.mode != defaults.mode:
        parts += ["--mode", config.mode]
    if config.epochs:
        parts += ["--epochs", str(config.epochs)]
    if config.folds != defaults.folds:
        parts += ["--folds", str(config.folds)]
    if config.weights:
        parts += ["--weights", str(config.weights)]
    if groups:
        parts += ["--groups", groups]
    if config.nir:
        parts.append("--nir")
    if config.views != defaults.views:
        parts += ["--views", config.views]
    if config.head != defaults.head:
        parts += ["--head", config.head]
    if not config.calibrate:
        parts.append("--no-calibration")
    if config.mode == "finetune":
        parts += ["--unfreeze", str(config.unfreeze)]
    if config.mode == "progressive":
        parts += ["--step", str(config.step)]
    if config.lr:
        parts += ["--lr", str(config.lr)]
    if config.batch_size != defaults.batch_size:
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
