"""From reviewed results to data sets: the merged final table (accepted automatic labels plus
reviewed manual ones) and the training-set export (copies or a CSV), plus stored uploads.

Split from :mod:`wildid.review` (journal, queues, live metrics); the names are re-exported there.
Originals are only read; every file written goes to a new name, atomically.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

import numpy as np
import pandas as pd

from wildid.errors import DataError
from wildid.guard import check_path
from wildid.imaging import is_image_file
from wildid.review import (
    FINAL_COLUMNS,
    Replay,
    journal_path,
    member,
    read_results,
    replay_journal,
    resolve_image_path,
)


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
