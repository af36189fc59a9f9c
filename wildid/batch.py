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
- Rows come from :func:`folder_rows` (one camera folder, or a batch-aligned slice of one);
  batches never span folders, so the Dask path (:mod:`wildid.cluster`), which runs the same
  function per folder or slice on its workers, writes the same rows.

The CSV columns are the results-table contract (``COLUMNS``), shared with the dashboard and
the review page.
"""

from __future__ import annotations

import csv
import errno
import io
import json
import os
import time
from collections import Counter, deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, Callable, Iterable, Iterator, Mapping, Sequence

import numpy as np
import torch

from wildid import background, defaults
from wildid.detections import REGION_COLUMNS, RegionPlan, crop_box, region_fields
from wildid.errors import DataError, WildidError
from wildid.guard import check_path
from wildid.imaging import quality_metrics
from wildid.metadata import FrameMetadata, assign_sequences, read_metadata

COLUMNS = (
    "path", "relpath", "label", "confidence", "top_k", "status", "error", "empty_score",
    "width", "height", "mean_intensity", "laplacian_var", "dark", "overexposed", "blurry",
    "datetime", "camera", "sequence_id", "model", "model_version",
) + REGION_COLUMNS + ("rank", "taxon", "taxon_confidence")
# Results written before the region columns, or before the rank / taxon columns, existed: readable
# everywhere, not resumable (appended rows would not line up).
COLUMNS_BEFORE_TAXON = COLUMNS[:-3]
LEGACY_COLUMNS = COLUMNS_BEFORE_TAXON[: -len(REGION_COLUMNS)]
# The header exactly as csv.writer writes it (the \r\n line end is csv's default).
HEADER_LINE = (",".join(COLUMNS) + "\r\n").encode("utf-8")
# empty: a detector found no animal in the frame (the reason is in ``error``).
# out_of_scope: the model's scope check says it was not trained on images like this one
# (wildid.scope); such rows get no confident label and go to review with the low-confidence ones.
STATUSES = ("accepted", "review", "out_of_scope", "error", "empty")
# Test hook: seconds to sleep before each batch is written, so a test can kill the process mid-run
# (also between the start of a run and its first row).
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
        if tuple(header) in (LEGACY_COLUMNS, COLUMNS_BEFORE_TAXON):
            missing = "detection, rank and taxon" if tuple(header) == LEGACY_COLUMNS else "rank and taxon"
            raise DataError(f"{out} was written by an earlier wildid (without the {missing} columns); "
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


def check_results(out: Path | str, resume: bool = False, overwrite: bool = False,
                  model: str | None = None) -> tuple[set[str], bool]:
    """May a run write ``out``?  Returns (paths already done, fresh); creates and changes nothing.

    ``fresh``: the file is started anew (header + first rows) when the first rows are ready,
    so a run that fails before that leaves the old file, or none, behind.  A file without a
    complete row (empty, or a header-only file left by a run that died before its first row)
    holds nothing to keep: it never blocks a rerun.
    """
    out = Path(out).expanduser()
    if out.is_dir():
        raise DataError(f"{out} is a folder; give a file name for --out, e.g. {out / 'results.csv'}")
    if not _has_complete_row(out) or overwrite:
        return set(), True
    if not resume:
        raise DataError(f"{out} already exists: add --resume to finish it, or --overwrite to start again")
    done, written_by = read_done_paths(out)
    if model and written_by and written_by != model:
        raise DataError(f"{out} was written by model {written_by!r}; resume with --model {written_by} or choose another --out")
    return done, False


def _has_complete_row(out: Path) -> bool:
    """False when ``out`` is missing, empty, or (part of) the results header with no complete row."""
    try:
        with out.open("rb") as handle:
            head = handle.read(len(HEADER_LINE))
            if head != HEADER_LINE:
                return bool(head) and not (len(head) < len(HEADER_LINE) and HEADER_LINE.startswith(head))
            while chunk := handle.read(1 << 16):
                if b"\n" in chunk:  # a complete row ends in a newline; a torn one does not
                    return True
            return False
    except FileNotFoundError:
        return False


def open_results(out: Path | str, fresh: bool) -> io.TextIOWrapper:
    """The results CSV opened for the first rows of a run: a new file with its header (``fresh``),
    else the existing one for appending.  Called only once rows are ready to be written."""
    out = Path(out).expanduser()
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        handle = out.open("w" if fresh else "a", newline="", encoding="utf-8")
    except OSError as exc:
        raise DataError(_one_line(f"cannot write {out}: {exc.strerror or exc}; choose another --out")) from None
    if fresh:
        try:
            handle.write(HEADER_LINE.decode("utf-8"))
            _sync(handle)
        except OSError as exc:
            raise _write_failed(handle, out, 0, exc, remove=True) from None
    return handle


def _check_writable(out: Path) -> None:
    """Fail before the run (bad usage) rather than at its first row when --out cannot be written."""
    folder = out.parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    if not folder.is_dir() or not os.access(folder, os.W_OK | os.X_OK):
        raise DataError(f"cannot write {out}: {folder} is not a writable folder; choose another --out")
    if out.exists() and not os.access(out, os.W_OK):
        raise DataError(f"cannot write {out}: the file is read-only; choose another --out")


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
    recursive: bool = defaults.RECURSIVE,
    resume: bool = False,
    overwrite: bool = False,
    threshold: float | None = None,
    workers: int = defaults.DECODE_WORKERS,
    batch_size: int = defaults.BATCH_SIZE,
    sequence_gap: float = defaults.SEQUENCE_GAP,
    top_k: int = defaults.TOP_K,
    exclude: Iterable[Path | str] = (),
    regions=None,
    confine: Path | None = None,
) -> Iterator[BatchProgress]:
    """Classify every file under ``root``, appending rows to ``out``; yields after each batch.

    The first progress (no rows) comes once the run is known to be able to start (the folder
    has files, ``out`` may be written) and before any work, with the totals.  ``out`` is created
    with the first rows, never before.  ``threshold`` None: the card's (defaults.accept_threshold).
    ``regions`` picks what to classify in each frame: ``detections.DetectorRegions`` (MegaDetector
    boxes) or ``background.BackgroundRegions`` (the largest changed region); None = whole frames.
    With ``confine`` (the app's allowed folder), a file that is a symbolic link leading outside it
    (or into a hidden folder) is never opened: it gets an error row.
    """
    if batch_size < 1 or workers < 1:
        raise DataError("--batch-size and --workers must be at least 1")
    run = prepare_run(root, out, predictor.card, recursive=recursive, resume=resume, overwrite=overwrite,
                      threshold=threshold, exclude=exclude)
    root, out, threshold, exclude, done, fresh = run.root, run.out, run.threshold, run.exclude, run.done, run.fresh
    total, already = run.total, run.already
    delay = float(os.environ.get(DELAY_ENV, "0") or 0)
    handle = None
    try:
        started = time.perf_counter()
        state = {"done": already, "processed": 0, "synced": 0}

        def flush(rows: list[dict[str, Any]]) -> BatchProgress:
            nonlocal handle
            if delay:
                time.sleep(delay)
            if handle is None:  # the first rows of this run are ready: only now is the file started
                handle = open_results(out, fresh)
                state["synced"] = os.fstat(handle.fileno()).st_size
            state["synced"] = write_rows(handle, out, rows, state["synced"],
                                         remove=fresh and state["synced"] <= len(HEADER_LINE))
            state["done"] += len(rows)
            state["processed"] += len(rows)
            return BatchProgress(state["done"], total, state["processed"], time.perf_counter() - started, rows)

        yield BatchProgress(already, total, 0, 0.0, [])
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="wildid-decode") as pool:
            for folder, files in iter_folders(root, recursive, exclude):
                todo = [f for f in files if str(f) not in done]
                if not todo:
                    continue
                refused = _links_out_of(files, confine) if confine is not None else {}
                for rows in folder_rows(folder, files, todo, root, predictor, pool, threshold=threshold,
                                        top_k=top_k, batch_size=batch_size, sequence_gap=sequence_gap,
                                        workers=workers, regions=regions, refused=refused):
                    yield flush(rows)
    finally:
        if handle is not None:
            handle.close()


@dataclass
class RunPlan:
    """What a run may do, decided before anything is written (:func:`prepare_run`)."""

    root: Path
    out: Path
    threshold: float
    exclude: list
    done: set
    fresh: bool  # the results file is started anew with the first rows
    total: int
    already: int


def prepare_run(root: Path | str, out: Path | str, card, *, recursive: bool, resume: bool, overwrite: bool,
                threshold: float | None, exclude: Iterable[Path | str] = ()) -> RunPlan:
    """Every check that can refuse a run, in-process or on a cluster, before anything is written:
    a run that fails to start leaves no results file (and an --overwrite target untouched)."""
    root = Path(os.path.abspath(Path(root).expanduser()))
    out = Path(os.path.abspath(Path(out).expanduser()))
    threshold = defaults.accept_threshold(card) if threshold is None else float(threshold)
    exclude = [out, out.with_name(out.stem + ".reviewed.csv"), *exclude]
    done, fresh = check_results(out, resume=resume, overwrite=overwrite, model=card.name)
    total, already = count_files(root, recursive, exclude, done)
    if total == 0:
        raise DataError(_no_files_message(root, recursive, exclude))
    _check_writable(out)
    return RunPlan(root, out, threshold, exclude, done, fresh, total, already)


def _links_out_of(files: Sequence[Path], confine: Path) -> dict[Path, str]:
    """Files that are symbolic links the guard refuses (target outside ``confine`` or hidden),
    each with its error-row message."""
    refused = {}
    for path in files:
        if not path.is_symlink():
            continue  # iter_folders never enters linked folders, so only a file link can lead out
        try:
            check_path(path, confine, must_exist=False, what="file")
        except DataError as exc:
            refused[path] = _one_line(f"{path.name}: symbolic link not followed: {exc}")
    return refused


def _no_files_message(root: Path, recursive: bool, exclude: Iterable[Path | str]) -> str:
    """Why a folder gave nothing to classify, and the fix."""
    if not recursive:
        nested, _ = count_files(root, True, exclude)
        if nested:
            return (f"no files directly in {root}; {nested} in sub-folders: include sub-folders "
                    f"(--recursive, or tick 'Include sub-folders')")
    return f"no files in {root} (hidden files and folders are skipped); give the folder holding the images"


def folder_rows(folder: Path, files: Sequence[Path], todo: Sequence[Path], root: Path, predictor,
                pool: ThreadPoolExecutor, *, threshold: float, top_k: int = 5, batch_size: int = 16,
                sequence_gap: float = defaults.SEQUENCE_GAP, workers: int = defaults.DECODE_WORKERS, regions=None,
                plan: FolderPlan | None = None,
                refused: Mapping[Path, str] | None = None) -> Iterator[list[dict[str, Any]]]:
    """The result rows of ``todo`` (files of one camera folder, in folder order), batch by batch.

    ``files`` is the whole folder: sequences and the background come from all of it, so any
    part of a folder gets the rows the whole folder would.  Batches are consecutive runs of
    ``batch_size`` files of ``todo``; a slice of a folder that starts at a multiple of
    ``batch_size`` therefore sees the same batches as the whole folder (the Dask path,
    :mod:`wildid.cluster`, relies on that).  ``plan`` (from :func:`plan_folder`) may be given
    when several slices share one.  The pool (``workers`` threads) decodes a few batches ahead
    of the model.  ``regions``: what to classify in each frame (see :func:`iter_batch`).
    ``refused``: files never to open (links out of the allowed folder), each with its error-row message.
    """
    refused = refused or {}
    if plan is None:
        readable = [f for f in files if f not in refused]
        plan = plan_folder(folder, readable, root, predictor, pool, sequence_gap, set(todo), regions)
    in_flight = max(batch_size + 2 * workers, 2 * batch_size)
    pending: deque[Future] = deque()
    entries: list[tuple[Decoded, FolderPlan]] = []
    for path in todo:
        if path in refused:
            pending.append(_done_future(Decoded(path, error=refused[path])))
            continue
        ready = plan.predecoded.pop(path, None)
        pending.append(_done_future(ready) if ready else pool.submit(decode, path, predictor, regions, plan.background))
        while len(pending) >= in_flight:
            entries.append((pending.popleft().result(), plan))
            if len(entries) >= batch_size:
                yield _rows_for(entries, predictor, root, threshold, top_k)
                entries = []
    while pending:
        entries.append((pending.popleft().result(), plan))
        if len(entries) >= batch_size:
            yield _rows_for(entries, predictor, root, threshold, top_k)
            entries = []
    if entries:
        yield _rows_for(entries, predictor, root, threshold, top_k)


def write_rows(handle, out: Path, rows: list[dict[str, Any]], synced: int, remove: bool = False) -> int:
    """Append ``rows`` to the results, flushed and fsync'ed; returns the new good size.

    A failed write cuts the file back to ``synced`` (the last complete batch), or removes it
    (``remove``: started by this run, no row yet), and raises."""
    try:
        csv.writer(handle).writerows([[_cell(row[c]) for c in COLUMNS] for row in rows])
        _sync(handle)
    except OSError as exc:
        raise _write_failed(handle, out, synced, exc, remove=remove) from None
    return os.fstat(handle.fileno()).st_size


def _write_failed(handle, out: Path, good_size: int, exc: OSError, remove: bool = False) -> DataError:
    """A failed write (disk full, I/O error): cut the results back to the last complete batch,
    so no torn row is left behind, and say what to do in one line.  ``remove``: the file was
    started by this run and holds no row yet, so it goes (nothing to resume, nothing to block
    the retry)."""
    try:
        handle.close()  # flushing the rest of the buffer may fail again; the file is cut below anyway
    except OSError:
        pass
    try:
        if remove:
            out.unlink(missing_ok=True)
        else:
            os.truncate(out, good_size)
    except OSError:
        pass  # a resume drops a half-written last line too
    reason = exc.strerror or str(exc) or type(exc).__name__
    retry = "rerun" if remove else "rerun with --resume"
    hint = f"free space and {retry}" if exc.errno in (errno.ENOSPC, errno.EDQUOT) else retry
    return DataError(_one_line(f"could not write results to {out}: {reason}; {hint}"))


def _done_future(value) -> Future:
    future: Future = Future()
    future.set_result(value)
    return future


def run_batch(root: Path | str, predictor, out: Path | str, *, empty_threshold: float = background.DEFAULT_EMPTY_THRESHOLD,
              on_progress: Callable[[BatchProgress], None] | None = None, **options) -> BatchSummary:
    """``iter_batch`` to the end; returns counts.  ``options`` are iter_batch's keywords."""
    statuses: Counter[str] = Counter()
    empties = 0
    last = None
    for step in iter_batch(root, predictor, out, **options):
        last = step
        for row in step.rows:
            statuses[row["status"]] += 1
            score = row["empty_score"]
            empties += score is not None and score >= empty_threshold
        if on_progress:
            on_progress(step)
    assert last is not None
    return BatchSummary(Path(out), last.total, last.processed, last.done - last.processed, dict(statuses),
                        empties, last.elapsed)


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
            "rank": "", "taxon": "", "taxon_confidence": None,
        }
        prediction = predictions.get(decoded.path)
        if prediction is not None:
            row.update(
                label=prediction.label,
                confidence=round(prediction.confidence, 6),
                top_k=json.dumps([[label, round(p, 6)] for label, p in prediction.top_k]),
                status=row_status(prediction, threshold),
                empty_score=background.empty_score(decoded.thumb, plan.background),
                rank=prediction.rank, taxon=prediction.taxon,
                taxon_confidence=round(prediction.taxon_confidence, 6) if prediction.taxon else None,
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


# Reading results back and exports (wildid.batch_results), uploads and zips (wildid.batch_inputs):
# split out by job, re-exported here for the pages, the CLI and the tests.
from wildid.batch_inputs import (  # noqa: E402,F401
    MAX_ZIP_BYTES,
    MAX_ZIP_FILES,
    MAX_ZIP_RATIO,
    ZIP_RATIO_FLOOR,
    extract_zip,
    save_uploads,
    zip_unpacked_size,
)
from wildid.batch_results import (  # noqa: E402,F401
    SORT_MODES,
    export_json,
    iter_results,
    likely_empty,
    results_frame,
    safe_name,
    sort_into,
)
