"""The linear head on frozen features, and temperature scaling.

The default head is scikit-learn's multinomial logistic regression (L-BFGS) on standardised
features, its inverse regularisation C chosen by (grouped) inner cross-validation on the log
loss.  Out-of-fold logits of that inner CV give the temperature (one scalar minimising the
negative log-likelihood), so the confidence of the final head is calibrated without touching
any held-out data of an outer fold.  The weights are folded back onto raw features, so the head
is one ``nn.Linear`` in the saved network, for torch and ONNX alike.

The earlier hand-written numpy AdamW softmax regression stays as :func:`fit_adamw_head`, the
baseline that bench/train.py compares against.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
from torch import nn

from wildid.errors import WildidError
from wildid.training.data import inner_folds
from wildid.training.progress import Progress, ProgressFn, StopFlag, check_stop, with_val

C_GRID = tuple(float(c) for c in np.logspace(-3, 1, 9))  # 0.001 ... 10, half a decade apart
INNER_FOLDS = 5  # 3 folds fitted the temperature on heads trained on 2/3 of the data: biased, ECE 0.069 vs 0.045 (tracks-families)
MAX_ITER = 1000


def classifier_layer(model: nn.Module) -> nn.Linear:
    head = model.get_classifier() if hasattr(model, "get_classifier") else getattr(model, "fc", None)
    if not isinstance(head, nn.Linear):
        raise WildidError(f"{type(model).__name__}: the classifier is not a single linear layer; use linear-probe friendly archs")
    return head


@dataclass
class LinearHead:
    weight: np.ndarray  # [C, D] acting on raw (unstandardised) features
    bias: np.ndarray  # [C]
    temperature: float = 1.0
    C: float | None = None  # the regularisation chosen (logistic regression)

    def logits(self, features: np.ndarray) -> np.ndarray:
        return features @ self.weight.T + self.bias

    def install(self, model: nn.Module) -> None:
        head = classifier_layer(model)
        with torch.no_grad():
            head.weight.copy_(torch.from_numpy(self.weight.astype(np.float32)))
            head.bias.copy_(torch.from_numpy(self.bias.astype(np.float32)))


# --- calibration ---------------------------------------------------------------------------------
def log_softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))


def nll(logits: np.ndarray, y: np.ndarray, temperature: float = 1.0) -> float:
    """Mean negative log-likelihood of the true classes under softmax(logits / T)."""
    return float(-log_softmax(np.asarray(logits, dtype=np.float64) / temperature)[np.arange(len(y)), y].mean())


def fit_temperature(logits: np.ndarray, y: np.ndarray) -> float:
    """Temperature scaling (Guo et al. 2017): the T > 0 minimising the NLL of held-out logits.

    One scalar, so the ranking of classes (the top-1) never changes.  Searched over log T with
    scipy's bounded scalar minimiser (T in [0.05, 20]).
    """
    from scipy.optimize import minimize_scalar

    logits = np.asarray(logits, dtype=np.float64)
    y = np.asarray(y)
    if len(y) == 0:
        return 1.0
    result = minimize_scalar(lambda log_t: nll(logits, y, math.exp(log_t)), bounds=(math.log(0.05), math.log(20.0)),
                             method="bounded", options={"xatol": 1e-4})
    return float(math.exp(result.x))


# --- logistic regression (the default head) ------------------------------------------------------
def _pipeline(C: float, seed: int):
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    return make_pipeline(StandardScaler(), LogisticRegression(C=C, max_iter=MAX_ITER, random_state=seed))


def _fold_back(pipeline, n_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """Logistic-regression weights on standardised features -> [C, D] weight and bias on raw features."""
    scaler, clf = pipeline[0], pipeline[-1]
    coef, intercept = clf.coef_, clf.intercept_
    if coef.shape[0] == 1 and len(clf.classes_) == 2:  # binary: sigmoid(z) == softmax([-z/2, z/2])[1]
        coef = np.vstack([-coef / 2, coef / 2])
        intercept = np.array([-intercept[0] / 2, intercept[0] / 2])
    scale = scaler.scale_
    weight = coef / scale[None, :]
    bias = intercept - weight @ scaler.mean_
    # Classes absent from this training part get a very low logit instead of no row at all.
    full_w = np.zeros((n_classes, coef.shape[1]))
    full_b = np.full(n_classes, -1e4)
    full_w[clf.classes_] = weight
    full_b[clf.classes_] = bias
    return full_w, full_b


def _raw_logits(clf, x_standardised: np.ndarray, n_classes: int) -> np.ndarray:
    """Softmax logits of a fitted LogisticRegression on standardised features (all classes, in order)."""
    coef, intercept = clf.coef_, clf.intercept_
    if coef.shape[0] == 1 and len(clf.classes_) == 2:
        coef, intercept = np.vstack([-coef / 2, coef / 2]), np.array([-intercept[0] / 2, intercept[0] / 2])
    out = np.full((len(x_standardised), n_classes), -1e4)
    out[:, clf.classes_] = x_standardised @ coef.T + intercept
    return out


def fit_logistic_head(
    features: np.ndarray,
    y: np.ndarray,
    n_classes: int,
    groups: Sequence[str] | None = None,
    seed: int = 0,
    C_grid: Sequence[float] = C_GRID,
    n_inner: int = INNER_FOLDS,
    calibrate: bool = True,
    stop: StopFlag = None,
) -> tuple[LinearHead, dict]:
    """Logistic regression with C chosen by grouped inner CV (log loss); temperature from its out-of-fold logits.

    Returns the head fitted on all of ``features`` and a summary (C, inner log loss per C,
    temperature, the out-of-fold logits).  With too few images per class for an inner CV,
    C = 1 and T = 1.
    """
    from threadpoolctl import threadpool_limits

    # One BLAS thread: these matrices are small, and on a busy 2-core machine multi-threaded BLAS spends
    # its time waiting (measured 5-20x slower per lbfgs fit with 2 threads under load).
    with threadpool_limits(1):
        return _fit_logistic_head(features, y, n_classes, groups, seed, C_grid, n_inner, calibrate, stop)


def _fit_logistic_head(features, y, n_classes, groups, seed, C_grid, n_inner, calibrate, stop):
    folds = inner_folds(y, groups, n_inner, seed)
    summary: dict = {"inner_folds": len(folds)}
    best_C, oof = 1.0, None
    if folds:
        from sklearn.base import clone

        grid = sorted(C_grid)
        oof_by_C = {C: np.zeros((len(y), n_classes)) for C in grid}
        covered = np.zeros(len(y), dtype=bool)
        for tr, va in folds:
            # One scaler per fold; C ascending with warm starts, so each fit starts from the last.
            pipe = _pipeline(grid[0], seed)
            pipe[-1].set_params(warm_start=True)
            scaler = clone(pipe[0]).fit(features[tr])
            x_tr, x_va = scaler.transform(features[tr]), scaler.transform(features[va])
            for C in grid:
                check_stop(stop)
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")  # lbfgs convergence notes at tiny C
                    clf = pipe[-1].set_params(C=C).fit(x_tr, y[tr])
                oof_by_C[C][va] = _raw_logits(clf, x_va, n_classes)
            covered[va] = True
        losses = {C: nll(oof_by_C[C][covered], y[covered]) for C in grid}
        best_C = min(losses, key=losses.get)
        oof = (oof_by_C[best_C][covered], y[covered])
        summary["inner_log_loss"] = {f"{C:.3g}": round(v, 4) for C, v in losses.items()}
    check_stop(stop)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pipe = _pipeline(best_C, seed).fit(features, y)
    weight, bias = _fold_back(pipe, n_classes)
    temperature = fit_temperature(*oof) if (calibrate and oof is not None) else 1.0
    summary.update(C=best_C, temperature=temperature)
    if oof is not None:
        summary["oof_logits"], summary["oof_y"] = oof
    return LinearHead(weight, bias, temperature, best_C), summary


# --- the earlier numpy AdamW head (bench baseline) -------------------------------------------------
def fit_adamw_head(
    features: np.ndarray,
    y: np.ndarray,
    n_classes: int,
    epochs: int = 60,
    lr: float = 1e-2,
    weight_decay: float = 1e-4,
    batch_size: int = 32,
    seed: int = 0,
    fold: int = 0,
    folds: int = 0,
    val: tuple[np.ndarray, np.ndarray] | None = None,
    progress: ProgressFn | None = None,
    stop: StopFlag = None,
) -> LinearHead:
    """Softmax regression on standardised features (mini-batch AdamW, cosine schedule), folded back to raw features.

    The head wildid used before logistic regression; kept as the baseline of bench/train.py.
    """
    rng = np.random.default_rng(seed + fold)
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
    batch = max(8, batch_size)
    step = 0
    for epoch in range(1, epochs + 1):
        check_stop(stop)
        rate = lr * 0.5 * (1 + math.cos(math.pi * (epoch - 1) / epochs))
        order = rng.permutation(len(x))
        total_loss, correct = 0.0, 0
        for start in range(0, len(x), batch):
            idx = order[start:start + batch]
            xb, yb = x[idx], y[idx]
            probs = np.exp(log_softmax(xb @ w + b))
            total_loss -= float(np.log(np.clip(probs[np.arange(len(idx)), yb], 1e-12, None)).sum())
            correct += int((probs.argmax(1) == yb).sum())
            probs[np.arange(len(idx)), yb] -= 1.0
            grad_w, grad_b = xb.T @ probs / len(idx), probs.mean(axis=0)
            step += 1
            w *= 1 - rate * weight_decay  # decoupled weight decay (AdamW)
            for param, grad, m, v in ((w, grad_w, m_w, v_w), (b, grad_b, m_b, v_b)):
                m *= beta1
                m += (1 - beta1) * grad
                v *= beta2
                v += (1 - beta2) * grad * grad
                param -= rate * (m / (1 - beta1 ** step)) / (np.sqrt(v / (1 - beta2 ** step)) + eps)
        report = Progress("epoch", fold, folds, epoch, epochs, total_loss / len(x), correct / len(x))
        if xv is not None:
            val_logits = xv @ w + b
            report = with_val(report, nll(val_logits, yv), float((val_logits.argmax(1) == yv).mean()))
        if progress:
            progress(report)
    weight = (w / std[:, None]).T  # [C, D] on raw features
    bias = b - weight @ mean
    return LinearHead(weight, bias)
