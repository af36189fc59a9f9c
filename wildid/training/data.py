"""Data checks before training, cross-validation folds, near-duplicate groups."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Sequence

import numpy as np

from wildid.datasets import LabelledData
from wildid.errors import DataError


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


def inner_folds(y: np.ndarray, groups: Sequence[str] | None, wanted: int, seed: int = 0) -> list[tuple[np.ndarray, np.ndarray]]:
    """Folds for choosing C and fitting the temperature inside one training set; [] when too small.

    At most ``wanted`` folds, fewer when a class or the groups are too few for more.
    """
    counts = Counter(y.tolist())
    limit = min(wanted, min(counts.values()))
    if groups is not None:
        limit = min(limit, len(set(groups)))
    if limit < 2:
        return []
    splits = make_folds([str(v) for v in y], groups, limit, seed)
    # StratifiedGroupKFold may leave a class out of a training part with very few groups: skip such folds.
    n_classes = len(counts)
    return [(tr, va) for tr, va in splits if len(set(y[tr].tolist())) == n_classes and len(va)]


def near_duplicate_groups(paths: Sequence[Path | str], max_distance: int = 6) -> list[str]:
    """A group id per image; images whose perceptual hashes (imagehash.phash, 64 bits) differ by at
    most ``max_distance`` bits share a group, transitively, so cross-validation keeps re-posted or
    re-cropped copies of one photo on one side of a split.  Unreadable images get their own group.
    """
    import imagehash
    from PIL import Image

    hashes = []
    for path in paths:
        try:
            with Image.open(path) as img:
                hashes.append(int(str(imagehash.phash(img)), 16))
        except Exception:  # noqa: BLE001 - unreadable files are reported by the feature step
            hashes.append(None)
    n = len(hashes)
    parent = list(range(n))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    known = [i for i, h in enumerate(hashes) if h is not None]
    values = np.array([hashes[i] for i in known], dtype=np.uint64)
    for row, i in enumerate(known):
        distances = np.bitwise_count(values[row + 1:] ^ values[row])
        for offset in np.nonzero(distances <= max_distance)[0]:
            a, b = find(i), find(known[row + 1 + offset])
            if a != b:
                parent[b] = a
    return [f"dup{find(i)}" for i in range(n)]
