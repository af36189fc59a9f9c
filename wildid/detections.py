"""MegaDetector batch output (format 1.x) in: which boxes of which frame to classify.

    dets = read_detections("md.json", "frames/")           # checked against the folder
    plan = DetectorRegions(dets, threshold=0.2).plan(path)  # animal boxes to classify, or why none

A MegaDetector file lists ``images[]``, each with ``file`` (relative to the folder MegaDetector
ran on, or absolute) and ``detections[]`` of ``category`` (an id in ``detection_categories``:
"1" animal, "2" person, "3" vehicle), ``conf`` and ``bbox`` = [x, y, width, height], normalised
to 0..1 with the origin at the top left; or ``failure`` for a file MegaDetector could not read.
The whole file is checked before anything is classified, so a wrong or mismatching file gives
one line and no results file.

Rows of a run with detections carry every detection given (``detections`` column, JSON), the
best animal box classified (``box``) and how many animal boxes were classified.  The same
module turns those rows back into MegaDetector detections for ``--json-out``, with the species
classification attached to each box (Timelapse reads ``classifications`` per detection).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field, replace
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any, Sequence

from PIL import Image

from wildid.errors import DataError

Box = tuple[float, float, float, float]  # normalised x, y, width, height; top-left origin
ANIMAL, PERSON, VEHICLE = "animal", "person", "vehicle"
STANDARD_CATEGORIES = {"1": ANIMAL, "2": PERSON, "3": VEHICLE}
# MegaDetector v5's authors recommend 0.2 as a starting confidence threshold for its boxes (v4:
# 0.8).  Not measured here: there are no MegaDetector outputs on real frames in this project.
DEFAULT_DETECTION_THRESHOLD = 0.2
BOX_TOLERANCE = 1e-3  # rounding in files written by other tools: x + w may be 1.0004
SOURCE_DETECTOR = "detector"
SOURCE_BACKGROUND = "background"
# Columns added to the results table by a run with regions (detections or background crops).
REGION_COLUMNS = ("box", "box_source", "detection_conf", "detection_count", "detections")


@dataclass(frozen=True)
class Detection:
    category: str  # category name: animal | person | vehicle (or the file's own name)
    conf: float
    bbox: Box

    def to_dict(self) -> dict[str, Any]:
        return {"category": self.category, "conf": round(self.conf, 4), "bbox": [round(v, 4) for v in self.bbox]}


@dataclass(frozen=True)
class FrameDetections:
    detections: tuple[Detection, ...] = ()
    failure: str | None = None


@dataclass(frozen=True)
class DetectionFile:
    source: Path
    root: Path
    format_version: str
    detector: str
    frames: dict[str, FrameDetections]  # absolute, normalised path -> detections

    def get(self, path: Path | str) -> FrameDetections | None:
        return self.frames.get(os.path.normpath(os.path.abspath(path)))


def _fail(source: Path, what: str) -> DataError:
    return DataError(f"{source.name}: {what}")


def read_detections(json_path: Path | str, root: Path | str) -> DetectionFile:
    """Read and check a MegaDetector batch-output file against the folder it describes.

    Raises DataError (one line) for: not JSON, not format 1.x, no ``images`` list, an entry
    without ``file``, a detection with a category the file does not define, a ``conf``
    outside 0..1, a box that is not four numbers inside the frame with positive size, the same
    file listed twice, or files that do not exist under ``root``.
    """
    source = Path(json_path).expanduser()
    root = Path(os.path.abspath(Path(root).expanduser()))
    try:
        with source.open("rb") as handle:
            data = json.load(handle)
    except FileNotFoundError:
        raise DataError(f"{source}: no such detections file") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise _fail(source, f"not valid JSON ({exc}); give MegaDetector's batch output file") from None
    except OSError as exc:
        raise DataError(f"{source}: cannot read ({exc.strerror or exc})") from None
    if not isinstance(data, dict) or not isinstance(data.get("images"), list):
        raise _fail(source, "no 'images' list: not a MegaDetector batch output file")
    info = data.get("info") if isinstance(data.get("info"), dict) else {}
    version = str(info.get("format_version", "")).strip()
    if not version:
        raise _fail(source, "no info.format_version: not a MegaDetector batch output file (format 1.x)")
    if version.split(".")[0] != "1":
        raise _fail(source, f"format_version {version} is not supported; wildid reads MegaDetector format 1.x")
    raw_categories = data.get("detection_categories", STANDARD_CATEGORIES)
    if not isinstance(raw_categories, dict) or not raw_categories:
        raise _fail(source, "detection_categories must map category ids to names, e.g. {\"1\": \"animal\"}")
    categories = {str(k): str(v).strip().lower() for k, v in raw_categories.items()}
    frames: dict[str, FrameDetections] = {}
    missing: list[str] = []
    for index, image in enumerate(data["images"]):
        where = f"images[{index}]"
        if not isinstance(image, dict) or not isinstance(image.get("file"), str) or not image["file"].strip():
            raise _fail(source, f"{where} has no 'file'")
        name = image["file"]
        path = _resolve(name, root)
        if path in frames:
            raise _fail(source, f"{name!r} is listed twice")
        if not os.path.lexists(path):
            missing.append(name)
            continue
        if image.get("failure"):
            frames[path] = FrameDetections(failure=" ".join(str(image["failure"]).split()))
            continue
        raw = image.get("detections")
        if raw is None:
            raw = []
        if not isinstance(raw, list):
            raise _fail(source, f"{name!r}: 'detections' must be a list")
        frames[path] = FrameDetections(tuple(_detection(source, name, d, categories) for d in raw))
    if missing:
        more = f" and {len(missing) - 1} more" if len(missing) > 1 else ""
        raise _fail(source, f"{missing[0]!r}{more} not found under {root}; was MegaDetector run on this folder?")
    if not frames and data["images"]:
        raise _fail(source, f"none of its files lies under {root}")
    detector = str(info.get("detector") or "MegaDetector")
    return DetectionFile(source, root, version, detector, frames)


def _resolve(name: str, root: Path) -> str:
    """A file entry as an absolute normalised path: relative ones are under ``root``;
    Windows separators are accepted (MegaDetector often runs on Windows)."""
    text = name.strip()
    if "\\" in text and "/" not in text:
        text = PureWindowsPath(text).as_posix()
    candidate = Path(text)
    if not candidate.is_absolute():
        candidate = root / PurePosixPath(text)
    return os.path.normpath(str(candidate))


def _detection(source: Path, name: str, raw: Any, categories: dict[str, str]) -> Detection:
    if not isinstance(raw, dict):
        raise _fail(source, f"{name!r}: a detection is not an object")
    category = str(raw.get("category", ""))
    if category not in categories:
        raise _fail(source, f"{name!r}: detection category {category!r} is not in detection_categories "
                            f"({', '.join(sorted(categories))})")
    conf = raw.get("conf")
    if isinstance(conf, bool) or not isinstance(conf, (int, float)) or not 0.0 <= conf <= 1.0:
        raise _fail(source, f"{name!r}: detection conf {conf!r} is not a number from 0 to 1")
    bbox = raw.get("bbox")
    if (not isinstance(bbox, list) or len(bbox) != 4
            or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in bbox)):
        raise _fail(source, f"{name!r}: bbox {bbox!r} is not [x, y, width, height]")
    x, y, w, h = (float(v) for v in bbox)
    if (w <= 0 or h <= 0 or x < -BOX_TOLERANCE or y < -BOX_TOLERANCE
            or x + w > 1 + BOX_TOLERANCE or y + h > 1 + BOX_TOLERANCE):
        raise _fail(source, f"{name!r}: bbox {bbox} is not inside the frame (normalised x, y, width, height "
                            "from 0 to 1, positive size); pixel boxes are not MegaDetector format")
    return Detection(categories[category], float(conf), (x, y, w, h))


# --- regions to classify ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class RegionPlan:
    """What to classify in one frame: ``boxes`` (None = the whole frame, [] = nothing)."""

    boxes: tuple[Box, ...] | None
    source: str = ""
    confs: tuple[float, ...] = ()  # detector confidence of each box
    detections: tuple[Detection, ...] = ()  # everything the detector gave for the frame
    others: tuple[Detection, ...] = ()  # people and vehicles at or above the threshold
    empty_reason: str = ""
    error: str = ""


class DetectorRegions:
    """Animal boxes at or above ``threshold``, best (highest conf) first."""

    needs_background = False

    def __init__(self, detections: DetectionFile, threshold: float = DEFAULT_DETECTION_THRESHOLD):
        if not 0.0 <= threshold <= 1.0:
            raise DataError(f"--detection-threshold {threshold} must be from 0 to 1")
        self.file = detections
        self.threshold = float(threshold)

    def plan(self, path: Path, thumb=None, background=None) -> RegionPlan:
        frame = self.file.get(path)
        if frame is None:
            return RegionPlan((), SOURCE_DETECTOR, error=f"{Path(path).name}: not in {self.file.source.name} "
                                                         "(run MegaDetector on it, or classify without --detections)")
        if frame.failure:
            return RegionPlan((), SOURCE_DETECTOR, error=f"{Path(path).name}: MegaDetector could not read it ({frame.failure})")
        animals = sorted((d for d in frame.detections if d.category == ANIMAL and d.conf >= self.threshold),
                         key=lambda d: -d.conf)
        others = tuple(d for d in frame.detections if d.category != ANIMAL and d.conf >= self.threshold)
        reason = "" if animals else self._why_empty(frame.detections)
        return RegionPlan(tuple(d.bbox for d in animals), SOURCE_DETECTOR, tuple(d.conf for d in animals),
                          frame.detections, others, reason)

    def _why_empty(self, detections: Sequence[Detection]) -> str:
        if not detections:
            return "no detections in this frame"
        best: dict[str, float] = {}
        for d in detections:
            best[d.category] = max(best.get(d.category, 0.0), d.conf)
        found = ", ".join(f"{name} {conf:.2f}" for name, conf in sorted(best.items(), key=lambda kv: -kv[1]))
        return f"no animal detection at conf >= {self.threshold:g} (best: {found})"


def crop_box(img: Image.Image, box: Box) -> Image.Image:
    """The region ``box`` (normalised x, y, w, h) of ``img``, clipped to the frame, at least 1 pixel.

    Normalised boxes need no full-resolution decode: a JPEG draft-decoded at 1/8 scale is cut
    at the same relative place."""
    x, y, w, h = box
    left = min(max(int(round(x * img.width)), 0), img.width - 1)
    top = min(max(int(round(y * img.height)), 0), img.height - 1)
    right = min(max(int(round((x + w) * img.width)), left + 1), img.width)
    bottom = min(max(int(round((y + h) * img.height)), top + 1), img.height)
    return img.crop((left, top, right, bottom))


def pad_box(box: Box, pad: float) -> Box:
    """``box`` grown by ``pad`` x its width / height on each side, clipped to the frame."""
    x, y, w, h = box
    left, top = max(0.0, x - pad * w), max(0.0, y - pad * h)
    right, bottom = min(1.0, x + w + pad * w), min(1.0, y + h + pad * h)
    return (left, top, right - left, bottom - top)


def pixel_box(box: Box, width: int, height: int) -> tuple[float, float, float, float]:
    """A normalised box in pixels of a ``width`` x ``height`` frame (the datasets' crop format)."""
    x, y, w, h = box
    return (round(x * width, 1), round(y * height, 1), round(w * width, 1), round(h * height, 1))


# --- results-table columns ----------------------------------------------------------------------------------
def region_fields(plan: RegionPlan | None, predictions: Sequence[Any]) -> dict[str, Any]:
    """The REGION_COLUMNS of one row: ``predictions`` are those of ``plan.boxes``, in order."""
    fields: dict[str, Any] = {c: None for c in REGION_COLUMNS}
    if plan is None or plan.boxes is None:
        return fields
    if plan.source == SOURCE_BACKGROUND:
        fields.update(box=_box_json(plan.boxes[0]), box_source=SOURCE_BACKGROUND)
        return fields
    classified = {d: p for d, p in zip(_animal_order(plan), predictions)}
    listed = []
    for detection in plan.detections:
        entry = detection.to_dict()
        prediction = classified.get(detection)
        if prediction is not None:
            entry.update(label=prediction.label, confidence=round(prediction.confidence, 6),
                         top_k=[[label, round(p, 6)] for label, p in prediction.top_k])
        elif detection in plan.others:
            entry["kept"] = True  # a person or vehicle at the threshold: an observation of its own
        listed.append(entry)
    fields.update(box_source=SOURCE_DETECTOR, detection_count=len(plan.boxes),
                  detections=json.dumps(listed, separators=(",", ":")))
    if plan.boxes:
        fields.update(box=_box_json(plan.boxes[0]), detection_conf=round(plan.confs[0], 4))
    return fields


def _animal_order(plan: RegionPlan) -> list[Detection]:
    """The detections behind ``plan.boxes``, in the same (best-first) order."""
    pool = list(plan.detections)
    ordered = []
    for box, conf in zip(plan.boxes or (), plan.confs):
        for i, d in enumerate(pool):
            if d.category == ANIMAL and d.bbox == box and d.conf == conf:
                ordered.append(pool.pop(i))
                break
    return ordered


def _box_json(box: Box) -> str:
    return json.dumps([round(v, 4) for v in box])


def parse_box(text: str | None) -> Box | None:
    try:
        values = json.loads(text) if text else None
    except json.JSONDecodeError:
        return None
    if isinstance(values, list) and len(values) == 4:
        return tuple(float(v) for v in values)  # type: ignore[return-value]
    return None


def row_detections(row: dict[str, str]) -> list[dict[str, Any]]:
    """The ``detections`` column of a results row (empty list when absent or unreadable)."""
    try:
        value = json.loads(row.get("detections") or "[]")
    except json.JSONDecodeError:
        return []
    return value if isinstance(value, list) else []


# --- MegaDetector JSON out --------------------------------------------------------------------------------------
@dataclass
class CategoryIds:
    """Category name -> id for ``detection_categories`` (the standard three first)."""

    ids: dict[str, str] = field(default_factory=lambda: {v: k for k, v in STANDARD_CATEGORIES.items()})

    def id_for(self, name: str) -> str:
        return self.ids.setdefault(name, str(max(int(i) for i in self.ids.values()) + 1))

    def as_json(self) -> dict[str, str]:
        return {i: name for name, i in sorted(self.ids.items(), key=lambda kv: int(kv[1]))}


def megadetector_detections(row: dict[str, str], categories: CategoryIds, class_id) -> list[dict[str, Any]]:
    """The detections of a results row as MegaDetector detections, each classified animal box
    with ``classifications`` [[class id, probability], ...]."""
    out = []
    for entry in row_detections(row):
        detection: dict[str, Any] = {"category": categories.id_for(str(entry.get("category", ANIMAL))),
                                     "conf": entry.get("conf"), "bbox": entry.get("bbox")}
        if entry.get("top_k"):
            detection["classifications"] = [[class_id(label), p] for label, p in entry["top_k"]]
        out.append(detection)
    return out


def with_detections(data, detections: DetectionFile, threshold: float = DEFAULT_DETECTION_THRESHOLD):
    """Labelled data (wildid.datasets) cropped to each image's best animal box.

    The box becomes the sample's pixel ``crop`` (sizes from the image header, EXIF rotation
    applied); images without an animal box at ``threshold`` are left out and listed in
    ``skipped``, as are images the file does not list."""
    from wildid.datasets import LabelledData
    from wildid.metadata import read_metadata

    regions = DetectorRegions(detections, threshold)
    keep, skipped = [], list(data.skipped)
    for sample in data.samples:
        plan = regions.plan(sample.path)
        if plan.error or not plan.boxes:
            skipped.append((str(sample.path), plan.error or plan.empty_reason))
            continue
        meta = read_metadata(sample.path)
        if not meta.width or not meta.height:
            skipped.append((str(sample.path), "cannot read the image size"))
            continue
        keep.append(replace(sample, crop=pixel_box(plan.boxes[0], meta.width, meta.height)))
    if not keep:
        raise DataError(f"{detections.source.name}: no image of {data.source} has an animal box at conf >= {threshold:g}")
    return LabelledData(tuple(keep), data.classes, data.source, data.kind, data.group_column, tuple(skipped))


def data_root(data) -> Path:
    """The folder relative paths of a detections file refer to for labelled data."""
    source = Path(data.source)
    return source if source.is_dir() else source.parent
