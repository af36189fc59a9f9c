"""A project: what wildid keeps about one folder of frames, in one place any session can find.

    <allowed folder>/wildid-projects/<folder name>-<8 hex of its path>/
        project.json          the image folder it belongs to; the empty threshold chosen for it
        labels.txt            the project's own label set, one label per line
        results-<model>.csv   one results table per model run on the folder (resumable)
        reviewed.csv          the review journal, shared by every run: labels belong to images,
                              not to the model that happened to classify them
        not-empty.txt         frames flagged "not empty" on the likely-empty pages
        reviewed-set-*.csv    reviewed sets handed to Train

The location is a pure function of the folder's resolved path, so Batch in a new browser
session (or after a server restart) finds the previous run of the same folder and resumes
it instead of starting again.  A results file outside a project (the CLI's ``--out``) keeps
its side files beside it: ``<stem>.reviewed.csv``, ``<stem>.labels.txt``, ``<stem>.not-empty.txt``.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from wildid.errors import DataError

PROJECTS_FOLDER = "wildid-projects"
PROJECT_FILE = "project.json"
RESULTS_PREFIX = "results-"
# Side files of a results table: (name inside a project, suffix beside a lone results file).
JOURNAL = ("reviewed.csv", ".reviewed.csv")
LABELS = ("labels.txt", ".labels.txt")
NOT_EMPTY = ("not-empty.txt", ".not-empty.txt")
_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]+")


def slug(text: str, limit: int = 40) -> str:
    """A file-name-safe form of ``text`` (letters, digits, ``_ . -``), never hidden or empty."""
    name = _UNSAFE.sub("-", text).strip("-._")[:limit].strip("-._")
    return name or "folder"


def projects_root(root: Path) -> Path:
    return Path(root) / PROJECTS_FOLDER


def project_path(folder: Path, root: Path) -> Path:
    """Where the project of ``folder`` lives: readable name plus a hash of the resolved path,
    so two folders called ``cam1`` in different places never share a project."""
    folder = Path(folder).expanduser().resolve()
    digest = hashlib.sha1(str(folder).encode("utf-8", "surrogateescape")).hexdigest()[:8]
    return projects_root(root) / f"{slug(folder.name)}-{digest}"


@dataclass(frozen=True)
class RunInfo:
    """One results table of a project: which model wrote it, how many rows, when."""

    path: Path
    model: str
    rows: int
    modified: datetime


@dataclass(frozen=True)
class Project:
    path: Path  # the project folder
    folder: Path  # the image folder it belongs to

    # --- files -----------------------------------------------------------------------------
    @property
    def settings_file(self) -> Path:
        return self.path / PROJECT_FILE

    @property
    def journal(self) -> Path:
        return self.path / JOURNAL[0]

    @property
    def labels_file(self) -> Path:
        return self.path / LABELS[0]

    @property
    def not_empty_file(self) -> Path:
        return self.path / NOT_EMPTY[0]

    def results_path(self, model: str) -> Path:
        return self.path / f"{RESULTS_PREFIX}{slug(model, 64)}.csv"

    # --- settings --------------------------------------------------------------------------
    def settings(self) -> dict:
        try:
            data = json.loads(self.settings_file.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}

    def save_settings(self, **changes) -> dict:
        settings = {**self.settings(), **changes, "folder": str(self.folder)}
        write_text_atomic(self.settings_file, json.dumps(settings, indent=2, sort_keys=True) + "\n")
        return settings

    @property
    def empty_threshold(self) -> float | None:
        value = self.settings().get("empty_threshold")
        return float(value) if isinstance(value, (int, float)) and 0 <= value <= 1 else None

    def create(self) -> "Project":
        self.path.mkdir(parents=True, exist_ok=True)
        if not self.settings_file.is_file():
            self.save_settings(created=datetime.now(timezone.utc).astimezone().isoformat(timespec="seconds"))
        return self

    # --- runs ------------------------------------------------------------------------------
    def runs(self) -> list[RunInfo]:
        """Every results table in the project, newest first."""
        if not self.path.is_dir():
            return []
        found = []
        for path in self.path.glob(f"{RESULTS_PREFIX}*.csv"):
            model, rows = results_summary(path)
            stat = path.stat()
            found.append(RunInfo(path, model or path.stem[len(RESULTS_PREFIX):], rows,
                                 datetime.fromtimestamp(stat.st_mtime).astimezone()))
        return sorted(found, key=lambda run: run.modified, reverse=True)

    def run_for(self, model: str) -> RunInfo | None:
        target = self.results_path(model)
        return next((run for run in self.runs() if run.path == target), None)


def results_summary(path: Path) -> tuple[str, int]:
    """(model named in the first row, number of complete rows) of a results CSV, streaming."""
    import csv

    model, rows = "", 0
    try:
        with open(path, newline="", encoding="utf-8", errors="replace") as handle:
            reader = csv.reader(handle)
            header = next(reader, None) or []
            model_col = header.index("model") if "model" in header else None
            for row in reader:
                if len(row) != len(header):
                    continue  # a torn last row of a run still writing
                rows += 1
                if not model and model_col is not None:
                    model = row[model_col]
    except OSError:
        pass
    return model, rows


def export_reviewed_set(results_path: str | os.PathLike, group_by: str = "folder"):
    """The reviewed frames of a results table as a training CSV (path,label,group) for Train: in
    its project (``reviewed-set-<time>.csv``), else beside it.  Grouped by camera folder by
    default, so validation scores cameras the model has not seen.  Returns the export summary."""
    from wildid.review import export_training_set

    results_path = Path(results_path)
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    owner = of_results(results_path)
    out = (owner.path / f"reviewed-set-{stamp}.csv" if owner is not None
           else results_path.with_name(f"{results_path.stem}-reviewed-set-{stamp}.csv"))
    return export_training_set(results_path, out, layout="csv", group_by=group_by)


def propose_model_name(base: str, taken) -> str:
    """A new model name for a project's folder: ``<folder>-1``, ``-2``… whichever is free."""
    stem = slug(base, 50)
    taken = set(taken)
    number = 1
    while f"{stem}-{number}" in taken:
        number += 1
    return f"{stem}-{number}"


def for_folder(folder: str | os.PathLike, root: Path) -> Project:
    """The project of an image folder (not created until :meth:`Project.create`)."""
    folder = Path(folder).expanduser().resolve()
    return Project(project_path(folder, root), folder)


def of_results(results_path: str | os.PathLike) -> Project | None:
    """The project a results table belongs to, or None for a results file on its own."""
    parent = Path(results_path).expanduser().resolve().parent
    settings_file = parent / PROJECT_FILE
    if not settings_file.is_file():
        return None
    try:
        folder = json.loads(settings_file.read_text(encoding="utf-8")).get("folder", "")
    except (OSError, ValueError, AttributeError):
        folder = ""
    return Project(parent, Path(folder) if folder else parent)


def side_file(results_path: str | os.PathLike, kind: tuple[str, str]) -> Path:
    """A side file of a results table: the project's shared one, else ``<stem><suffix>`` beside it."""
    results_path = Path(results_path)
    if (results_path.parent / PROJECT_FILE).is_file():
        return results_path.parent / kind[0]
    return results_path.with_name(results_path.stem + kind[1])


def write_text_atomic(path: Path, text: str) -> Path:
    """Write a small file so a reader never sees half of it (temporary file + fsync + rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "w", encoding="utf-8") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)
    return path


# --- frames flagged "not empty" -------------------------------------------------------------------
def read_not_empty(results_path: str | os.PathLike) -> set[str]:
    """Paths a reviewer flagged as holding an animal on a likely-empty page (append-only file)."""
    target = side_file(results_path, NOT_EMPTY)
    try:
        data = target.read_bytes()
    except OSError:
        return set()
    # Only newline-terminated lines are committed: a torn tail from a crash is ignored.
    committed = data[: data.rfind(b"\n") + 1].decode("utf-8", errors="replace")
    return {line for line in committed.split("\n") if line}


def add_not_empty(results_path: str | os.PathLike, paths) -> int:
    """Append paths to the not-empty list in one durable write; returns how many were new."""
    known = read_not_empty(results_path)
    new = [p for p in dict.fromkeys(str(p) for p in paths) if p not in known]
    for path in new:
        if "\n" in path or "\r" in path:
            raise DataError(f"a path must be on one line: {path!r}")
    if not new:
        return 0
    target = side_file(results_path, NOT_EMPTY)
    fd = os.open(target, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        size = os.fstat(fd).st_size
        if size and os.pread(fd, 1, size - 1) != b"\n":
            # A torn last line from a crash: cut it, so it never becomes a path of its own.
            os.ftruncate(fd, os.pread(fd, size, 0).rfind(b"\n") + 1)
        os.write(fd, "".join(f"{p}\n" for p in new).encode("utf-8"))
        os.fsync(fd)
    finally:
        os.close(fd)
    return len(new)
