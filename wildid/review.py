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
import io
import json
import os
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import pandas as pd

from wildid import project
from wildid.background import DEFAULT_EMPTY_THRESHOLD
from wildid.errors import DataError
from wildid.staged import fsync_dir

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
        fsync_dir(target.parent)
    return entries


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


# The final data set, the training-set export and stored uploads live in wildid.review_export
# (split out by job); their names still resolve here, loaded on first use (PEP 562), since
# review_export itself builds on this module.
_EXPORT_NAMES = frozenset({
    "GROUP_BY", "ExportSummary", "camera_folder", "export_training_set", "final_path", "merge_final",
    "safe_name", "store_upload", "training_rows", "write_csv_atomic", "write_final",
})


def __getattr__(name: str):
    if name in _EXPORT_NAMES:
        from wildid import review_export

        return getattr(review_export, name)
    raise AttributeError(f"module 'wildid.review' has no attribute {name!r}")
