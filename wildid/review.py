"""Human review of batch results: queues, the reviewed-labels journal, live metrics, the final data set.

The journal ``<results stem>.reviewed.csv`` lives next to the results and is append-only:
every label is one line written with a single ``write`` + ``fsync``, so a crash or a browser
refresh loses at most the image being labelled.  Replaying the journal (last entry per path
wins) gives the current manual labels.  The results file itself is only ever read.

Only newline-terminated lines count as committed: a last line without a newline is a torn
write and is ignored; the next append starts on a fresh line so the fragment never merges
with a good entry (and is skipped on replay because it does not have six fields).
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import re
import shutil
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import pandas as pd

from wildid import project
from wildid.background import DEFAULT_EMPTY_THRESHOLD
from wildid.errors import DataError
from wildid.guard import check_path
from wildid.imaging import is_image_file

RESULTS_COLUMNS = (
    "path", "relpath", "label", "confidence", "top_k", "status", "error", "empty_score", "width", "height",
    "mean_intensity", "laplacian_var", "dark", "overexposed", "blurry", "datetime", "camera", "sequence_id",
    "model", "model_version",
)
REQUIRED_RESULTS_COLUMNS = ("path", "label", "confidence", "status")
NUMERIC_RESULTS_COLUMNS = ("confidence", "empty_score", "width", "height", "mean_intensity", "laplacian_var")
JOURNAL_COLUMNS = ("path", "true_label", "reviewer", "reviewed_at", "predicted_label", "confidence")
JOURNAL_SUFFIX = ".reviewed.csv"
METADATA_COLUMNS = (
    "datetime", "camera", "sequence_id", "width", "height", "empty_score", "mean_intensity", "laplacian_var",
    "dark", "overexposed", "blurry", "model", "model_version",
)
FINAL_COLUMNS = (
    "path", "relpath", "label", "label_source", "predicted_label", "confidence", "status", "reviewer",
    "reviewed_at",
) + METADATA_COLUMNS

QUEUE_LIKELY_EMPTY = "likely empty"
QUEUE_TO_LABEL = "to label"
QUEUE_BELOW_THRESHOLD = "below threshold"
QUEUE_PER_CLASS = "per class"
QUEUE_RANDOM = "random sample"
QUEUE_PER_BIN = "per confidence bin"
QUEUES = (QUEUE_LIKELY_EMPTY, QUEUE_TO_LABEL, QUEUE_BELOW_THRESHOLD, QUEUE_PER_CLASS, QUEUE_RANDOM, QUEUE_PER_BIN)
# Queues built around the empty threshold: blanks first (in pages of thumbnails), then the rest.
EMPTY_QUEUES = (QUEUE_LIKELY_EMPTY, QUEUE_TO_LABEL)
DEFAULT_BINS = (0.0, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)
ANONYMOUS = "anonymous"


# --- paths -------------------------------------------------------------------------------------
def journal_path(results_path: str | os.PathLike) -> Path:
    """``runs/cam1.csv`` -> ``runs/cam1.reviewed.csv``; in a project folder every run shares the
    project's ``reviewed.csv`` (labels belong to the images, whichever model classified them)."""
    return project.side_file(results_path, project.JOURNAL)


def resolve_image_path(path: str, relpath: str | None, results_dir: Path) -> Path:
    """Where the image of a results row is: as given, else relative to the results file."""
    candidates = [Path(path).expanduser()]
    if not candidates[0].is_absolute():
        candidates.append(results_dir / path)
    if relpath:
        candidates.append(results_dir / relpath)
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    return candidates[-1] if not candidates[0].is_absolute() else candidates[0]


# --- reading ----------------------------------------------------------------------------------
def _committed_text(path: Path) -> tuple[str, bool]:
    """The file's text up to its last newline, and whether a torn (unterminated) tail was dropped."""
    data = path.read_bytes()
    cut = data.rfind(b"\n") + 1
    return data[:cut].decode("utf-8", errors="replace"), cut < len(data)


def parse_top_k(value) -> list[tuple[str, float]]:
    """The results' top_k JSON (``[[label, prob], ...]``, or ``[{"label", "score"}]``) as pairs."""
    if value is None or (isinstance(value, float) and np.isnan(value)) or value == "":
        return []
    try:
        items = json.loads(value) if isinstance(value, str) else value
        pairs = []
        for item in items:
            if isinstance(item, dict):
                pairs.append((str(item["label"]), float(item.get("score", item.get("probability", 0.0)))))
            else:
                pairs.append((str(item[0]), float(item[1])))
        return pairs
    except (ValueError, TypeError, KeyError, IndexError):
        return []


def read_results(path: str | os.PathLike) -> pd.DataFrame:
    """A results table (the batch contract) as a DataFrame; never modifies the file.

    Text columns stay strings (empty for missing), numeric ones become floats.  A torn last
    row (batch still writing, or crashed mid-row) is ignored.
    """
    path = Path(path)
    if path.name.endswith(JOURNAL_SUFFIX) or path == journal_path(path):
        raise DataError(f"{path.name} is a reviewed-labels journal; pick the results CSV it belongs to")
    if not path.is_file():
        raise DataError(f"results file not found: {path}")
    text, _ = _committed_text(path)
    if not text.strip():
        raise DataError(f"results file {path} is empty")
    try:
        frame = pd.read_csv(io.StringIO(text), dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, UnicodeDecodeError) as exc:
        raise DataError(f"cannot read results file {path}: {exc}") from exc
    missing = [c for c in REQUIRED_RESULTS_COLUMNS if c not in frame.columns]
    if missing:
        raise DataError(f"{path.name} is not a wildid results table: missing column(s) {', '.join(missing)}")
    for column in RESULTS_COLUMNS:
        if column not in frame.columns:
            frame[column] = ""
    for column in NUMERIC_RESULTS_COLUMNS:
        frame[column] = pd.to_numeric(frame[column], errors="coerce")
    frame = frame[frame["path"] != ""].reset_index(drop=True)
    frame["status"] = frame["status"].str.strip().str.lower()
    return frame


# --- journal ----------------------------------------------------------------------------------
def _clean(value, name: str) -> str:
    text = "" if value is None else str(value)
    if "\n" in text or "\r" in text:
        raise DataError(f"{name} must be on one line: {text!r}")
    return text


def _line(values: Sequence[str]) -> bytes:
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\n").writerow(values)
    return buffer.getvalue().encode("utf-8")


def now_iso() -> str:
    return datetime.now(timezone.utc).astimezone().isoformat(timespec="seconds")


def append_label(
    results_path: str | os.PathLike,
    path: str,
    true_label: str,
    reviewer: str = "",
    predicted_label: str = "",
    confidence: float | None = None,
    reviewed_at: str | None = None,
) -> dict:
    """Append one manual label to the journal, durably (write + fsync) before returning."""
    return append_labels(results_path, [(path, true_label, predicted_label, confidence)], reviewer, reviewed_at)[0]


def append_labels(
    results_path: str | os.PathLike,
    items: Sequence[tuple[str, str, str, float | None]],
    reviewer: str = "",
    reviewed_at: str | None = None,
) -> list[dict]:
    """Append (path, true label, predicted label, confidence) entries in one write + fsync: a
    confirmed page of likely-empty frames is all in the journal or (after a crash) none of it
    but a torn last line, which replay ignores."""
    entries = []
    stamp = reviewed_at or now_iso()
    who = " ".join(_clean(reviewer, "reviewer").split()) or ANONYMOUS
    for path, true_label, predicted_label, confidence in items:
        label = " ".join(_clean(true_label, "label").split())
        if not label:
            raise DataError("the label is empty: pick a class or type a name")
        entries.append({
            "path": _clean(path, "path"),
            "true_label": label,
            "reviewer": who,
            "reviewed_at": stamp,
            "predicted_label": _clean(predicted_label, "predicted label"),
            "confidence": "" if confidence is None or pd.isna(confidence) else f"{float(confidence):.6g}",
        })
    if not entries:
        return []
    target = journal_path(results_path)
    created = not target.exists()
    fd = os.open(target, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        size = os.fstat(fd).st_size
        prefix = b""
        if size and b"\n" not in os.pread(fd, min(size, 4096), 0):
            # Not one committed line (a torn header): nothing to keep, start the file over.
            os.ftruncate(fd, 0)
            size = 0
        if size == 0:
            prefix = _line(JOURNAL_COLUMNS)
        elif os.pread(fd, 1, size - 1) != b"\n":
            prefix = b"\n"  # a torn last line from a crash: keep it apart from the new entries
        os.write(fd, prefix + b"".join(_line([entry[c] for c in JOURNAL_COLUMNS]) for entry in entries))
        os.fsync(fd)
    finally:
        os.close(fd)
    if created:
        _fsync_dir(target.parent)
    return entries


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@dataclass
class Replay:
    """The journal read back: every valid entry in order, and the last one per path."""

    entries: pd.DataFrame
    latest: pd.DataFrame
    skipped_lines: int = 0
    torn_tail: bool = False

    @property
    def labels(self) -> dict[str, str]:
        return dict(zip(self.latest["path"], self.latest["true_label"]))


def _empty_journal() -> pd.DataFrame:
    frame = pd.DataFrame({c: pd.Series(dtype=str) for c in JOURNAL_COLUMNS})
    frame["confidence"] = frame["confidence"].astype(float)
    return frame


def replay_journal(results_path: str | os.PathLike) -> Replay:
    """Read the journal of a results file: last entry per path wins; torn lines are skipped."""
    target = journal_path(results_path)
    if not target.is_file():
        empty = _empty_journal()
        return Replay(empty, empty.copy())
    text, torn = _committed_text(target)
    rows, skipped = [], int(torn)
    columns = list(JOURNAL_COLUMNS)
    header = list(JOURNAL_COLUMNS)
    # Each line is parsed on its own, so a torn fragment with an open quote cannot swallow the
    # lines after it; without any quote in the file, splitting on commas is the same and fast.
    quoted = '"' in text
    for number, line in enumerate(text.split("\n")):
        if not line.strip():
            continue
        if quoted:
            try:
                [fields] = list(csv.reader([line], strict=True))
            except (csv.Error, ValueError):
                skipped += 1
                continue
        else:
            fields = line.split(",")
        if fields == header or (number == 0 and set(fields) == set(header)):
            columns = fields  # the header (or a duplicate from a concurrent first write)
            continue
        if len(fields) != len(columns):
            skipped += 1
            continue
        row = dict(zip(columns, fields))
        if not row["path"] or not row["true_label"].strip():
            skipped += 1
            continue
        rows.append(row)
    if not rows:
        empty = _empty_journal()
        return Replay(empty, empty.copy(), skipped, torn)
    entries = pd.DataFrame(rows, columns=list(JOURNAL_COLUMNS))
    entries["confidence"] = pd.to_numeric(entries["confidence"], errors="coerce")
    latest = entries.drop_duplicates("path", keep="last").reset_index(drop=True)
    return Replay(entries, latest, skipped, torn)


# --- queues -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class QueueSpec:
    """Which images to review, in which order.  ``describe()`` is a stable key for the UI."""

    kind: str = QUEUE_BELOW_THRESHOLD
    threshold: float | None = None  # None: the rows batch marked status == review
    label: str | None = None
    n: int = 50
    seed: int = 0
    per_bin: int = 10
    bins: tuple[float, ...] = DEFAULT_BINS
    empty_threshold: float = DEFAULT_EMPTY_THRESHOLD  # likely empty at empty_score >= this
    # The project's labels: a frame batch accepted under another label (a class of a general
    # model, not of this project) still needs one of these.
    labels: tuple[str, ...] = ()

    def describe(self) -> str:
        if self.kind in EMPTY_QUEUES:
            return f"{self.kind} at empty_score {self.empty_threshold:g}"
        if self.kind == QUEUE_BELOW_THRESHOLD:
            return f"below threshold {self.threshold}" if self.threshold is not None else "status review"
        if self.kind == QUEUE_PER_CLASS:
            return f"class {self.label}"
        if self.kind == QUEUE_RANDOM:
            return f"random {self.n} seed {self.seed}"
        return f"{self.per_bin} per bin seed {self.seed} bins {','.join(f'{b:g}' for b in self.bins)}"


def reviewable(results: pd.DataFrame) -> pd.DataFrame:
    """Rows with a prediction to check (batch errors have no image to show)."""
    return results[results["status"] != "error"]


def confidence_bin(confidence: pd.Series, bins: Sequence[float] = DEFAULT_BINS) -> pd.Series:
    labels = [f"{lo:.2f}-{hi:.2f}" for lo, hi in zip(bins[:-1], bins[1:])]
    return pd.cut(confidence.astype(float), bins=list(bins), labels=labels, include_lowest=True, right=True)


def likely_empty(rows: pd.DataFrame, threshold: float, not_empty: Iterable[str] = ()) -> np.ndarray:
    """Which rows look empty: empty_score at or above the threshold (or no animal box from a
    detector), unless a reviewer flagged the frame as holding an animal."""
    flagged = member(rows["path"], set(not_empty))
    scored = (rows["empty_score"].astype(float) >= float(threshold)).to_numpy()
    return (scored | (rows["status"] == "empty").to_numpy()) & ~flagged


def build_queue(results: pd.DataFrame, spec: QueueSpec, not_empty: Iterable[str] = ()) -> pd.DataFrame:
    """The rows of ``results`` to review, in review order (a deterministic function of spec and
    the frames flagged not empty)."""
    rows = reviewable(results)
    if spec.kind in EMPTY_QUEUES:
        blank = likely_empty(rows, spec.empty_threshold, not_empty)
        if spec.kind == QUEUE_LIKELY_EMPTY:
            # Most certainly empty first: the first pages are the quickest to confirm.
            picked = rows[blank].assign(_score=rows.loc[blank, "empty_score"].fillna(1.0))
            return picked.sort_values(["_score", "relpath", "path"], ascending=[False, True, True],
                                      kind="stable").drop(columns="_score")
        # The rest in file order, so the frames of one burst come one after the other; what batch
        # accepted under one of the project's labels stays out unless a reviewer flagged it.
        flagged = member(rows["path"], set(not_empty))
        needs = rows["status"].isin(["review", "out_of_scope"]).to_numpy() | flagged
        if spec.labels:
            needs |= ~member(rows["label"], set(spec.labels))
        picked = rows[~blank & needs]
        return picked.sort_values(["relpath", "path"], kind="stable")
    if spec.kind == QUEUE_BELOW_THRESHOLD:
        if spec.threshold is None:
            picked = rows[rows["status"].isin(["review", "out_of_scope"])]
        else:
            picked = rows[rows["confidence"] < spec.threshold]
        return picked.sort_values("confidence", kind="stable")
    if spec.kind == QUEUE_PER_CLASS:
        if not spec.label:
            raise DataError("pick a class for the per-class queue")
        return rows[rows["label"] == spec.label].sort_values("confidence", kind="stable")
    if spec.kind == QUEUE_RANDOM:
        return rows.sample(n=min(max(int(spec.n), 0), len(rows)), random_state=spec.seed)
    if spec.kind == QUEUE_PER_BIN:
        binned = rows.assign(_bin=confidence_bin(rows["confidence"], spec.bins))
        parts = []
        for _, group in binned.groupby("_bin", observed=True, sort=True):
            parts.append(group.sample(n=min(spec.per_bin, len(group)), random_state=spec.seed))
        if not parts:
            return rows.iloc[:0]
        return pd.concat(parts).drop(columns="_bin")
    raise DataError(f"unknown queue {spec.kind!r}: choose one of {', '.join(QUEUES)}")


def class_options(results: pd.DataFrame, card_classes: Sequence[str] | None = None) -> list[str]:
    """Labels offered as buttons: the model's classes if known, else every label the results mention.

    Long lists are ordered by how often the model predicted them, so keys 1-9 hit the common ones.
    """
    counts = results.loc[results["label"] != "", "label"].value_counts()
    if card_classes:
        classes = list(dict.fromkeys(card_classes))
        if len(classes) > 9:
            classes.sort(key=lambda c: -int(counts.get(c, 0)))
        return classes
    seen = list(counts.index)
    for value in results["top_k"].tolist():
        seen += [label for label, _ in parse_top_k(value)]
    return sorted(dict.fromkeys(seen))


# --- live metrics -----------------------------------------------------------------------------
@dataclass
class ReviewMetrics:
    n_reviewed: int
    n_correct: int
    accuracy: float | None
    per_bin: pd.DataFrame  # bin, share (of all reviewable results), n, correct, accuracy
    per_class: pd.DataFrame  # predicted_label, n, correct, accuracy
    estimated_accuracy: float | None  # per-bin accuracy weighted by how many results fall in each bin
    accepted_accuracy: float | None  # accuracy of reviewed rows that batch had accepted automatically
    corrections: pd.DataFrame = field(default_factory=pd.DataFrame)  # predicted -> true counts


def reviewed_table(results: pd.DataFrame, replay: Replay) -> pd.DataFrame:
    """The latest manual labels joined with the model's prediction and status for each path."""
    latest = replay.latest
    if latest.empty:
        return pd.DataFrame(columns=["path", "true_label", "predicted_label", "confidence", "status", "reviewer", "reviewed_at"])
    wanted = member(results["path"], set(latest["path"].tolist()))
    info = results[wanted].drop_duplicates("path", keep="last").set_index("path")
    table = latest.copy()
    # The journal records what the model said at review time; older lines may lack it.
    from_results = table["path"].map(info["label"])
    table["predicted_label"] = table["predicted_label"].where(table["predicted_label"] != "", from_results).fillna("")
    table["confidence"] = table["confidence"].fillna(table["path"].map(info["confidence"])).astype(float)
    table["status"] = table["path"].map(info["status"]).fillna("")
    return table


def review_metrics(results: pd.DataFrame, replay: Replay, bins: Sequence[float] = DEFAULT_BINS) -> ReviewMetrics:
    table = reviewed_table(results, replay)
    table = table.assign(correct=(table["true_label"] == table["predicted_label"]).astype(int))
    n = len(table)
    correct = int(table["correct"].sum()) if n else 0
    population = confidence_bin(reviewable(results)["confidence"], bins).value_counts(normalize=True, sort=False)
    binned = table.assign(bin=confidence_bin(table["confidence"], bins))
    per_bin = binned.groupby("bin", observed=False)["correct"].agg(n="count", correct="sum").reset_index()
    per_bin["accuracy"] = np.where(per_bin["n"] > 0, per_bin["correct"] / per_bin["n"].clip(lower=1), np.nan)
    per_bin["share"] = per_bin["bin"].map(population).astype(float).fillna(0.0)
    per_bin["bin"] = per_bin["bin"].astype(str)
    per_bin = per_bin[["bin", "share", "n", "correct", "accuracy"]]
    covered = per_bin[per_bin["n"] > 0]
    estimated = None
    if len(covered) and covered["share"].sum() > 0:
        estimated = float((covered["accuracy"] * covered["share"]).sum() / covered["share"].sum())
    per_class = (
        table.groupby("predicted_label")["correct"].agg(n="count", correct="sum").reset_index()
        if n else pd.DataFrame(columns=["predicted_label", "n", "correct"])
    )
    per_class["accuracy"] = per_class["correct"] / per_class["n"].clip(lower=1) if n else []
    accepted = table[table["status"] == "accepted"]
    corrections = (
        table[table["correct"] == 0].groupby(["predicted_label", "true_label"]).size().rename("n").reset_index()
        .sort_values("n", ascending=False, kind="stable")
        if n else pd.DataFrame(columns=["predicted_label", "true_label", "n"])
    )
    return ReviewMetrics(
        n_reviewed=n,
        n_correct=correct,
        accuracy=correct / n if n else None,
        per_bin=per_bin.reset_index(drop=True),
        per_class=per_class,
        estimated_accuracy=estimated,
        accepted_accuracy=float(accepted["correct"].mean()) if len(accepted) else None,
        corrections=corrections.reset_index(drop=True),
    )


def member(values: Iterable[str], wanted: set) -> np.ndarray:
    """``values.isin(wanted)`` as a set lookup (pandas' isin on Arrow strings is ~20x slower)."""
    items = values.tolist() if hasattr(values, "tolist") else list(values)
    return np.fromiter((value in wanted for value in items), dtype=bool, count=len(items))


def progress(queue: pd.DataFrame, replay: Replay) -> tuple[int, int]:
    """(reviewed, total) for a queue."""
    done = set(replay.latest["path"].tolist())
    return int(member(queue["path"], done).sum()), len(queue)


# --- final data set ---------------------------------------------------------------------------
def merge_final(results: pd.DataFrame, replay: Replay) -> pd.DataFrame:
    """One row per labelled image: manual labels (reviewed) win over automatic ones (accepted).

    Rows batch flagged for review (or errors) that nobody reviewed are left out: they have no
    trustworthy label.  Journal entries for paths no longer in the results are kept (a
    human's label is never dropped) with empty metadata.
    """
    manual = replay.latest.set_index("path")
    rows = results.drop_duplicates("path", keep="last")
    manual_paths = set(manual.index)
    is_manual = member(rows["path"], manual_paths)
    is_auto = ~is_manual & (rows["status"] == "accepted")
    final = rows[is_manual | is_auto].copy()
    taken = member(final["path"], manual_paths)
    final["predicted_label"] = final["label"]
    final["label_source"] = np.where(taken, "manual", "auto")
    final.loc[taken, "label"] = final.loc[taken, "path"].map(manual["true_label"])
    final["reviewer"] = final["path"].map(manual["reviewer"]).fillna("")
    final["reviewed_at"] = final["path"].map(manual["reviewed_at"]).fillna("")
    orphans = manual[~member(manual.index, set(rows["path"].tolist()))].reset_index()
    if len(orphans):
        extra = pd.DataFrame({
            "path": orphans["path"], "label": orphans["true_label"], "label_source": "manual",
            "predicted_label": orphans["predicted_label"], "confidence": orphans["confidence"],
            "reviewer": orphans["reviewer"], "reviewed_at": orphans["reviewed_at"],
        })
        final = pd.concat([final, extra], ignore_index=True)
    for column in FINAL_COLUMNS:
        if column not in final.columns:
            final[column] = ""
    return final[list(FINAL_COLUMNS)].reset_index(drop=True)


def _protected(results_path: Path) -> set[Path]:
    return {results_path.resolve(), journal_path(results_path).resolve()}


def write_csv_atomic(frame: pd.DataFrame, out: Path, protected: Iterable[Path] = ()) -> Path:
    out = Path(out).expanduser()
    if out.resolve() in {Path(p).resolve() for p in protected}:
        raise DataError(f"refusing to overwrite {out}: the results and the journal are never replaced; choose another file")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    frame.to_csv(tmp, index=False)
    os.replace(tmp, out)
    return out


def final_path(results_path: str | os.PathLike) -> Path:
    results_path = Path(results_path)
    return results_path.with_name(results_path.stem + ".final.csv")


def write_final(results_path: str | os.PathLike, out: str | os.PathLike | None = None) -> tuple[Path, pd.DataFrame]:
    """Merge and write the final data set (default ``<stem>.final.csv`` next to the results)."""
    results_path = Path(results_path)
    final = merge_final(read_results(results_path), replay_journal(results_path))
    target = Path(out) if out else final_path(results_path)
    return write_csv_atomic(final, target, _protected(results_path)), final


# --- training-set export ----------------------------------------------------------------------
@dataclass
class ExportSummary:
    out: Path
    layout: str
    n_images: int
    per_class: dict[str, int]
    missing: list[str]
    labels_csv: Path
    refused: list[str] = field(default_factory=list)  # "path: reason" for rows the path guard refused


_UNSAFE = re.compile(r"[^\w.\- ]+")


def safe_name(text: str) -> str:
    name = _UNSAFE.sub("_", text).strip(" .")
    return name or "_"


def _same_file_content(a: Path, b: Path) -> bool:
    if a.stat().st_size != b.stat().st_size:
        return False
    return _sha256(a) == _sha256(b)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _copy_new(source: Path, folder: Path, name: str) -> Path:
    """Copy to ``folder/name`` without ever overwriting: reuse an identical file, else pick a free name.

    The bytes go to a hidden temporary file first and are linked under the real name once
    complete (a link, unlike a rename, fails when the name is taken), so a kill mid-copy never
    leaves a truncated image under a name the retry would then keep apart as "different".
    """
    stem, suffix = os.path.splitext(name)
    part = folder / f".{name}.part-{os.getpid()}"
    with open(source, "rb") as src, open(part, "wb") as dst:
        shutil.copyfileobj(src, dst)
    shutil.copystat(source, part)
    try:
        for attempt in range(10_000):
            dest = folder / (name if attempt == 0 else f"{stem}-{attempt}{suffix}")
            try:
                _publish(part, dest)
            except FileExistsError:
                if dest.resolve() == source.resolve() or _same_file_content(dest, source):
                    return dest
                continue
            return dest
    finally:
        part.unlink(missing_ok=True)
    raise DataError(f"cannot find a free file name for {name} in {folder}")


def _confined(source: Path, root: Path) -> str:
    """Why the app may not copy ``source`` (outside the allowed folder, hidden, not an image), or ''."""
    try:
        check_path(source, root, must_exist=False, what="image")
    except DataError as exc:
        return str(exc)
    if not is_image_file(source):
        return f"{Path(source).name}: not an image file (only images are exported)"
    return ""


def _publish(part: Path, dest: Path) -> None:
    """Give the complete file ``part`` the name ``dest``; FileExistsError when the name is taken."""
    try:
        os.link(part, dest)
    except FileExistsError:
        raise
    except OSError:  # no hard links here (FAT / exFAT card, some network shares): exclusive create + copy
        with open(part, "rb") as src, open(dest, "xb") as dst:
            shutil.copyfileobj(src, dst)
        shutil.copystat(part, dest)


GROUP_BY = ("sequence", "folder")


def camera_folder(path: str, relpath: str) -> str:
    """The folder a frame sits in (relative to the batch root when known): one camera or site."""
    parent = Path(relpath).parent.as_posix() if relpath else ""
    return parent if parent not in ("", ".") else Path(path).parent.name or "(top)"


def training_rows(results_path: Path, include_auto: bool = False, group_by: str = "sequence") -> pd.DataFrame:
    if group_by not in GROUP_BY:
        raise DataError(f"unknown grouping {group_by!r}: use {' or '.join(GROUP_BY)}")
    final = merge_final(read_results(results_path), replay_journal(results_path))
    if not include_auto:
        final = final[final["label_source"] == "manual"]
    results_dir = results_path.resolve().parent
    final = final.copy()
    final["source"] = [
        resolve_image_path(p, r or None, results_dir) for p, r in zip(final["path"], final["relpath"].fillna(""))
    ]
    if group_by == "folder":
        # One camera folder on one side of every split: the model is then judged on cameras it never saw.
        final["group"] = [camera_folder(p, r) for p, r in zip(final["path"], final["relpath"].fillna(""))]
    else:
        # Grouped validation keeps a burst (or else a camera) on one side of a split; no group: the image alone.
        final["group"] = [s or c or p for s, c, p in zip(final["sequence_id"].fillna(""), final["camera"].fillna(""), final["path"])]
    return final


def export_training_set(
    results_path: str | os.PathLike,
    out: str | os.PathLike,
    layout: str = "imagefolder",
    include_auto: bool = False,
    confine: Path | None = None,
    group_by: str = "sequence",
) -> ExportSummary:
    """Reviewed images as a training set for ``wildid train``; originals are only read.

    ``imagefolder``: copies into ``out/<label>/`` plus ``out/labels.csv``; ``csv``: just
    ``out`` (a .csv file, or ``out/labels.csv``) with path,label,group pointing at the originals.
    With ``confine`` (the app's allowed folder), ``out`` and every image the results name must
    pass the path guard, and only image files are copied; other rows are listed in ``refused``.
    """
    results_path = Path(results_path)
    rows = training_rows(results_path, include_auto, group_by)
    refused: list[str] = []
    if confine is not None:
        check_path(out, confine, must_exist=False, what="export folder")
        reasons = [_confined(Path(s), confine) for s in rows["source"]]
        refused = [reason for reason in reasons if reason]
        rows = rows[[not reason for reason in reasons]]
    present = rows[[Path(s).is_file() for s in rows["source"]]]
    missing = [str(s) for s in rows.loc[~rows.index.isin(present.index), "source"]]
    if present.empty:
        what = "reviewed or accepted" if include_auto else "reviewed"
        raise DataError(f"no {what} images to export" + (f" ({len(missing)} image files not found)" if missing else "")
                        + (f" ({len(refused)} refused, e.g. {refused[0]})" if refused else ""))
    out = Path(out).expanduser()
    protected = _protected(results_path)
    if layout == "csv":
        labels_csv = out if out.suffix.lower() == ".csv" else out / "labels.csv"
        table = pd.DataFrame({"path": [str(Path(s).resolve()) for s in present["source"]],
                              "label": present["label"], "group": present["group"]})
        write_csv_atomic(table, labels_csv, protected)
        target = labels_csv
    elif layout == "imagefolder":
        resolved_out = out.resolve()
        for source in present["source"]:
            parent = Path(source).resolve().parent
            if parent == resolved_out or resolved_out in parent.parents:
                raise DataError(f"export folder {out} contains the original images; choose a new, separate folder")
        copies = []
        for source, label, relpath, path in zip(present["source"], present["label"], present["relpath"], present["path"]):
            folder = out / safe_name(label)
            folder.mkdir(parents=True, exist_ok=True)
            flat = safe_name((relpath or Path(path).name).replace("/", "__").replace("\\", "__"))
            copies.append(str(_copy_new(Path(source), folder, flat).resolve()))
        table = pd.DataFrame({"path": copies, "label": list(present["label"]), "group": list(present["group"])})
        labels_csv = write_csv_atomic(table, out / "labels.csv", protected)
        target = out
    else:
        raise DataError(f"unknown export layout {layout!r}: use imagefolder or csv")
    counts = present["label"].value_counts()
    return ExportSummary(
        out=target, layout=layout, n_images=len(present), per_class={k: int(v) for k, v in counts.items()},
        missing=missing, labels_csv=labels_csv, refused=refused,
    )


# --- uploads ----------------------------------------------------------------------------------
def store_upload(name: str, data: bytes, folder: Path) -> Path:
    """Keep an uploaded results file in ``folder`` (the session's private work folder, so no other
    session can open it or write its journal); same content -> same file within the session."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha256(data).hexdigest()[:12]
    target = folder / f"{digest}-{safe_name(Path(name).name)}"
    if not target.exists():
        tmp = target.with_name(target.name + ".tmp")
        tmp.write_bytes(data)
        os.replace(tmp, target)
    return target
