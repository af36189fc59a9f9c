"""Results of a batch run, read back and exported: rows as dicts or a DataFrame, the
MegaDetector / Timelapse JSON, and the sorted copy (or link) tree.

Split from :mod:`wildid.batch` (which writes the results); the names are re-exported there.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
from collections import Counter
from datetime import datetime, timezone
from pathlib import Path, PurePosixPath
from typing import Any, Iterator, Sequence

from wildid import background
from wildid.errors import DataError

SORT_MODES = ("copy", "symlink")


# --- reading results back --------------------------------------------------------------------------------
def iter_results(csv_path: Path | str) -> Iterator[dict[str, str]]:
    """Rows of a results CSV as dicts of strings, streamed."""
    with Path(csv_path).open(newline="", encoding="utf-8") as handle:
        for row in csv.DictReader(handle):
            if row.get("path") is not None and None not in row:
                yield row


def results_frame(csv_path: Path | str):
    """The results as a pandas DataFrame with numeric / boolean columns typed."""
    import pandas as pd

    frame = pd.read_csv(csv_path, dtype={"label": str, "error": str, "camera": str, "sequence_id": str,
                                         "datetime": str, "model_version": str, "top_k": str, "box": str,
                                         "box_source": str, "detections": str, "rank": str, "taxon": str},
                        keep_default_na=False, na_values={c: [""] for c in (
                            "confidence", "empty_score", "width", "height", "mean_intensity", "laplacian_var",
                            "detection_conf", "detection_count", "taxon_confidence")})
    for column in ("dark", "overexposed", "blurry"):
        frame[column] = frame[column].map({"True": True, "False": False, True: True, False: False})
    return frame


def _float(text: str | None) -> float | None:
    try:
        return float(text) if text not in (None, "") else None
    except ValueError:
        return None


def likely_empty(row: dict[str, str], empty_threshold: float | None) -> bool:
    score = _float(row.get("empty_score"))
    return empty_threshold is not None and score is not None and score >= empty_threshold


# --- exports -----------------------------------------------------------------------------------------------
def export_json(csv_path: Path | str, json_path: Path | str, classes: Sequence[str] | None = None,
                empty_threshold: float | None = background.DEFAULT_EMPTY_THRESHOLD) -> Path:
    """The results in MegaDetector's batch-output format (v1.4), streamed, so Timelapse and
    other camera-trap review tools open them.

    A run with MegaDetector detections (``--detections``) writes back every detection it was
    given, each classified animal box with its own ``classifications``; its ``empty`` frames
    keep their (non-animal or low-confidence) detections.  Otherwise a frame gets one
    "animal" detection carrying the classifications: the whole image (bbox [0, 0, 1, 1]) or the
    background crop that was classified, conf = top-1 confidence, unless its empty_score says
    it is likely empty (then no detections).  Unreadable files get ``failure``.  ``file`` is
    the path relative to the batch root.
    """
    from wildid import detections as md
    csv_path, json_path = Path(csv_path), Path(json_path)
    if classes is None:
        seen: dict[str, None] = {}
        for row in iter_results(csv_path):
            for label, _ in json.loads(row["top_k"] or "[]"):
                seen.setdefault(label, None)
        classes = list(seen)
    category = {label: str(i) for i, label in enumerate(classes)}
    detection_ids = md.CategoryIds()
    used_detector = False
    model = version = ""
    tmp = json_path.with_name(json_path.name + ".tmp")
    json_path.parent.mkdir(parents=True, exist_ok=True)
    with tmp.open("w", encoding="utf-8") as handle:
        handle.write('{\n"images": [\n')
        first = True
        for row in iter_results(csv_path):
            model, version = model or row["model"], version or row["model_version"]
            image: dict[str, Any] = {"file": row["relpath"] or row["path"]}
            if row["datetime"]:
                image["datetime"] = row["datetime"]
            class_id = (lambda label: category.setdefault(label, str(len(category))))
            if row["status"] == "error":
                image["failure"] = row["error"] or "unreadable"
            elif row.get("box_source") == md.SOURCE_DETECTOR:
                used_detector = True
                found = md.megadetector_detections(row, detection_ids, class_id)
                image.update(
                    classifications=[[class_id(label), round(p, 6)] for label, p in json.loads(row["top_k"] or "[]")],
                    max_detection_conf=max((d["conf"] for d in found), default=0.0),
                    detections=found,
                    label=row["label"],
                    status=row["status"],
                    empty_score=_float(row["empty_score"]),
                    sequence_id=row["sequence_id"],
                )
                if row["status"] == "empty":
                    image["empty_reason"] = row["error"]
            else:
                ranked = [[class_id(label), round(p, 6)] for label, p in json.loads(row["top_k"] or "[]")]
                confidence = _float(row["confidence"]) or 0.0
                empty = likely_empty(row, empty_threshold)
                box = md.parse_box(row.get("box")) or (0.0, 0.0, 1.0, 1.0)
                image.update(
                    classifications=ranked,
                    max_detection_conf=0.0 if empty else confidence,
                    detections=[] if empty else [
                        {"category": "1", "conf": confidence, "bbox": list(box), "classifications": ranked}
                    ],
                    label=row["label"],
                    status=row["status"],
                    empty_score=_float(row["empty_score"]),
                    sequence_id=row["sequence_id"],
                )
            handle.write(("" if first else ",\n") + json.dumps(image))
            first = False
        info = {
            "format_version": "1.4",
            "detector": "MegaDetector (boxes read from its output)" if used_detector
            else "none (wildid whole-image classification)",
            "classifier": model,
            "classifier_metadata": {"model_version": version, "empty_threshold": empty_threshold},
            "batch_completion_time": datetime.now(timezone.utc).replace(microsecond=0).isoformat(),
            "source": str(csv_path),
        }
        handle.write("\n],\n")
        handle.write('"info": ' + json.dumps(info) + ",\n")
        handle.write('"detection_categories": ' + json.dumps(detection_ids.as_json()) + ",\n")
        handle.write('"classification_categories": ' + json.dumps({v: k for k, v in category.items()}) + "\n}\n")
    tmp.replace(json_path)
    return json_path


def sort_into(csv_path: Path | str, dest: Path | str, mode: str = "copy",
              empty_threshold: float | None = None) -> Counter:
    """Copy (never move) or symlink each classified file into ``dest/<label>/<relpath>``.

    Review-status frames go to ``dest/_review/<label>/``, out-of-scope frames to ``dest/_out_of_scope/``,
    ``empty`` frames (no animal box) and likely-empty frames (when ``empty_threshold`` is given) to
    ``dest/_empty/``; error rows are skipped.  The relative path is kept so equal names from different
    camera folders do not collide.  Existing
    targets are left alone, so sorting again after a resume only adds the new files.
    Returns counts per target folder.
    """
    if mode not in SORT_MODES:
        raise DataError(f"unknown sort mode {mode!r}; use copy or symlink")
    dest = Path(os.path.abspath(Path(dest).expanduser()))
    counts: Counter = Counter()
    for row in iter_results(csv_path):
        if row["status"] == "error":
            continue
        if row["status"] == "empty" or likely_empty(row, empty_threshold):
            bucket = "_empty"
        elif row["status"] == "out_of_scope":
            bucket = "_out_of_scope"
        elif row["status"] == "review":
            bucket = f"_review/{safe_name(row['label'])}"
        else:
            bucket = safe_name(row["label"])
        relative = PurePosixPath(row["relpath"] or Path(row["path"]).name)
        if relative.is_absolute() or ".." in relative.parts:
            relative = PurePosixPath(relative.name)
        target = dest / bucket / relative
        source = Path(row["path"])
        if target.exists() or target.is_symlink() or not source.is_file():
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        if mode == "copy":
            # Copy under a hidden name, then rename: a kill mid-copy never leaves a truncated file
            # under the real name (which a rerun would skip as "already there").
            part = target.with_name(f".{target.name}.part")
            shutil.copy2(source, part)
            os.replace(part, target)
        else:
            os.symlink(os.path.abspath(source), target)
        counts[bucket] += 1
    return counts


def safe_name(label: str) -> str:
    """A label as a folder name: no separators, no leading dots."""
    name = "".join("_" if ch in '/\\:*?"<>|\x00' else ch for ch in label).strip().lstrip(".")
    return name or "unlabelled"
