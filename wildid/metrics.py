"""Evaluation metrics: confusion matrices, per-class scores, confidence bins, corrections.

Pure functions over plain sequences (true labels, predicted labels, top-1 confidences);
no I/O, no plotting.  Counting metrics come from scikit-learn so they agree with it
exactly; the rest (confidence bins, coverage, calibration, class-proportion correction)
is small enough to read here.

    labels = label_order(y_true, y_pred, classes=card.classes)
    summary(y_true, y_pred, labels)            -> accuracy, macro_f1, balanced_accuracy, n
    per_class(y_true, y_pred, labels)          -> precision / recall / f1 / support per class
    confusion(y_true, y_pred, labels)          -> counts and row-normalised matrix
    confidence_bins(correct, confidence)       -> accuracy and count per 0.1-wide bin
    coverage_curve(correct, confidence)        -> "accept >= T" coverage and accuracy per T
    threshold_summary(correct, confidence, T)  -> kept %, accuracy, left for review
    reliability(correct, confidence)           -> reliability-diagram bins + ECE
    proportion_corrected(y_true, y_pred, population_counts, labels) -> corrected metrics
    rank_summary(ranks, correct_at_rank)       -> answers per rank, share correct at the rank given
    compare_table(reports)                     -> one row per model / variant
    empty_roc(is_empty, empty_score)           -> ROC of the empty score (empty = positive), AUC
    empty_threshold_summary(is_empty, empty_score, T) -> animals kept, frames hidden at T

"Accept above T" means ``confidence >= T``, the same rule as ``Prediction.uncertain``.
"""

from __future__ import annotations

import warnings
from collections import Counter
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

N_BINS = 10


# --- labels --------------------------------------------------------------------------------
def label_order(y_true: Iterable[str], y_pred: Iterable[str], classes: Sequence[str] | None = None) -> list[str]:
    """Labels that occur in truth or predictions: the model's class order first, then the rest sorted.

    Classes a model knows but that never occur are left out, so a 1000-class model gives a
    matrix over the classes in the data, not 1000 x 1000.
    """
    seen = set(map(str, y_true)) | set(map(str, y_pred))
    ordered = [c for c in (classes or ()) if c in seen]
    return ordered + sorted(seen - set(ordered))


def _as_str(values: Iterable) -> np.ndarray:
    return np.asarray([str(v) for v in values], dtype=object)


def _check_same_length(*arrays: Sequence) -> None:
    lengths = {len(a) for a in arrays}
    if len(lengths) > 1:
        raise ValueError(f"inputs differ in length: {sorted(lengths)}")


# --- counting metrics (scikit-learn) ---------------------------------------------------------
def confusion(y_true: Sequence[str], y_pred: Sequence[str], labels: Sequence[str] | None = None) -> dict[str, Any]:
    """Rows are true labels, columns predicted labels; ``normalized`` rows sum to 1 (0 for empty rows)."""
    from sklearn.metrics import confusion_matrix

    _check_same_length(y_true, y_pred)
    labels = list(labels) if labels is not None else label_order(y_true, y_pred)
    if len(y_true) == 0:
        counts = np.zeros((len(labels), len(labels)), dtype=int)
    else:
        with warnings.catch_warnings():
            # sklearn warns when only one label occurs; we always pass the full label list.
            warnings.simplefilter("ignore", UserWarning)
            counts = confusion_matrix(_as_str(y_true), _as_str(y_pred), labels=labels)
    return {"labels": labels, "counts": counts, "normalized": row_normalize(counts)}


def row_normalize(counts: np.ndarray) -> np.ndarray:
    counts = np.asarray(counts, dtype=float)
    totals = counts.sum(axis=1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(totals > 0, counts / np.where(totals > 0, totals, 1), 0.0)


def per_class(y_true: Sequence[str], y_pred: Sequence[str], labels: Sequence[str] | None = None) -> list[dict[str, Any]]:
    """Precision, recall, F1 and support per label (0 where undefined, as scikit-learn with zero_division=0)."""
    from sklearn.metrics import precision_recall_fscore_support

    _check_same_length(y_true, y_pred)
    labels = list(labels) if labels is not None else label_order(y_true, y_pred)
    if len(y_true) == 0:
        return [dict(label=l, precision=0.0, recall=0.0, f1=0.0, support=0, predicted=0) for l in labels]
    precision, recall, f1, support = precision_recall_fscore_support(
        _as_str(y_true), _as_str(y_pred), labels=labels, zero_division=0
    )
    predicted = Counter(map(str, y_pred))
    return [
        {
            "label": label,
            "precision": float(p),
            "recall": float(r),
            "f1": float(f),
            "support": int(s),
            "predicted": int(predicted.get(label, 0)),
        }
        for label, p, r, f, s in zip(labels, precision, recall, f1, support)
    ]


def summary(y_true: Sequence[str], y_pred: Sequence[str], labels: Sequence[str] | None = None) -> dict[str, Any]:
    """Overall accuracy, macro-F1 (over ``labels``) and balanced accuracy (mean recall over true classes)."""
    from sklearn.metrics import accuracy_score, balanced_accuracy_score, f1_score

    _check_same_length(y_true, y_pred)
    n = len(y_true)
    if n == 0:
        return {"n": 0, "accuracy": float("nan"), "macro_f1": float("nan"), "balanced_accuracy": float("nan")}
    labels = list(labels) if labels is not None else label_order(y_true, y_pred)
    t, p = _as_str(y_true), _as_str(y_pred)
    with warnings.catch_warnings():
        # balanced accuracy warns when a predicted label never occurs in truth; the value is still right.
        warnings.simplefilter("ignore")
        balanced = balanced_accuracy_score(t, p)
    return {
        "n": n,
        "accuracy": float(accuracy_score(t, p)),
        "macro_f1": float(f1_score(t, p, labels=labels, average="macro", zero_division=0)),
        "balanced_accuracy": float(balanced),
    }


# --- confidence ----------------------------------------------------------------------------
def _bin_index(confidence: np.ndarray, n_bins: int) -> np.ndarray:
    """Bins [0, 0.1), [0.1, 0.2), ..., [0.9, 1.0]; 1.0 falls in the last bin."""
    # Round first so 0.3 (stored as 0.29999...) lands in [0.3, 0.4) as a reader expects.
    scaled = np.round(np.asarray(confidence, dtype=float) * n_bins, 9)
    return np.clip(np.floor(scaled), 0, n_bins - 1).astype(int)


def _correct_and_confidence(correct: Sequence[bool], confidence: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    _check_same_length(correct, confidence)
    return np.asarray(correct, dtype=bool), np.asarray(confidence, dtype=float)


def confidence_bins(correct: Sequence[bool], confidence: Sequence[float], n_bins: int = N_BINS) -> list[dict[str, Any]]:
    """One row per confidence bin: range, count, correct, accuracy (None when empty), mean confidence."""
    correct, confidence = _correct_and_confidence(correct, confidence)
    index = _bin_index(confidence, n_bins)
    rows = []
    for b in range(n_bins):
        mask = index == b
        count = int(mask.sum())
        rows.append(
            {
                "bin": f"{b / n_bins:.1f}-{(b + 1) / n_bins:.1f}",
                "lower": b / n_bins,
                "upper": (b + 1) / n_bins,
                "count": count,
                "correct": int(correct[mask].sum()),
                "accuracy": float(correct[mask].mean()) if count else None,
                "mean_confidence": float(confidence[mask].mean()) if count else None,
            }
        )
    return rows


def reliability(correct: Sequence[bool], confidence: Sequence[float], n_bins: int = N_BINS) -> dict[str, Any]:
    """Reliability-diagram data and expected calibration error.

    ECE = sum over bins of (bin count / N) * |accuracy(bin) - mean confidence(bin)|, with
    equal-width bins; maximum calibration error (MCE) is the largest such gap.
    """
    bins = confidence_bins(correct, confidence, n_bins)
    n = sum(row["count"] for row in bins)
    gaps = [abs(row["accuracy"] - row["mean_confidence"]) for row in bins if row["count"]]
    ece = sum(row["count"] / n * abs(row["accuracy"] - row["mean_confidence"]) for row in bins if row["count"]) if n else float("nan")
    return {"bins": bins, "ece": float(ece), "mce": float(max(gaps)) if gaps else float("nan"), "n": n}


def expected_calibration_error(correct: Sequence[bool], confidence: Sequence[float], n_bins: int = N_BINS) -> float:
    return reliability(correct, confidence, n_bins)["ece"]


def threshold_summary(correct: Sequence[bool], confidence: Sequence[float], threshold: float) -> dict[str, Any]:
    """Accept everything with confidence >= threshold; the rest goes to manual review."""
    correct, confidence = _correct_and_confidence(correct, confidence)
    n = len(correct)
    kept = confidence >= threshold
    n_kept = int(kept.sum())
    accuracy = float(correct[kept].mean()) if n_kept else None
    coverage = n_kept / n if n else 0.0
    review = n - n_kept
    if n_kept:
        text = (f"Accept above {threshold:.2f}: keeps {coverage:.0%} of images ({n_kept} of {n}) "
                f"at {accuracy:.1%} accuracy; {review} left for review.")
    else:
        text = f"Accept above {threshold:.2f}: keeps no images; all {n} left for review."
    return {
        "threshold": float(threshold),
        "n": n,
        "kept": n_kept,
        "coverage": coverage,
        "accuracy": accuracy,
        "errors_kept": int((~correct[kept]).sum()),
        "review": review,
        "text": text,
    }


def coverage_curve(correct: Sequence[bool], confidence: Sequence[float], thresholds: Sequence[float] | None = None) -> list[dict[str, Any]]:
    """threshold_summary at each threshold (default 0.00, 0.01, ..., 1.00), without the text."""
    correct, confidence = _correct_and_confidence(correct, confidence)
    if thresholds is None:
        thresholds = np.round(np.linspace(0, 1, 101), 2)
    rows = []
    for t in thresholds:
        row = threshold_summary(correct, confidence, float(t))
        row.pop("text")
        rows.append(row)
    return rows


# --- the empty filter ------------------------------------------------------------------------
def _scored(is_empty: Sequence[bool], empty_score: Sequence[float | None]) -> tuple[np.ndarray, np.ndarray]:
    """Frames with a score (a folder of fewer than three frames has no background, so no score)."""
    _check_same_length(is_empty, empty_score)
    truth = np.asarray([bool(e) for e in is_empty], dtype=bool)
    score = np.asarray([np.nan if s is None else float(s) for s in empty_score], dtype=float)
    keep = ~np.isnan(score)
    return truth[keep], score[keep]


def empty_roc(is_empty: Sequence[bool], empty_score: Sequence[float | None]) -> dict[str, Any] | None:
    """How well empty_score finds empty frames, as scikit-learn's ROC (positive = empty).

    ``hidden_animals`` (the false-positive rate) is the share of animal frames a threshold would
    hide; ``hidden_empty`` (the true-positive rate) the share of empty frames it would hide.
    None when the labels hold only one of the two kinds (no curve to draw).
    """
    from sklearn.metrics import roc_auc_score, roc_curve

    truth, score = _scored(is_empty, empty_score)
    if truth.all() or not truth.any():
        return None
    fpr, tpr, thresholds = roc_curve(truth, score)
    # The first threshold is +inf (hide nothing): JSON has no infinity, so it is stored as None.
    return {
        "hidden_animals": fpr.tolist(),
        "hidden_empty": tpr.tolist(),
        "thresholds": [None if not np.isfinite(t) else float(t) for t in thresholds],
        "auc": float(roc_auc_score(truth, score)),
        "n_empty": int(truth.sum()),
        "n_animal": int((~truth).sum()),
    }


def empty_threshold_summary(is_empty: Sequence[bool], empty_score: Sequence[float | None], threshold: float) -> dict[str, Any]:
    """What hiding frames with empty_score >= threshold costs and saves on labelled frames."""
    _check_same_length(is_empty, empty_score)
    n_frames = len(is_empty)
    truth, score = _scored(is_empty, empty_score)
    hidden = score >= threshold
    animals, empties = ~truth, truth
    n_animal, n_empty = int(animals.sum()), int(empties.sum())
    animals_hidden = int((hidden & animals).sum())
    empties_hidden = int((hidden & empties).sum())
    n_hidden = int(hidden.sum())
    recall = (n_animal - animals_hidden) / n_animal if n_animal else None
    text = (f"Hide frames with empty_score ≥ {threshold:.2f}: hides {n_hidden} of {n_frames} frames "
            f"({n_hidden / n_frames:.0%})" if n_frames else f"Hide frames with empty_score ≥ {threshold:.2f}: no frames")
    if n_animal:
        text += f"; keeps {n_animal - animals_hidden} of {n_animal} animal frames (recall {recall:.1%})"
    if n_empty:
        text += f"; hides {empties_hidden} of {n_empty} empty frames"
    return {
        "threshold": float(threshold),
        "frames": n_frames,
        "hidden": n_hidden,
        "hidden_share": n_hidden / n_frames if n_frames else 0.0,
        "animals": n_animal,
        "animals_hidden": animals_hidden,
        "animal_recall": recall,
        "empties": n_empty,
        "empties_hidden": empties_hidden,
        "empty_recall": empties_hidden / n_empty if n_empty else None,
        "unscored": int(n_frames - len(truth)),
        "text": text + ".",
    }


# --- class-proportion correction -----------------------------------------------------------
def proportion_corrected(
    y_true: Sequence[str],
    y_pred: Sequence[str],
    population_counts: Mapping[str, int],
    labels: Sequence[str] | None = None,
) -> dict[str, Any]:
    """Metrics as if the labelled sample had the class proportions of the full predicted set.

    A labelled sample that takes a fixed number per predicted class over-represents rare
    classes.  Each predicted-class column j of the sample's confusion matrix is scaled by
    M_j / n_j (M_j: images predicted j in the full set, n_j: labelled images predicted j),
    giving an estimate of the full set's confusion matrix.  Precision per class is then
    unchanged (it is a within-column ratio); recall, F1, accuracy and balanced accuracy move.

    Predicted classes present in the full set but absent from the sample cannot be scaled;
    they are listed in ``unsampled`` and their images are left out of the estimate.
    """
    _check_same_length(y_true, y_pred)
    population = {str(k): int(v) for k, v in population_counts.items() if int(v) > 0}
    labels = list(labels) if labels is not None else label_order(y_true, y_pred)
    raw = confusion(y_true, y_pred, labels)["counts"].astype(float)
    sampled = raw.sum(axis=0)
    weights = np.array(
        [population.get(label, 0) / sampled[j] if sampled[j] else 0.0 for j, label in enumerate(labels)]
    )
    counts = raw * weights[None, :]
    sampled_labels = {label for j, label in enumerate(labels) if sampled[j]}
    unsampled = {label: count for label, count in sorted(population.items()) if label not in sampled_labels}
    metrics = metrics_from_confusion(counts, labels)
    metrics.update(
        counts=counts,
        weights={label: float(w) for label, w in zip(labels, weights)},
        population={label: population.get(label, 0) for label in labels},
        unsampled=unsampled,
    )
    return metrics


def metrics_from_confusion(counts: np.ndarray, labels: Sequence[str]) -> dict[str, Any]:
    """Precision / recall / F1 per class and overall scores from a (possibly weighted) confusion matrix.

    Agrees with scikit-learn's definitions (zero_division=0; macro-F1 over all ``labels``;
    balanced accuracy = mean recall over classes with true support).
    """
    counts = np.asarray(counts, dtype=float)
    tp = np.diag(counts)
    predicted = counts.sum(axis=0)
    support = counts.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        precision = np.where(predicted > 0, tp / np.where(predicted > 0, predicted, 1), 0.0)
        recall = np.where(support > 0, tp / np.where(support > 0, support, 1), 0.0)
        denom = precision + recall
        f1 = np.where(denom > 0, 2 * precision * recall / np.where(denom > 0, denom, 1), 0.0)
    total = counts.sum()
    rows = [
        {"label": label, "precision": float(p), "recall": float(r), "f1": float(f), "support": float(s), "predicted": float(m)}
        for label, p, r, f, s, m in zip(labels, precision, recall, f1, support, predicted)
    ]
    return {
        "per_class": rows,
        "summary": {
            "n": float(total),
            "accuracy": float(tp.sum() / total) if total else float("nan"),
            "macro_f1": float(f1.mean()) if len(labels) else float("nan"),
            "balanced_accuracy": float(recall[support > 0].mean()) if (support > 0).any() else float("nan"),
        },
    }


# --- answers at a rank (taxonomic roll-up) -----------------------------------------------------
# Ranks an answer may have, lowest first; "label" is a class answer without a taxonomy,
# "uncertain" no answer at all.
ANSWER_RANKS = ("label", "species", "genus", "tribe", "subfamily", "family", "order", "class", "phylum", "uncertain")


def rank_summary(ranks: Sequence[str], correct_at_rank: Sequence[bool | None]) -> dict[str, Any]:
    """How many answers were given at each rank and the share right at the rank given.

    ``ranks[i]`` is the rank of answer i (see ``ANSWER_RANKS``); ``correct_at_rank[i]`` whether
    the true label lies in the answered taxon, or None when that cannot be checked (a true
    label with no known taxonomy). "Uncertain" items are no answer: they count in ``uncertain``,
    not in the shares.
    """
    _check_same_length(ranks, correct_at_rank)
    order = {rank: i for i, rank in enumerate(ANSWER_RANKS)}
    per_rank = []
    for rank in sorted(set(ranks), key=lambda r: (order.get(r, len(order)), r)):
        picked = [c for r, c in zip(ranks, correct_at_rank) if r == rank]
        checked = [c for c in picked if c is not None]
        per_rank.append({
            "rank": rank,
            "n": len(picked),
            "checked": len(checked),
            "correct": int(sum(checked)),
            "share_correct": (sum(checked) / len(checked)) if checked and rank != "uncertain" else None,
        })
    answered = [(r, c) for r, c in zip(ranks, correct_at_rank) if r != "uncertain"]
    checked = [c for _, c in answered if c is not None]
    return {
        "n": len(ranks),
        "answers": len(answered),
        "uncertain": len(ranks) - len(answered),
        "checked": len(checked),
        "correct": int(sum(checked)),
        "share_correct": (sum(checked) / len(checked)) if checked else None,
        "per_rank": per_rank,
    }


def rank_text(summary: Mapping[str, Any]) -> str:
    """``correct at the rank given: 91.2% of 57 answers; answers by rank: species 40, family 12, ..., uncertain 3``."""
    share = summary.get("share_correct")
    head = (f"correct at the rank given: {share:.1%} of {summary['checked']} answers" if share is not None
            else "correct at the rank given: no answer could be checked")
    counts = ", ".join(f"{row['rank']} {row['n']}" for row in summary["per_rank"])
    return f"{head}; answers by rank: {counts}"


# --- comparison ------------------------------------------------------------------------------
COMPARE_COLUMNS = ("name", "n", "accuracy", "macro_f1", "balanced_accuracy", "ece", "threshold", "coverage", "accuracy_at_threshold", "review")


def compare_table(reports: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """One row per model / variant report (as built by ``wildid.evaluate.build_report``), plus per-class F1."""
    rows = []
    for report in reports:
        s, t = report["summary"], report.get("threshold") or {}
        row = {
            "name": report["name"],
            "n": s["n"],
            "accuracy": s["accuracy"],
            "macro_f1": s["macro_f1"],
            "balanced_accuracy": s["balanced_accuracy"],
            "ece": (report.get("calibration") or {}).get("ece"),
            "threshold": t.get("threshold"),
            "coverage": t.get("coverage"),
            "accuracy_at_threshold": t.get("accuracy"),
            "review": t.get("review"),
        }
        ranks = report.get("ranks")
        if ranks:
            row["correct_at_rank"] = ranks["share_correct"]
        corrected = report.get("corrected")
        if corrected:
            row["corrected_accuracy"] = corrected["summary"]["accuracy"]
            row["corrected_macro_f1"] = corrected["summary"]["macro_f1"]
        for cls in report.get("per_class", []):
            row[f"f1 {cls['label']}"] = cls["f1"]
        rows.append(row)
    return rows
