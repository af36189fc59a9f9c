"""A project's own label set: the labels Review offers and Train learns.

A first-day project has no model for its frames: the default model's 398 ImageNet classes
are not the labels a biologist needs ("vole", "stoat", "empty").  So the labels are declared
once, typed or read from a labelled CSV / ImageFolder (or taken from the model's classes when
they are few), and kept with the results (``labels.txt`` in the project, see
:mod:`wildid.project`).  ``empty`` is always in the set: blank frames are the commonest answer.

Review puts keys 1-9 on the most used labels; everything else (and any model class) is one
type-ahead box away, so the page never draws more than a screenful of buttons.
"""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path
from typing import Iterable, Sequence

from wildid import project
from wildid.errors import DataError

EMPTY = "empty"
MAX_KEYED = 9
# A model's classes become the suggested label set only when there are this few; a model
# with hundreds of classes is searched, never drawn as buttons.
MAX_MODEL_CLASSES = 12
MAX_LABEL_LENGTH = 80


def clean(label: str) -> str:
    """One label: whitespace collapsed; one line, not too long, no leading '#'."""
    text = " ".join(str(label).split())
    if any(ch in text for ch in "\r\n\x00"):
        raise DataError(f"a label must be one line of text: {label!r}")
    if len(text) > MAX_LABEL_LENGTH:
        raise DataError(f"label {text[:40]!r}… is longer than {MAX_LABEL_LENGTH} characters")
    return text


def parse(text: str) -> list[str]:
    """Labels typed as ``vole, stoat, empty`` or one per line; duplicates (any case) dropped."""
    labels: dict[str, str] = {}
    for part in str(text).replace("\r", "\n").replace(",", "\n").split("\n"):
        label = clean(part)
        if label and not label.startswith("#"):
            labels.setdefault(label.casefold(), label)
    return list(labels.values())


def with_empty(labels: Iterable[str]) -> list[str]:
    labels = list(dict.fromkeys(labels))
    return labels if any(label.casefold() == EMPTY for label in labels) else labels + [EMPTY]


def read(results_path: str | os.PathLike) -> list[str]:
    """The declared label set of a results table (its project's ``labels.txt``); [] if none."""
    target = project.side_file(results_path, project.LABELS)
    try:
        return parse(target.read_text(encoding="utf-8"))
    except OSError:
        return []


def write(results_path: str | os.PathLike, labels: Sequence[str]) -> Path:
    labels = with_empty(parse("\n".join(labels)))
    if len(labels) < 2:
        raise DataError("declare at least one label besides 'empty' (for example: vole, stoat)")
    target = project.side_file(results_path, project.LABELS)
    return project.write_text_atomic(target, "\n".join(labels) + "\n")


def add(results_path: str | os.PathLike, label: str) -> list[str]:
    """Add one label (typed in the search box) to the declared set; returns the new set."""
    current = read(results_path)
    label = clean(label)
    if label and label.casefold() not in {c.casefold() for c in current}:
        write(results_path, current + [label])
    return read(results_path)


def from_data(source: str | os.PathLike) -> list[str]:
    """The labels of a labelled CSV (``label`` column, most frequent first) or of an
    ImageFolder (its class sub-folders)."""
    from wildid.datasets import load_labelled

    data = load_labelled(source)
    counts = Counter(sample.label for sample in data.samples)
    return [label for label, _ in counts.most_common()]


def suggest(card_classes: Sequence[str] = (), used: Iterable[str] = ()) -> list[str]:
    """A starting label set when none is declared: the model's classes when they are few (a
    project-specific model), then labels already used in the journal, then ``empty``.  The
    model's classes come first so a label used for the first time never reorders the keys."""
    labels = list(dict.fromkeys(card_classes)) if 0 < len(card_classes) <= MAX_MODEL_CLASSES else []
    labels += [label for label in dict.fromkeys(used) if label not in labels]
    return with_empty(labels)


def keyed_order(labels: Sequence[str], counts: Counter | dict | None = None) -> list[str]:
    """The labels most used first (ties keep the declared order): keys 1-9 go to the head."""
    counts = counts or {}
    position = {label: i for i, label in enumerate(labels)}
    return sorted(labels, key=lambda label: (-int(counts.get(label, 0)), position[label]))


def search_options(labels: Sequence[str], card_classes: Sequence[str] = (), predicted: Iterable[str] = ()) -> list[str]:
    """Everything the type-ahead box offers: the project's labels, then the model's classes,
    those the model predicted most often first."""
    counts = Counter(predicted)
    rest = sorted((c for c in dict.fromkeys(card_classes) if c not in set(labels)), key=lambda c: -counts.get(c, 0))
    return list(dict.fromkeys(labels)) + rest
