"""Evaluate models on labelled data, or a results table against true labels; build and export reports.

Three ways in, one report out:

    items = load_labelled("data/")                      # ImageFolder, or CSV path,label[,group,crop]
    run = run_predictor(predictor, items, progress=cb)  # predictions + truth
    run = from_results("batch.csv", truth="truth.csv")  # results table + CSV of true labels
    run = from_journal("batch.csv")                     # results table + its <stem>.reviewed.csv
    report = build_report(run, threshold=0.9)
    bundle = combine([report, ...])                     # several models / variants + compare table
    save_json(bundle, "report.json"); save_html(bundle, "report.html")

Figures (plotly) are built here too, so the dashboard page and the HTML export draw the
same pictures.  Nothing here imports streamlit.
"""

from __future__ import annotations

import csv
import datetime as _dt
import io
import json
import math
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, Callable, Mapping, Sequence, Union

import numpy as np

from wildid import datasets, defaults
from wildid import evaluation_checks as checks
from wildid import metrics as M
from wildid.datasets import Sample
from wildid.errors import DataError, ImageError, WildidError
from wildid.imaging import crop as crop_image
from wildid.imaging import load_image

CsvSource = Union[str, os.PathLike, BinaryIO, io.StringIO]
Progress = Callable[[int, int], None]
DEFAULT_THRESHOLD = defaults.EVALUATE_THRESHOLD  # the Dashboard page and `wildid evaluate`
HOVER_FILES = 5


# --- data in ---------------------------------------------------------------------------------
@dataclass
class Run:
    """Truth and predictions for one model / variant; ``errors`` are files that could not be classified."""

    name: str
    paths: list[str]
    y_true: list[str]
    y_pred: list[str]
    confidence: list[float]
    classes: tuple[str, ...] = ()
    errors: list[dict[str, str]] = field(default_factory=list)
    population: dict[str, int] | None = None  # predicted-label counts of the full set (for the correction)
    source: str = ""
    notes: list[str] = field(default_factory=list)
    # The answer per item: its rank ("species" ... "class", "label" without a taxonomy, "uncertain")
    # and taxon; empty when the source does not say (a results table from before the rank column).
    ranks: list[str] = field(default_factory=list)
    taxa: list[str] = field(default_factory=list)
    taxonomy: Any = None  # wildid.taxonomy.Taxonomy: resolves true labels to lineages
    # Per image, from a results table: 1 = looks like the camera's empty background (None: no score).
    empty_scores: list[float | None] = field(default_factory=list)
    # The model card's record of its training files (wildid.fingerprint), when the model is known.
    training_files: dict | None = None


def _read_csv_rows(source: CsvSource) -> tuple[list[dict[str, str]], str]:
    """Rows of a CSV (path, or uploaded file-like); column names lower-cased and stripped."""
    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        if not path.is_file():
            raise DataError(f"{path}: no such CSV file")
        text, name = path.read_text(encoding="utf-8-sig"), str(path)
    else:
        data = source.read()
        text = data.decode("utf-8-sig") if isinstance(data, bytes) else data
        name = getattr(source, "name", "uploaded CSV")
    reader = csv.DictReader(io.StringIO(text))
    if not reader.fieldnames:
        raise DataError(f"{name}: empty CSV (expected a header row)")
    rows = [{(k or "").strip().lower(): (v or "").strip() for k, v in row.items()} for row in reader]
    return rows, name


def load_labelled(source: str | os.PathLike) -> list[Sample]:
    """The samples of an ImageFolder or a CSV path,label[,group,crop] (see :mod:`wildid.datasets`)."""
    return list(datasets.load_labelled(source).samples)


def run_predictor(
    predictor,
    items: Sequence[Sample],
    progress: Progress | None = None,
    use_crops: bool = False,
    name: str | None = None,
    batch_size: int | None = None,
) -> Run:
    """Classify every labelled item; unreadable files are recorded in ``errors``, not raised."""
    import torch

    from wildid.taxonomy import taxonomy_for

    card = predictor.card
    run = Run(name=name or card.name, paths=[], y_true=[], y_pred=[], confidence=[], classes=tuple(card.classes),
              source=f"{len(items)} labelled images", taxonomy=taxonomy_for(card),
              training_files=card.provenance.get("training_files"))
    size = batch_size or getattr(predictor, "batch_size", 16)
    done = 0
    if progress:
        progress(0, len(items))
    for start in range(0, len(items), size):
        chunk = items[start:start + size]
        tensors, kept = [], []
        for item in chunk:
            try:
                if use_crops and item.crop is not None:
                    # A crop is in the original's pixels: decode at full size (no JPEG draft).
                    img = crop_image(load_image(str(item.path)), item.crop)
                else:
                    img = predictor.load(str(item.path))
                tensors.append(predictor.preprocess(img))
                kept.append(item)
            except ImageError as exc:
                run.errors.append({"path": str(item.path), "error": str(exc)})
        if tensors:
            for item, pred in zip(kept, predictor.predict_batch(torch.stack(tensors), top_k=1)):
                run.paths.append(str(item.path))
                run.y_true.append(item.label)
                run.y_pred.append(pred.label)
                run.confidence.append(float(pred.confidence))
                run.ranks.append("uncertain" if pred.uncertain else (pred.rank or "label"))
                run.taxa.append(pred.taxon)
        done += len(chunk)
        if progress:
            progress(done, len(items))
    return run


def read_results(source: CsvSource) -> list[dict[str, str]]:
    """A batch results table (see the results-table contract): needs path, label, confidence."""
    rows, name = _read_csv_rows(source)
    if rows and not {"path", "label", "confidence"} <= set(rows[0]):
        raise DataError(f"{name}: not a results table (needs columns path, label, confidence)")
    if not rows:
        raise DataError(f"{name}: the results table has no rows")
    return rows


def read_truth(source: CsvSource) -> tuple[dict[str, str], Path | None]:
    """A CSV path,label of true labels -> {path: label}, and the folder relative paths start from."""
    rows, name = _read_csv_rows(source)
    if not rows or not {"path", "label"} <= set(rows[0]):
        raise DataError(f"{name}: a truth CSV needs columns path,label")
    base = Path(source).expanduser().resolve().parent if isinstance(source, (str, os.PathLike)) else None
    return {row["path"]: row["label"] for row in rows if row.get("path") and row.get("label")}, base


def journal_path_for(results_path: str | os.PathLike) -> Path:
    from wildid.review import journal_path

    return journal_path(results_path)


def read_journal(source: CsvSource) -> dict[str, str]:
    """Reviewed labels {path: true_label}; the journal is append-only, so the last entry per path wins."""
    rows, name = _read_csv_rows(source)
    if rows and not {"path", "true_label"} <= set(rows[0]):
        raise DataError(f"{name}: not a reviewed-labels journal (needs columns path, true_label)")
    truth: dict[str, str] = {}
    for row in rows:
        if row.get("path") and row.get("true_label"):
            truth[row["path"]] = row["true_label"]
    return truth


def _match_keys(row: Mapping[str, str]) -> list[str]:
    keys = [row["path"]]
    if row.get("relpath"):
        keys.append(row["relpath"])
    try:
        keys.append(str(Path(row["path"]).expanduser().resolve()))
    except OSError:
        pass
    return keys


def _join(results: list[dict[str, str]], truth: Mapping[str, str], base: Path | None) -> list[tuple[dict[str, str], str]]:
    """Pair result rows with true labels by path, relpath, resolved path, or (when unique) file name."""
    index: dict[str, int] = {}
    by_name: dict[str, list[int]] = {}
    for i, row in enumerate(results):
        for key in _match_keys(row):
            index.setdefault(key, i)
        by_name.setdefault(Path(row["path"]).name, []).append(i)
    pairs: dict[int, str] = {}
    for path, label in truth.items():
        candidates = [path]
        if base is not None and not Path(path).is_absolute():
            candidates.append(str((base / path).resolve()))
        hit = next((index[c] for c in candidates if c in index), None)
        if hit is None and len(by_name.get(Path(path).name, [])) == 1:
            hit = by_name[Path(path).name][0]
        if hit is not None:
            pairs[hit] = label
    return [(results[i], label) for i, label in sorted(pairs.items())]


def _run_from_pairs(name: str, results: list[dict[str, str]], pairs, n_truth: int, source: str) -> Run:
    ok_rows = [row for row in results if row.get("status", "") != "error"]
    population = dict(Counter(row["label"] for row in ok_rows if row.get("label")))
    run = Run(name=name, paths=[], y_true=[], y_pred=[], confidence=[], population=population, source=source)
    card = _card(_model_name(results, ""))
    has_ranks = bool(results) and "rank" in results[0] and "taxon" in results[0]
    if card is not None:
        from wildid.taxonomy import taxonomy_for

        run.taxonomy = taxonomy_for(card)
    for row, label in pairs:
        if row.get("status") == "error" or not row.get("label"):
            run.errors.append({"path": row["path"], "error": row.get("error") or "not classified"})
            continue
        try:
            confidence = float(row["confidence"])
        except ValueError:
            run.errors.append({"path": row["path"], "error": f"bad confidence {row['confidence']!r}"})
            continue
        run.paths.append(row["path"])
        run.y_true.append(label)
        run.y_pred.append(row["label"])
        run.confidence.append(confidence)
        if has_ranks:
            run.ranks.append(_answer_rank(row, confidence, card))
            run.taxa.append(row["taxon"])
        run.empty_scores.append(_optional_float(row.get("empty_score")))
    if not pairs:
        raise DataError(f"{source}: no true label matches a file in the results (compare the path columns)")
    if len(pairs) < n_truth:
        run.notes.append(f"{n_truth - len(pairs)} labelled files are not in the results and were skipped.")
    return run


def _optional_float(text: str | None) -> float | None:
    try:
        value = float(text) if text not in (None, "") else None
    except ValueError:
        return None
    return value if value is not None and math.isfinite(value) else None


def _model_name(results: list[dict[str, str]], fallback: str) -> str:
    names = Counter(row.get("model", "") for row in results if row.get("model"))
    return names.most_common(1)[0][0] if names else fallback


def from_results(results: CsvSource, truth: CsvSource, name: str | None = None) -> Run:
    """A results table plus a CSV of true labels (any subset of the files)."""
    rows = read_results(results)
    labels, base = read_truth(truth)
    results_name = Path(getattr(results, "name", None) or str(results)).name
    run = _run_from_pairs(name or _model_name(rows, Path(results_name).stem), rows, _join(rows, labels, base), len(labels),
                          f"{results_name} + {Path(getattr(truth, 'name', None) or str(truth)).name}")
    run.classes, run.training_files = _card_facts(_model_name(rows, ""))
    return run


def _card_classes(model: str) -> tuple[str, ...]:
    """The installed model's class order (for matrix rows), or () when the model is not installed."""
    card = _card(model)
    return tuple(card.classes) if card is not None else ()


def _card(model: str):
    if not model:
        return None
    from wildid.registry import find_card

    try:
        return find_card(model)
    except WildidError:
        return None


def _answer_rank(row: Mapping[str, str], confidence: float, card) -> str:
    """The rank of a results row's answer: its taxon's rank, else "label" or "uncertain" by the card's threshold."""
    if row.get("taxon"):
        return row.get("rank") or "label"
    threshold = card.threshold if card is not None else None
    if threshold is not None:
        return "label" if confidence >= threshold else "uncertain"
    return "label" if row.get("status") == "accepted" else "uncertain"


def correct_at_rank(true_label: str, predicted_label: str, rank: str, taxon: str, taxonomy=None) -> bool | None:
    """Whether an answer is right at the rank it was given; None when the true label cannot be placed.

    A class answer is right when it is the true class or shares its taxon at that rank (ImageNet
    "tabby" for a "tiger cat" is the right species); a rolled-up answer when the true label lies
    inside the answered taxon (a true "elk" inside Artiodactyla).
    """
    from wildid.taxonomy import resolve_label

    if rank == "uncertain":
        return None
    if rank == "label" or not taxon:
        return predicted_label == true_label
    lineage = resolve_label(true_label, taxonomy)
    if lineage is None:
        return None
    at_rank = lineage.at(rank)
    if at_rank is not None:
        return at_rank == taxon
    # The true label is coarser than the answer ("Cervidae" for a species answer): an answer outside it
    # is wrong; one inside it cannot be checked at its finer rank.
    answered = resolve_label(taxon, taxonomy)
    if answered is None:
        return None
    return None if answered.contains(lineage.name) else False


def _card_facts(model: str) -> tuple[tuple[str, ...], dict | None]:
    """The installed model's class order (for matrix rows) and its record of training files;
    ((), None) when the model is not installed."""
    card = _card(model)
    if card is None:
        return (), None
    return tuple(card.classes), card.provenance.get("training_files")


def from_journal(results: str | os.PathLike, journal: CsvSource | None = None, name: str | None = None) -> Run:
    """A results table and its reviewed-labels journal (``<results stem>.reviewed.csv``)."""
    rows = read_results(results)
    if journal is None:
        from wildid.review import replay_journal

        if not journal_path_for(results).is_file():
            raise DataError(f"{journal_path_for(results)}: no reviewed-labels journal next to the results (review some images first)")
        # review's reader: tolerant of a line torn by a crash mid-write; last entry per path wins.
        labels = replay_journal(results).labels
    else:
        labels = read_journal(journal)
    run = _run_from_pairs(name or _model_name(rows, Path(results).stem), rows, _join(rows, labels, None), len(labels),
                          f"{Path(results).name} + reviewed journal")
    run.classes, run.training_files = _card_facts(_model_name(rows, ""))
    run.notes.append("Reviewed images are the ones people chose or were sent to review, not a random sample: "
                     "read the accuracy as accuracy on reviewed images.")
    return run


def population_from_results(source: CsvSource) -> dict[str, int]:
    """Predicted-label counts of a full results table (for the class-proportion correction)."""
    rows = read_results(source)
    return dict(Counter(row["label"] for row in rows if row.get("status") != "error" and row.get("label")))


# --- report ------------------------------------------------------------------------------------
def build_report(run: Run, threshold: float = DEFAULT_THRESHOLD, population: Mapping[str, int] | None = None,
                 check_training: bool = True) -> dict[str, Any]:
    """All dashboard numbers for one run, JSON-friendly once passed through ``to_jsonable``.

    ``warnings`` say when the numbers cannot mean what they seem: true labels the model cannot
    predict, evaluated images that were training images (digests every evaluated file once;
    ``check_training=False`` skips it)."""
    labels = M.label_order(run.y_true, run.y_pred, run.classes)
    correct = [t == p for t, p in zip(run.y_true, run.y_pred)]
    has_ranks = len(run.ranks) == len(run.y_pred) and bool(run.ranks)
    ranks = run.ranks if has_ranks else [""] * len(run.y_pred)
    taxa = run.taxa if has_ranks else [""] * len(run.y_pred)
    at_rank = [correct_at_rank(t, p, r, x, run.taxonomy) if has_ranks else None
               for t, p, r, x in zip(run.y_true, run.y_pred, ranks, taxa)]
    cm = M.confusion(run.y_true, run.y_pred, labels)
    cells: dict[str, list[str]] = {}
    for path, t, p in zip(run.paths, run.y_true, run.y_pred):
        cells.setdefault(f"{t}\t{p}", []).append(path)
    population = population if population is not None else run.population
    items = [
        {"path": p, "true": t, "pred": q, "confidence": c, "correct": t == q, "rank": r, "taxon": x,
         "correct_at_rank": a}
        for p, t, q, c, r, x, a in zip(run.paths, run.y_true, run.y_pred, run.confidence, ranks, taxa, at_rank)
    ]
    if run.empty_scores and any(score is not None for score in run.empty_scores):
        for item, score in zip(items, run.empty_scores):
            if score is not None:
                item.update(empty_score=score, true_is_empty=checks.is_empty_label(item["true"]))
    label_check = checks.label_check(run.y_true, run.classes)
    overlap = checks.training_overlap(run.paths, run.training_files) if check_training else None
    corrected = None
    if population:
        corrected = M.proportion_corrected(run.y_true, run.y_pred, population, labels)
        corrected["sample_size"] = len(run.y_true)
        corrected["population_size"] = int(sum(population.values()))
    return {
        "name": run.name,
        "source": run.source,
        "created": _dt.datetime.now().isoformat(timespec="seconds"),
        "labels": labels,
        "summary": {**M.summary(run.y_true, run.y_pred, labels), "errors": len(run.errors)},
        "per_class": M.per_class(run.y_true, run.y_pred, labels),
        "confusion": cm,
        "cells": {key: paths for key, paths in cells.items()},
        "confidence_bins": M.confidence_bins(correct, run.confidence),
        "coverage": M.coverage_curve(correct, run.confidence),
        "threshold": M.threshold_summary(correct, run.confidence, threshold),
        "calibration": M.reliability(correct, run.confidence),
        "corrected": corrected,
        "ranks": M.rank_summary(ranks, at_rank) if has_ranks else None,
        "items": items,
        "errors": run.errors,
        "notes": run.notes,
        "empty": checks.empty_section(run.y_true, run.empty_scores),
        "label_check": label_check,
        "training_overlap": overlap,
        "warnings": [w for w in (checks.label_warning(label_check, run.name), checks.overlap_warning(overlap, run.name)) if w],
    }


def run_from_report(report: Mapping[str, Any]) -> Run:
    """The run behind a report (from its per-image items), e.g. to score it again with mapped labels."""
    items = report["items"]
    return Run(
        name=report["name"], paths=[i["path"] for i in items], y_true=[i["true"] for i in items],
        y_pred=[i["pred"] for i in items], confidence=[float(i["confidence"]) for i in items],
        classes=tuple(report.get("labels", ())), errors=list(report.get("errors", [])), source=report.get("source", ""),
        notes=list(report.get("notes", [])), empty_scores=[i.get("empty_score") for i in items],
    )


def remap(report: Mapping[str, Any], mapping: Mapping[str, str], empty_threshold: float | None = None,
          threshold: float = DEFAULT_THRESHOLD) -> dict[str, Any]:
    """The report scored again with labels mapped (see ``evaluation_checks.regroup``); the
    training-overlap finding and the empty filter's ROC carry over unchanged."""
    mapped = build_report(checks.regroup(run_from_report(report), mapping, empty_threshold), threshold,
                          check_training=False)
    mapped["training_overlap"] = report.get("training_overlap")
    mapped["empty"] = report.get("empty")
    mapped["warnings"] = [w for w in report.get("warnings", []) if "training images" in w]
    mapped["name"] = f"{report['name']} (labels mapped)"
    return mapped


def combine(reports: Sequence[dict[str, Any]], data: str = "") -> dict[str, Any]:
    """Several model / variant reports on the same data, with the side-by-side table."""
    names = Counter()
    for report in reports:  # keep names unique so tables and figures can key on them
        names[report["name"]] += 1
        if names[report["name"]] > 1:
            report["name"] = f"{report['name']} ({names[report['name']]})"
    return {
        "wildid_report": 1,
        "created": _dt.datetime.now().isoformat(timespec="seconds"),
        "data": data,
        "models": list(reports),
        "compare": M.compare_table(reports),
    }


def rethreshold(report: dict[str, Any], threshold: float) -> dict[str, Any]:
    """The report's threshold summary at another T (the page's slider)."""
    items = report["items"]
    return M.threshold_summary([i["correct"] for i in items], [i["confidence"] for i in items], threshold)


def evaluate(
    data: str | os.PathLike,
    models: Sequence[str],
    threshold: float = DEFAULT_THRESHOLD,
    truth: str | os.PathLike | None = None,
    population: str | os.PathLike | None = None,
    crops: bool = False,
    progress: Callable[[str, int, int], None] | None = None,
    backend: str = "torch",
    prepare: Callable[[Any], Any] | None = None,
    confine: Path | None = None,
) -> dict[str, Any]:
    """The CLI's entry: DATA is labelled data (run each model) or results CSV(s) (+ truth or journal).

    ``prepare`` maps the labelled data before it is run (crops from MegaDetector boxes or the
    background); the crops are then used, or compared with full frames when ``crops``.  With
    ``confine`` (the app's allowed folder), every image a labelled CSV lists must pass the path
    guard before anything is read."""
    from wildid.registry import load_predictor

    data_paths = [Path(d).expanduser() for d in ([data] if isinstance(data, (str, os.PathLike)) else data)]
    counts = population_from_results(population) if population else None
    reports = []
    if all(p.suffix.lower() == ".csv" and _looks_like_results(p) for p in data_paths):
        for path in data_paths:
            run = from_results(path, truth) if truth else from_journal(path)
            reports.append(build_report(run, threshold, counts))
        return combine(reports, ", ".join(map(str, data_paths)))
    if len(data_paths) != 1:
        raise DataError("give one labelled folder or CSV, or one or more results CSVs")
    labelled = datasets.load_labelled(data_paths[0])
    if confine is not None:
        from wildid.guard import check_paths

        check_paths((item.path for item in labelled.samples), confine)
    if prepare is not None:
        labelled = prepare(labelled)
    items = list(labelled.samples)
    if not models:
        raise DataError("labelled data needs at least one --model to evaluate")
    has_crops = any(item.crop for item in items)
    if crops and not has_crops:
        raise DataError(f"{data_paths[0]}: --crops needs a 'crop' column (x,y,w,h) in the labelled CSV")
    for model in models:
        predictor = load_predictor(model, backend=backend)
        variants = [(prepare is not None, predictor.card.name)]
        if crops:
            variants = [(False, f"{predictor.card.name} full-frame"), (True, f"{predictor.card.name} cropped")]
        for use_crops, name in variants:
            callback = (lambda done, total, _n=name: progress(_n, done, total)) if progress else None
            run = run_predictor(predictor, items, callback, use_crops=use_crops, name=name)
            run.source = str(data_paths[0])
            reports.append(build_report(run, threshold, counts))
    return combine(reports, str(data_paths[0]))


def _looks_like_results(path: Path) -> bool:
    try:
        with path.open(encoding="utf-8-sig") as handle:
            header = next(csv.reader(handle), [])
    except OSError:
        return False
    columns = {h.strip().lower() for h in header}
    return {"path", "label", "confidence"} <= columns


# --- export ----------------------------------------------------------------------------------
def to_jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return to_jsonable(value.tolist())
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (np.floating, float)):
        value = float(value)
        return None if math.isnan(value) or math.isinf(value) else value
    if isinstance(value, np.bool_):
        return bool(value)
    return value


def to_json(bundle: Mapping[str, Any]) -> str:
    return json.dumps(to_jsonable(bundle), indent=1)


def save_json(bundle: Mapping[str, Any], path: str | os.PathLike) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(to_json(bundle), encoding="utf-8")
    return path


def load_report(source: str | os.PathLike | bytes) -> dict[str, Any]:
    """A report written by ``save_json`` (matrices come back as numpy arrays)."""
    text = source.decode("utf-8") if isinstance(source, bytes) else Path(source).read_text(encoding="utf-8")
    bundle = json.loads(text)
    if bundle.get("wildid_report") != 1:
        raise DataError("not a wildid evaluation report (JSON)")
    for report in bundle["models"]:
        report["confusion"]["counts"] = np.asarray(report["confusion"]["counts"], dtype=int)
        report["confusion"]["normalized"] = np.asarray(report["confusion"]["normalized"], dtype=float)
    return bundle


# Figures and the HTML report live in evaluate_figures; re-exported for the pages, the CLI and the tests.
from wildid.evaluate_figures import (  # noqa: E402,F401
    bins_figure,
    cell_paths,
    compare_figure,
    confusion_figure,
    coverage_figure,
    empty_roc_figure,
    per_class_rows,
    reliability_figure,
    save_html,
    to_html,
)
