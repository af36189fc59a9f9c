"""Labelled data for training and evaluation: one reader for both.

    data = load_labelled("tracks/")                 # ImageFolder: one sub-folder per class
    data = load_labelled("labels.csv", groups="sequence")  # CSV path,label[,GROUP][,group][,crop]
    data.samples[0]  # Sample(path, label, group, crop)

An ImageFolder is ``root/<class>/**/<image>``; hidden files and folders are ignored.  With
``groups="folder"`` the first folder below the class folder (``bobcat/site-3/img.jpg`` ->
``site-3``) is the group.  A CSV (or .tsv / .txt) needs columns ``path,label`` (header names are
matched case-insensitively); relative paths are relative to the CSV's folder.  ``groups=COLUMN``
names the group column used for grouped validation (rows with it empty are skipped and listed in
``skipped``); without it an optional ``group`` column is still read into ``Sample.group``.  An
optional ``crop`` column holds ``"x,y,w,h"`` in pixels.  Problems raise a one-line DataError.
"""

from __future__ import annotations

import csv
import io
import os
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from wildid.errors import DataError
from wildid.imaging import is_image_file

CSV_SUFFIXES = (".csv", ".tsv", ".txt")
Box = tuple[float, float, float, float]


@dataclass(frozen=True)
class Sample:
    path: Path
    label: str
    group: str | None = None
    crop: Box | None = None


@dataclass(frozen=True)
class LabelledData:
    samples: tuple[Sample, ...]
    classes: tuple[str, ...]
    source: str
    kind: str  # "imagefolder" | "csv"
    group_column: str | None = None
    skipped: tuple[tuple[str, str], ...] = ()  # (path, reason) for files left out

    @property
    def labels(self) -> list[str]:
        return [s.label for s in self.samples]

    @property
    def groups(self) -> list[str] | None:
        if self.group_column is None:
            return None
        return [s.group or "" for s in self.samples]

    def class_counts(self) -> dict[str, int]:
        counts = Counter(self.labels)
        return {c: counts.get(c, 0) for c in self.classes}

    def summary(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "source": self.source,
            "kind": self.kind,
            "images": len(self.samples),
            "classes": len(self.classes),
            "per_class": self.class_counts(),
            "skipped": len(self.skipped),
        }
        if self.group_column:
            out["group_column"] = self.group_column
            out["groups"] = len(set(self.groups or []))
        return out

    def without(self, bad: dict[int, str]) -> "LabelledData":
        """A copy without the samples at the given indices (index -> reason)."""
        keep = tuple(s for i, s in enumerate(self.samples) if i not in bad)
        skipped = self.skipped + tuple((str(self.samples[i].path), reason) for i, reason in sorted(bad.items()))
        return LabelledData(keep, self.classes, self.source, self.kind, self.group_column, skipped)


def parse_crop(text: str | None, where: str) -> Box | None:
    """``"x,y,w,h"`` (also ``;`` / space separated, optionally in brackets) -> floats; empty -> None."""
    text = (text or "").strip().strip('"').strip("()[]")
    if not text:
        return None
    parts = [p for p in text.replace(";", ",").replace(" ", ",").split(",") if p]
    try:
        values = tuple(float(p) for p in parts)
    except ValueError:
        values = ()
    if len(values) != 4 or values[2] <= 0 or values[3] <= 0:
        raise DataError(f"{where}: crop {text!r} is not 'x,y,w,h' with a positive width and height")
    return values  # type: ignore[return-value]


def load_labelled(source: str | os.PathLike, groups: str | None = None) -> LabelledData:
    """An ImageFolder (one sub-folder per class) or a CSV with path,label[,GROUP][,crop]."""
    path = Path(source).expanduser()
    if not path.exists():
        raise DataError(f"{path}: no such folder or CSV file")
    if path.is_dir():
        return _load_imagefolder(path, groups)
    if path.suffix.lower() in CSV_SUFFIXES:
        return _load_csv(path, groups)
    raise DataError(f"{path}: give a folder with one sub-folder per class, or a CSV with columns path,label")


def _load_imagefolder(root: Path, groups: str | None) -> LabelledData:
    if groups not in (None, "folder"):
        raise DataError(
            f"groups column {groups!r} missing: an image folder has no columns; use a CSV with a "
            f"{groups!r} column, or --groups folder for class/GROUP/image.jpg layouts"
        )
    class_dirs = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    samples = []
    for class_dir in class_dirs:
        for file in sorted(class_dir.rglob("*")):
            if not file.is_file() or any(part.startswith(".") for part in file.relative_to(root).parts):
                continue
            if not is_image_file(file):
                continue
            group = None
            if groups == "folder":
                rel = file.relative_to(class_dir).parts
                group = rel[0] if len(rel) > 1 else "(none)"
            samples.append(Sample(file, class_dir.name, group))
    if not samples:
        loose = [p for p in root.iterdir() if p.is_file() and is_image_file(p)]
        hint = "; the images lie directly in the folder: put each class in its own sub-folder" if loose else ""
        raise DataError(f"{root}: no images found in class sub-folders (expected {root}/<class>/<image>.jpg){hint}")
    classes = tuple(sorted({s.label for s in samples}))
    return LabelledData(tuple(samples), classes, str(root), "imagefolder", "folder" if groups else None)


def _load_csv(path: Path, groups: str | None) -> LabelledData:
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: cannot read the CSV ({exc})") from None
    dialect = csv.excel_tab if path.suffix.lower() == ".tsv" else csv.excel
    reader = csv.DictReader(io.StringIO(text), dialect=dialect)
    columns = [(c or "").strip().lower() for c in (reader.fieldnames or [])]
    if not columns:
        raise DataError(f"{path.name}: empty CSV (expected a header row with path,label)")
    reader.fieldnames = columns
    missing = [c for c in ("path", "label") if c not in columns]
    if missing:
        raise DataError(
            f"{path.name}: missing column(s) {', '.join(missing)}; a labelled CSV needs columns path,label "
            f"(found: {', '.join(columns)})"
        )
    group_key = groups.strip().lower() if groups else ("group" if "group" in columns else None)
    if groups and group_key not in columns:
        raise DataError(f"{path.name}: groups column {groups!r} missing; columns are {', '.join(columns)}")
    samples, skipped = [], []
    for line, row in enumerate(reader, start=2):
        raw_path, label = (row.get("path") or "").strip(), (row.get("label") or "").strip()
        if not raw_path:
            continue
        file = Path(raw_path).expanduser()
        if not file.is_absolute():
            file = path.parent / file
        if not label:
            skipped.append((str(file), f"line {line}: no label"))
            continue
        group = ((row.get(group_key) or "").strip() or None) if group_key else None
        if groups and group is None:
            skipped.append((str(file), f"line {line}: empty {groups}"))
            continue
        box = parse_crop(row.get("crop"), f"{path.name} line {line}")
        samples.append(Sample(file, label, group, box))
    if not samples:
        raise DataError(f"{path.name}: no rows with a path and a label")
    classes = tuple(sorted({s.label for s in samples}))
    return LabelledData(tuple(samples), classes, str(path), "csv", groups, tuple(skipped))
