"""Streaming folder classification: a folder of camera-trap frames -> one results row per file.

    from wildid.batch import run_batch
    summary = run_batch("frames/", predictor, "results.csv", recursive=True)

How it stays fast and safe on tens of thousands of frames:

- The file list is streamed one folder at a time (sorted, hidden files skipped); images are
  never all held in memory: a thread pool decodes (JPEG draft mode via ``predictor.load``)
  at most a few batches ahead of the model.
- Rows are appended to the CSV after every batch, flushed and fsync'ed, so a crash loses at
  most the batch in flight.  ``resume=True`` reads the existing results once (paths only),
  drops a half-written last line, and processes only the files not yet in it.
- A file that cannot be read is one ``error`` row, never an exception.
- Per camera folder (the folder a file lies in), headers are read first (EXIF date/time,
  camera, full size) to give sequence ids, and a bounded sample of frames gives the median
  background for ``empty_score`` (see :mod:`wildid.background`).  Both are deterministic,
  so a resumed run writes the same values.

The CSV columns are the results-table contract (``COLUMNS``), shared with the dashboard and
the review page.
"""

from __future__ import annotations

import csv
import errno
import io
import json
import os
import shutil
import time
import zipfile
import zlib
from collections import Counter, deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path, PurePosixPath
from typing import Any, Callable, Iterable, Iterator, Sequence

import numpy as np
import torch

from wildid import background
from wildid.detections import REGION_COLUMNS, RegionPlan, crop_box, region_fields
from wildid.errors import DataError, WildidError
from wildid.imaging import quality_metrics
from wildid.metadata import DEFAULT_SEQUENCE_GAP, FrameMetadata, assign_sequences, read_metadata

COLUMNS = (
    "path", "relpath", "label", "confidence", "top_k", "status", "error", "empty_score",
    "width", "height", "mean_intensity", "laplacian_var", "dark", "overexposed", "blurry",
    "datetime", "camera", "sequence_id", "model", "model_version",
) + REGION_COLUMNS
# Results written before the region columns existed: readable everywhere, not resumable.
LEGACY_COLUMNS = COLUMNS[: -len(REGION_COLUMNS)]
# empty: a detector found no animal in the frame (the reason is in ``error``).
# out_of_scope: the model's scope check says it was not trained on images like this one
# (wildid.scope); such rows get no confident label and go to review with the low-confidence ones.
STATUSES = ("accepted", "review", "out_of_scope", "error", "empty")
SORT_MODES = ("copy", "symlink")
# Test hook: seconds to sleep after each written batch, so a test can kill the process mid-run.
DELAY_ENV = "WILDID_BATCH_DELAY"


# --- scanning ------------------------------------------------------------------------------------
def iter_folders(root: Path | str, recursive: bool = False, exclude: Iterable[Path | str] = ()) -> Iterator[tuple[Path, list[Path]]]:
    """(folder, its files sorted by name), folder by folder, depth first in name order.

    Hidden files and folders (leading dot) are skipped, symlinked folders are not followed
    (no loops), and paths in ``exclude`` (results files, a sort target) are left out.  Broken
    or looping symbolic links count as files, so they get an error row instead of vanishing.
    """
    root = Path(os.path.abspath(Path(root).expanduser()))
    if not root.is_dir():
        raise DataError(f"{root}: not a folder; give the folder holding the images")
    excluded = {Path(os.path.abspath(Path(p).expanduser())) for p in exclude}
    stack = [root]
    while stack:
        folder = stack.pop()
        files, subfolders = [], []
        try:
            with os.scandir(folder) as entries:
                for entry in entries:
                    if entry.name.startswith("."):
                        continue
                    path = Path(entry.path)
                    if path in excluded:
                        continue
                    try:
                        if entry.is_dir(follow_symlinks=False):
                            subfolders.append(path)
                        elif _is_file_or_broken_link(entry):
                            files.append(path)
                    except OSError:
                        continue
        except OSError:
            continue  # an unreadable sub-folder is skipped, not fatal
        files.sort(key=lambda p: p.name)
        if files:
            yield folder, files
        if recursive:
            stack.extend(sorted(subfolders, key=lambda p: p.name, reverse=True))


def _is_file_or_broken_link(entry: os.DirEntry) -> bool:
    try:
        if entry.is_file():
            return True
    except OSError:  # a symbolic link loop (ELOOP)
        pass
    return entry.is_symlink() and not os.path.exists(entry.path)


def count_files(root: Path | str, recursive: bool = False, exclude: Iterable[Path | str] = (),
                done: set[str] | frozenset[str] = frozenset()) -> tuple[int, int]:
    """(files to be in the results, how many of them are already in ``done``)."""
    total = already = 0
    for _, files in iter_folders(root, recursive, exclude):
        total += len(files)
        if done:
            already += sum(1 for f in files if str(f) in done)
    return total, already


# --- results file ----------------------------------------------------------------------------------
def read_done_paths(out: Path | str, repair: bool = True) -> tuple[set[str], str | None]:
    """Paths already in a results CSV and the model that wrote them (one streaming read).

    A half-written last line (the process was killed mid-write) is cut off when ``repair``,
    so that file is processed again instead of leaving a broken row.
    """
    out = Path(out)
    if not out.exists() or out.stat().st_size == 0:
        return set(), None
    if repair:
        _truncate_partial_line(out)
    done: set[str] = set()
    model = None
    with out.open(newline="", encoding="utf-8") as handle:
        reader = csv.reader(handle)
        header = next(reader, None)
        if header is None:
            return set(), None
        if tuple(header) == LEGACY_COLUMNS:
            raise DataError(f"{out} was written by an earlier wildid (without the detection columns); "
                            "start again with --overwrite, or choose another --out")
        if tuple(header) != COLUMNS:
            raise DataError(f"{out}: not a wildid results file (unexpected columns); choose another --out")
        path_col, model_col = COLUMNS.index("path"), COLUMNS.index("model")
        for row in reader:
            if len(row) != len(COLUMNS):
                continue
            done.add(row[path_col])
            model = model or row[model_col] or None
    return done, model


def _truncate_partial_line(path: Path) -> None:
    size = path.stat().st_size
    with path.open("rb+") as handle:
        handle.seek(max(0, size - 1))
        if handle.read(1) == b"\n":
            return
        block, position = 65536, size
        while position > 0:
            start = max(0, position - block)
            handle.seek(start)
            chunk = handle.read(position - start)
            cut = chunk.rfind(b"\n")
            if cut >= 0:
                handle.truncate(start + cut + 1)
                return
            position = start
        handle.truncate(0)


def open_results(out: Path | str, resume: bool = False, overwrite: bool = False,
                 model: str | None = None) -> tuple[io.TextIOWrapper, set[str]]:
    """The results CSV opened for appending (header written if new) and the paths already done."""
    out = Path(out).expanduser()
    done: set[str] = set()
    if out.exists() and out.stat().st_size > 0 and not overwrite:
        if not resume:
            raise DataError(f"{out} already exists: add --resume to finish it, or --overwrite to start again")
        done, written_by = read_done_paths(out)
        if model and written_by and written_by != model:
            raise DataError(f"{out} was written by model {written_by!r}; resume with --model {written_by} or choose another --out")
    out.parent.mkdir(parents=True, exist_ok=True)
    fresh = overwrite or not out.exists() or out.stat().st_size == 0
    handle = out.open("w" if fresh else "a", newline="", encoding="utf-8")
    if fresh:
        try:
            csv.writer(handle).writerow(COLUMNS)
            _sync(handle)
        except OSError as exc:
            raise _write_failed(handle, out, 0, exc) from None
    return handle, done


def _sync(handle) -> None:
    handle.flush()
    os.fsync(handle.fileno())


# --- per-folder plan -------------------------------------------------------------------------------
@dataclass
class FolderPlan:
    folder: Path
    relfolder: str
    metadata: dict[Path, FrameMetadata]
    sequence_ids: dict[Path, str]
    background: np.ndarray | None
    # Frames decoded for the background sample, kept until the main pass takes them, so no
    # frame is decoded twice (at most BACKGROUND_SAMPLE per folder: bounded memory).
    predecoded: dict[Path, "Decoded"] = field(default_factory=dict)


def _relpath(path: Path, root: Path) -> str:
    try:
        return PurePosixPath(path.relative_to(root)).as_posix()
    except ValueError:
        return path.name


def plan_folder(folder: Path, files: Sequence[Path], root: Path, predictor, pool: ThreadPoolExecutor,
                sequence_gap: float, todo: set[Path] | None = None, regions=None) -> FolderPlan:
    """Headers of every file in the folder (sequences) and the median background of a sample.

    The sample is taken over all files of the folder, done or not, so a resumed run computes
    the same background; sampled files still to do keep their decoded form for the main pass.
    """
    relfolder = _relpath(folder, root) if folder != root else "."
    metadata = dict(zip(files, pool.map(read_metadata, files)))
    sequence_ids = assign_sequences(((f, metadata[f].datetime) for f in files), sequence_gap, prefix=relfolder)
    sample = [files[i] for i in background.sample_indices(len(files))]
    # Regions that depend on the background (background crops) are cut in the main pass, once
    # the background exists; the sampled frames are then decoded again (at most 25 per folder).
    early = None if regions is not None and regions.needs_background else regions
    decoded = list(pool.map(lambda p: decode(p, predictor, early), sample))
    thumbs = [d.thumb for d in decoded if d.thumb is not None]
    reuse = regions is None or not regions.needs_background
    keep = {d.path: d for d in decoded if reuse and (todo is None or d.path in todo)}
    return FolderPlan(folder, relfolder, metadata, sequence_ids, background.median_background(thumbs), keep)


# --- decoding ----------------------------------------------------------------------------------------
@dataclass
class Decoded:
    path: Path
    tensor: torch.Tensor | None = None
    quality: dict[str, Any] = field(default_factory=dict)
    thumb: np.ndarray | None = None
    size: tuple[int, int] | None = None
    error: str = ""
    # With regions: one tensor per box to classify (best first), and the plan behind them.
    crops: list[torch.Tensor] | None = None
    region: RegionPlan | None = None


def decode(path: Path, predictor, regions=None, folder_background: np.ndarray | None = None) -> Decoded:
    """Everything per file that needs pixels; runs in the pool.  Never raises."""
    try:
        img = predictor.load(path)
        thumb = background.thumbnail(img)
        if regions is None:
            return Decoded(path, predictor.preprocess(img), quality_metrics(img), thumb, img.size)
        plan = regions.plan(path, thumb, folder_background)
        if plan.error:
            return Decoded(path, error=_one_line(plan.error), region=plan)
        if plan.boxes is None:  # nothing to cut out: the whole frame
            return Decoded(path, predictor.preprocess(img), quality_metrics(img), thumb, img.size, region=plan)
        crops = [predictor.preprocess(crop_box(img, box)) for box in plan.boxes]
        return Decoded(path, None, quality_metrics(img), thumb, img.size, crops=crops, region=plan)
    except Exception as exc:  # noqa: BLE001 - one bad file is one error row, never a crash
        if path.is_symlink() and not path.exists():
            return Decoded(path, error=_one_line(f"{path.name}: broken symbolic link (its target is missing or loops)"))
        if isinstance(exc, WildidError):
            return Decoded(path, error=_one_line(str(exc)))
        return Decoded(path, error=_one_line(f"{path.name}: cannot process ({type(exc).__name__}: {exc})"))


def _one_line(text: str) -> str:
    return " ".join(text.split())


# --- the run -------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class BatchProgress:
    done: int  # files in the results now (earlier runs included)
    total: int  # files the results will hold
    processed: int  # files done by this run
    elapsed: float  # seconds since this run started
    rows: list[dict[str, Any]]  # rows written by this step

    @property
    def rate(self) -> float:
        """Files per second in this run."""
        return self.processed / self.elapsed if self.elapsed > 0 else 0.0

    @property
    def eta(self) -> float | None:
        remaining = self.total - self.done
        return remaining / self.rate if self.rate > 0 else None


@dataclass(frozen=True)
class BatchSummary:
    out: Path
    total: int
    processed: int
    skipped: int
    statuses: dict[str, int]
    likely_empty: int
    elapsed: float

    @property
    def rate(self) -> float:
        return self.processed / self.elapsed if self.elapsed > 0 else 0.0


def iter_batch(
    root: Path | str,
    predictor,
    out: Path | str,
    *,
    recursive: bool = False,
    resume: bool = False,
    overwrite: bool = False,
    threshold: float | None = None,
    workers: int = 2,
    batch_size: int = 16,
    sequence_gap: float = DEFAULT_SEQUENCE_GAP,
    top_k: int = 5,
    exclude: Iterable[Path | str] = (),
    regions=None,
) -> Iterator[BatchProgress]:
    """Classify every file under ``root``, appending rows to ``out``; yields after each batch.

    The first progress (no rows) comes before any work, with the totals.  ``regions`` picks
    what to classify in each frame: ``detections.DetectorRegions`` (MegaDetector boxes) or
    ``background.BackgroundRegions`` (the largest changed region); None = whole frames.
    """
    root = Path(os.path.abspath(Path(root).expanduser()))
    out = Path(os.path.abspath(Path(out).expanduser()))
    if batch_size < 1 or workers < 1:
        raise DataError("--batch-size and --workers must be at least 1")
    card = predictor.card
    threshold = card.threshold if threshold is None else float(threshold)
    exclude = [out, out.with_name(out.stem + ".reviewed.csv"), *exclude]
    handle, done = open_results(out, resume=resume, overwrite=overwrite, model=card.name)
    delay = float(os.environ.get(DELAY_ENV, "0") or 0)
    try:
        total, already = count_files(root, recursive, exclude, done)
        if total == 0:
            raise DataError(f"{root}: no files found" + ("" if recursive else " (sub-folders need --recursive)"))
        writer = csv.writer(handle)
        started = time.perf_counter()
        state = {"done": already, "processed": 0, "synced": os.fstat(handle.fileno()).st_size}

        def flush(entries: list[tuple[Decoded, FolderPlan]]) -> BatchProgress:
            rows = _rows_for(entries, predictor, root, threshold, top_k)
            try:
                writer.writerows([[_cell(row[c]) for c in COLUMNS] for row in rows])
                _sync(handle)
            except OSError as exc:
                raise _write_failed(handle, out, state["synced"], exc) from None
            state["synced"] = os.fstat(handle.fileno()).st_size
            state["done"] += len(rows)
            state["processed"] += len(rows)
            if delay:
                time.sleep(delay)
            return BatchProgress(state["done"], total, state["processed"], time.perf_counter() - started, rows)

        yield BatchProgress(already, total, 0, 0.0, [])
        in_flight = max(batch_size + 2 * workers, 2 * batch_size)
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="wildid-decode") as pool:
            pending: deque[tuple[Future, FolderPlan]] = deque()
            entries: list[tuple[Decoded, FolderPlan]] = []
            for folder, files in iter_folders(root, recursive, exclude):
                todo = [f for f in files if str(f) not in done]
                if not todo:
                    continue
                plan = plan_folder(folder, files, root, predictor, pool, sequence_gap, set(todo), regions)
                for path in todo:
                    ready = plan.predecoded.pop(path, None)
                    pending.append((_done_future(ready) if ready else
                                    pool.submit(decode, path, predictor, regions, plan.background), plan))
                    while len(pending) >= in_flight:
                        future, owner = pending.popleft()
                        entries.append((future.result(), owner))
                        if len(entries) >= batch_size:
                            yield flush(entries)
                            entries = []
            while pending:
                future, owner = pending.popleft()
                entries.append((future.result(), owner))
                if len(entries) >= batch_size:
                    yield flush(entries)
                    entries = []
            if entries:
                yield flush(entries)
    finally:
        handle.close()


def _write_failed(handle, out: Path, good_size: int, exc: OSError) -> DataError:
    """A failed write (disk full, I/O error): cut the results back to the last complete batch,
    so no torn row is left behind, and say what to do in one line."""
    try:
        handle.close()  # flushing the rest of the buffer may fail again; the file is cut below anyway
    except OSError:
        pass
    try:
        os.truncate(out, good_size)
    except OSError:
        pass  # a resume drops a half-written last line too
    reason = exc.strerror or str(exc) or type(exc).__name__
    hint = "free space and rerun with --resume" if exc.errno in (errno.ENOSPC, errno.EDQUOT) else "rerun with --resume"
    return DataError(_one_line(f"could not write results to {out}: {reason}; {hint}"))


def _done_future(value) -> Future:
    future: Future = Future()
    future.set_result(value)
    return future


def run_batch(root: Path | str, predictor, out: Path | str, *, empty_threshold: float = background.DEFAULT_EMPTY_THRESHOLD,
              on_progress: Callable[[BatchProgress], None] | None = None, **options) -> BatchSummary:
    """``iter_batch`` to the end; returns counts.  ``options`` are iter_batch's keywords."""
    statuses: Counter[str] = Counter()
    likely_empty = 0
    last = None
    for step in iter_batch(root, predictor, out, **options):
        last = step
        for row in step.rows:
            statuses[row["status"]] += 1
            score = row["empty_score"]
            likely_empty += score is not None and score >= empty_threshold
        if on_progress:
            on_progress(step)
    assert last is not None
    return BatchSummary(Path(out), last.total, last.processed, last.done - last.processed, dict(statuses),
                        likely_empty, last.elapsed)


def _rows_for(entries: list[tuple[Decoded, FolderPlan]], predictor, root: Path, threshold: float,
              top_k: int) -> list[dict[str, Any]]:
    # One forward pass over every whole frame and every box of the batch.
    owners, tensors = [], []
    for decoded, _ in entries:
        for tensor in ([decoded.tensor] if decoded.tensor is not None else decoded.crops or []):
            owners.append(decoded.path)
            tensors.append(tensor)
    per_file: dict[Path, list] = {}
    if tensors:
        for path, prediction in zip(owners, predictor.predict_batch(torch.stack(tensors), top_k)):
            per_file.setdefault(path, []).append(prediction)
    predictions = {path: found[0] for path, found in per_file.items()}
    card = predictor.card
    rows = []
    for decoded, plan in entries:
        meta = plan.metadata.get(decoded.path) or FrameMetadata()
        size = (meta.width, meta.height) if meta.width else (decoded.size or (None, None))
        row: dict[str, Any] = {
            "path": str(decoded.path),
            "relpath": _relpath(decoded.path, root),
            "label": "", "confidence": None, "top_k": "", "status": "error", "error": decoded.error,
            "empty_score": None, "width": None, "height": None,
            "mean_intensity": None, "laplacian_var": None, "dark": None, "overexposed": None, "blurry": None,
            "datetime": meta.iso_datetime, "camera": meta.camera,
            "sequence_id": plan.sequence_ids.get(decoded.path, ""),
            "model": card.name, "model_version": card.version,
            **region_fields(decoded.region, per_file.get(decoded.path, [])),
        }
        prediction = predictions.get(decoded.path)
        if prediction is not None:
            row.update(
                label=prediction.label,
                confidence=round(prediction.confidence, 6),
                top_k=json.dumps([[label, round(p, 6)] for label, p in prediction.top_k]),
                status=row_status(prediction, threshold),
                empty_score=background.empty_score(decoded.thumb, plan.background),
                width=size[0], height=size[1],
                **decoded.quality,
            )
        elif decoded.region is not None and decoded.region.empty_reason and decoded.thumb is not None:
            row.update(status="empty", error=_one_line(decoded.region.empty_reason),
                       empty_score=background.empty_score(decoded.thumb, plan.background),
                       width=size[0], height=size[1], **decoded.quality)
        rows.append(row)
    return rows


def row_status(prediction, threshold: float) -> str:
    if prediction.out_of_scope:
        return "out_of_scope"
    return "accepted" if prediction.confidence >= threshold else "review"


def _cell(value: Any) -> Any:
    return "" if value is None else value


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
                                         "box_source": str, "detections": str},
                        keep_default_na=False, na_values={c: [""] for c in (
                            "confidence", "empty_score", "width", "height", "mean_intensity", "laplacian_var",
                            "detection_conf", "detection_count")})
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
            shutil.copy2(source, target)
        else:
            os.symlink(os.path.abspath(source), target)
        counts[bucket] += 1
    return counts


def safe_name(label: str) -> str:
    """A label as a folder name: no separators, no leading dots."""
    name = "".join("_" if ch in '/\\:*?"<>|\x00' else ch for ch in label).strip().lstrip(".")
    return name or "unlabelled"


# --- inputs for the app: allowed folders, uploads, zips ---------------------------------------------------------
ALLOWED_ROOT_ENV = "WILDID_ALLOWED_ROOT"
MAX_ZIP_BYTES = int(os.environ.get("WILDID_MAX_ZIP_BYTES", 4 * 1024**3))
MAX_ZIP_FILES = 100_000
# Zip bombs: unpacked size over archive size.  Camera frames (JPEG) barely compress, so a zip
# that claims more than this ratio (and more than the floor, so a few blank test images pass)
# is refused before anything is written.  The ratio is taken over the real archive length, so
# overlapping-member bombs (many entries sharing one compressed stream) are caught too.
MAX_ZIP_RATIO = 100
ZIP_RATIO_FLOOR = 64 * 1024**2
# What zipfile raises on a damaged or unsupported member while unpacking.
_ZIP_ERRORS = (zipfile.BadZipFile, zipfile.LargeZipFile, NotImplementedError, RuntimeError, EOFError,
               zlib.error, ValueError, OSError)


def allowed_root() -> Path:
    return Path(os.environ.get(ALLOWED_ROOT_ENV) or Path.home()).expanduser().resolve()


def resolve_allowed_folder(text: str, root: Path | None = None) -> Path:
    """A server folder the app may read: must exist and lie inside the allowed root."""
    root = (root or allowed_root()).resolve()
    if not text or not text.strip():
        raise DataError(f"enter a folder inside {root}")
    shown = text.strip().replace("\x00", "\\0")
    try:
        candidate = Path(text.strip()).expanduser()
        if not candidate.is_absolute():
            candidate = root / candidate
        resolved = candidate.resolve()
        inside = resolved == root or root in resolved.parents
        is_dir = inside and resolved.is_dir()
    except (ValueError, OSError, RuntimeError) as exc:  # a NUL byte, a name too long, a symlink loop
        raise DataError(_one_line(f"{shown!r}: not a usable folder path ({exc})")) from None
    if not inside:
        raise DataError(_one_line(f"{shown}: outside the allowed folder {root} (set {ALLOWED_ROOT_ENV} to change it)"))
    if not is_dir:
        raise DataError(_one_line(f"{shown}: no such folder"))
    return resolved


def extract_zip(source, dest: Path | str, max_bytes: int = MAX_ZIP_BYTES, max_files: int = MAX_ZIP_FILES,
                max_ratio: float = MAX_ZIP_RATIO) -> Path:
    """Unpack a zip (path or file-like) into ``dest`` after checking every member: no absolute
    paths or ``..`` (path traversal), no links, and limits on total unpacked size, count and
    compression ratio (zip bombs).  Nothing is written unless all members pass; a member that
    fails while unpacking (bad checksum, size that lies, unsupported compression, encryption,
    a file and a folder of one name) removes everything unpacked so far and raises DataError."""
    dest = Path(dest)
    archive_bytes = _stream_length(source)
    try:
        archive = zipfile.ZipFile(source)
    except (zipfile.BadZipFile, OSError, ValueError, EOFError, NotImplementedError):
        raise DataError("the upload is not a readable zip file") from None
    with archive:
        members = [m for m in archive.infolist() if not m.is_dir()]
        if len(members) > max_files:
            raise DataError(f"the zip holds {len(members)} files, over the limit of {max_files}")
        total = sum(m.file_size for m in members)
        if total > max_bytes:
            raise DataError(f"the zip unpacks to {total / 1e6:.0f} MB, over the {max_bytes / 1e6:.0f} MB limit")
        if archive_bytes and total > max(ZIP_RATIO_FLOOR, max_ratio * archive_bytes):
            raise DataError(f"the zip unpacks to {total / 1e6:.0f} MB from {archive_bytes / 1e6:.1f} MB, over the "
                            f"{max_ratio:.0f}:1 compression limit (a zip bomb?); refusing the zip")
        for member in members:
            name = PurePosixPath(member.filename.replace("\\", "/"))
            if name.is_absolute() or ".." in name.parts or (name.parts and ":" in name.parts[0]):
                raise DataError(f"the zip entry {member.filename!r} points outside the folder; refusing the zip")
            if (member.external_attr >> 16) & 0o170000 == 0o120000:
                raise DataError(f"the zip entry {member.filename!r} is a symbolic link; refusing the zip")
        existed = dest.is_dir()
        before = set(os.listdir(dest)) if existed else set()
        member = None
        try:
            dest.mkdir(parents=True, exist_ok=True)
            for member in members:
                target = dest / PurePosixPath(member.filename.replace("\\", "/"))
                target.parent.mkdir(parents=True, exist_ok=True)
                with archive.open(member) as src, target.open("wb") as out:
                    shutil.copyfileobj(src, out, 1 << 20)
        except _ZIP_ERRORS as exc:
            _remove_new_entries(dest, existed, before)
            where = f"the zip entry {member.filename!r}" if member is not None else "the zip"
            reason = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
            raise DataError(_one_line(f"{where} could not be unpacked ({reason}); nothing was kept")) from None
    return dest


def _stream_length(source) -> int | None:
    """Byte length of a zip given as a path or a seekable file-like (None if unknown)."""
    try:
        if isinstance(source, (str, os.PathLike)):
            return os.path.getsize(source)
        position = source.tell()
        length = source.seek(0, os.SEEK_END)
        source.seek(position)
        return length
    except (AttributeError, OSError, ValueError):
        return None


def _remove_new_entries(dest: Path, existed: bool, before: set[str]) -> None:
    """Undo a partial extraction: the whole folder if it was made here, else what was added to it."""
    if not existed:
        shutil.rmtree(dest, ignore_errors=True)
        return
    for name in set(os.listdir(dest)) - before:
        path = dest / name
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)


def save_uploads(files: Iterable[Any], dest: Path | str) -> Path:
    """Write uploaded files (objects with .name and .getbuffer()/.read()) flat into ``dest``;
    equal names get a numeric suffix instead of overwriting each other."""
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    for upload in files:
        name = safe_name(Path(str(upload.name)).name)
        target, n = dest / name, 1
        while target.exists():
            target = dest / f"{Path(name).stem}_{n}{Path(name).suffix}"
            n += 1
        data = upload.getbuffer() if hasattr(upload, "getbuffer") else upload.read()
        target.write_bytes(bytes(data))
    return dest
