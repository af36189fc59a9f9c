"""Checks that keep an evaluation honest, and the label mapping that makes one possible.

- **Labels the model cannot predict.**  A first-day project labels frames "vole", "stoat",
  "empty"; the general model knows 398 ImageNet classes and none of those.  Scored as is, that
  is 0% accuracy by construction: the report says so and offers a mapping (for example every
  label but "empty" to "animal", and the empty score deciding "empty" for the predictions).
- **Evaluated on its own training images.**  The card keeps a fingerprint of the training
  files (:mod:`wildid.fingerprint`); matches are counted and reported.
- **The empty filter against the labels**: ROC of the empty score (empty = positive) and what
  the default threshold hides.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping, Sequence

from wildid import fingerprint
from wildid import metrics as M
from wildid.background import DEFAULT_EMPTY_THRESHOLD

EMPTY = "empty"
ANIMAL = "animal"


def is_empty_label(label: str) -> bool:
    return str(label).strip().casefold() == EMPTY


def label_check(y_true: Sequence[str], classes: Sequence[str]) -> dict[str, Any] | None:
    """Which true labels the model can never predict (None when its classes are unknown)."""
    if not classes:
        return None
    known = set(classes)
    true_labels = sorted(set(y_true))
    unknown = [label for label in true_labels if label not in known]
    return {
        "n_classes": len(classes),
        "true_labels": true_labels,
        "unknown": unknown,
        "none_known": bool(true_labels) and len(unknown) == len(true_labels),
    }


def label_warning(check: Mapping[str, Any] | None, name: str) -> str | None:
    if not check or not check["unknown"]:
        return None
    shown = ", ".join(check["unknown"][:8]) + (" …" if len(check["unknown"]) > 8 else "")
    if check["none_known"]:
        return (f"No true label is a class of {name} ({check['n_classes']} classes): the labels ({shown}) can never be "
                f"predicted, so accuracy is 0% by construction. Map the labels (e.g. every label but 'empty' to "
                f"'animal') to score what the model can do.")
    return (f"{len(check['unknown'])} true label(s) are not classes of {name} and are always counted wrong: {shown}.")


def training_overlap(paths: Sequence[str], training_files: Mapping | None) -> dict[str, Any] | None:
    found = fingerprint.overlap(paths, training_files)
    return found.as_dict() if found is not None else None


def overlap_warning(overlap: Mapping[str, Any] | None, name: str) -> str | None:
    if not overlap or not overlap["matched"]:
        return None
    if overlap["exact"]:
        amount = f"{overlap['matched']} of the {overlap['evaluated']} evaluated images ({overlap['share']:.0%})"
    else:
        amount = f"about {overlap['share']:.0%} of the evaluated images (estimated from a sample)"
    return (f"{amount} were training images of {name}: on them the model is scored on what it memorised, so these "
            f"numbers overstate its accuracy on new frames. Evaluate on frames it was not trained on "
            f"(e.g. {', '.join(overlap['examples'][:3])} were in its training set).")


def empty_section(y_true: Sequence[str], empty_scores: Sequence[float | None],
                  threshold: float = DEFAULT_EMPTY_THRESHOLD) -> dict[str, Any] | None:
    """The empty score judged against the labels; None without scores."""
    if not empty_scores or all(score is None for score in empty_scores):
        return None
    truth = [is_empty_label(label) for label in y_true]
    return {
        "roc": M.empty_roc(truth, empty_scores),
        "summary": M.empty_threshold_summary(truth, empty_scores, threshold),
    }


def regroup(run, mapping: Mapping[str, str], empty_threshold: float | None = None):
    """A copy of an evaluate.Run with labels mapped (both truth and predictions; unmapped labels
    stay).  With ``empty_threshold``, a frame whose empty_score reaches it counts as predicted
    "empty" whatever the model said: the empty filter and the model judged together."""
    def mapped(label: str) -> str:
        return mapping.get(label, label) or label

    y_pred = [mapped(label) for label in run.y_pred]
    note = "Labels mapped: " + ", ".join(f"{k} → {v}" for k, v in sorted(mapping.items()) if v and v != k)[:300]
    notes = list(run.notes) + ([note] if mapping else [])
    if empty_threshold is not None and run.empty_scores:
        y_pred = [EMPTY if score is not None and score >= empty_threshold else label
                  for label, score in zip(y_pred, run.empty_scores)]
        notes.append(f"Frames with empty_score ≥ {empty_threshold:.2f} count as predicted '{EMPTY}'.")
    classes = tuple(dict.fromkeys(mapped(c) for c in run.classes))
    if empty_threshold is not None and EMPTY not in classes:
        classes = classes + (EMPTY,)
    return dataclasses.replace(run, y_true=[mapped(label) for label in run.y_true], y_pred=y_pred,
                               classes=classes, notes=notes, population=None)


def animal_or_empty(labels: Sequence[str]) -> dict[str, str]:
    """The mapping "every label but empty -> animal" for the given labels."""
    return {label: (EMPTY if is_empty_label(label) else ANIMAL) for label in labels}
