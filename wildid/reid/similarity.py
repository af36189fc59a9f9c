"""Similarity of embeddings: per-individual scores, open-set thresholds, separation measures."""

from __future__ import annotations

from typing import Sequence

import numpy as np

from wildid.errors import DataError, WildidError

AGGREGATES = ("max", "mean")


def individual_scores(
    similarities: np.ndarray, labels: Sequence[str], aggregate: str = "max", top_n: int = 3
) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Per individual: a score from image similarities ``[Q, G]`` -> (names, scores [Q, I], best image [Q, I]).

    ``max``: the best image; ``mean``: the mean of the individual's ``top_n`` best images
    (steadier when an individual has many photos, some of the wrong flank).
    """
    if aggregate not in AGGREGATES:
        raise WildidError(f"unknown aggregate {aggregate!r}; use max or mean")
    similarities = np.atleast_2d(similarities)
    labels = np.asarray(labels)
    names = sorted(set(labels.tolist()))
    scores = np.full((similarities.shape[0], len(names)), -np.inf, dtype=np.float32)
    best = np.zeros((similarities.shape[0], len(names)), dtype=np.int64)
    for j, name in enumerate(names):
        cols = np.flatnonzero(labels == name)
        sims = similarities[:, cols]
        best[:, j] = cols[np.argmax(sims, axis=1)]
        if aggregate == "max" or sims.shape[1] == 1:
            scores[:, j] = sims.max(axis=1)
        else:
            n = min(top_n, sims.shape[1])
            scores[:, j] = np.sort(sims, axis=1)[:, -n:].mean(axis=1)
    return names, scores, best


def choose_threshold(known: Sequence[float], unknown: Sequence[float]) -> float:
    """The similarity threshold maximising Youden's J = TPR - FPR (= 2 x balanced accuracy - 1).

    ``known``: best-match scores of queries whose individual is in the gallery;
    ``unknown``: best-match scores of queries whose individual is not.  The threshold is the
    middle of the interval of thresholds where J peaks (midpoints between neighbouring scores).
    """
    known = np.asarray(known, dtype=np.float64)
    unknown = np.asarray(unknown, dtype=np.float64)
    if not len(known) or not len(unknown):
        raise DataError("choosing a threshold needs both known-match and unknown scores")
    values = np.unique(np.concatenate([known, unknown]))
    candidates = np.concatenate([[values[0] - 1e-6], (values[:-1] + values[1:]) / 2, [values[-1] + 1e-6]])
    tpr = (known[None, :] >= candidates[:, None]).mean(axis=1)
    fpr = (unknown[None, :] >= candidates[:, None]).mean(axis=1)
    j = tpr - fpr
    best = np.flatnonzero(np.isclose(j, j.max()))
    # Where J is flat (e.g. a clean gap between the two groups), take the middle of that interval.
    return float(np.clip((candidates[best.min()] + candidates[best.max()]) / 2, 0.0, 1.0))


def open_set_scores(
    embeddings: np.ndarray, labels: Sequence[str], aggregate: str = "max", top_n: int = 3
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Leave-one-out open-set simulation on one labelled set of embeddings.

    For each image whose individual has another image: the *known* score is its score for its
    own individual with itself left out; the *unknown* score is its best score among the other
    individuals (as if its individual had never been seen).  Also returns whether the top
    individual was the right one (leave-one-out top-1).
    """
    labels = np.asarray(labels)
    sims = embeddings @ embeddings.T
    np.fill_diagonal(sims, -np.inf)
    names, scores, _ = individual_scores(sims, labels, aggregate, top_n)
    name_index = {name: j for j, name in enumerate(names)}
    known, unknown, correct = [], [], []
    for i, label in enumerate(labels):
        own = name_index[label]
        if (labels == label).sum() < 2 or len(names) < 2:
            continue
        row = scores[i].copy()
        known.append(row[own])
        row_other = np.delete(row, own)
        unknown.append(row_other.max())
        correct.append(int(np.argmax(row)) == own)
    return np.asarray(known), np.asarray(unknown), np.asarray(correct, dtype=bool)


def calibrate_threshold(embeddings: np.ndarray, labels: Sequence[str], aggregate: str = "max") -> float | None:
    """Threshold from a labelled set (validation individuals, or a gallery itself); None if too small."""
    known, unknown, _ = open_set_scores(embeddings, labels, aggregate)
    if len(known) < 2 or len(unknown) < 2:
        return None
    return choose_threshold(known, unknown)


def pair_auroc(embeddings: np.ndarray, labels: Sequence[str]) -> float:
    """AUROC of same-individual vs different-individual pair similarities: the separation measure."""
    from sklearn.metrics import roc_auc_score

    labels = np.asarray(labels)
    sims = embeddings @ embeddings.T
    upper = np.triu_indices(len(labels), k=1)
    same = (labels[:, None] == labels[None, :])[upper]
    if same.all() or not same.any():
        return float("nan")
    return float(roc_auc_score(same, sims[upper]))
