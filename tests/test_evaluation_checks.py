"""Honest evaluation: labels the model cannot predict, training images evaluated, the empty filter."""

from __future__ import annotations

import pandas as pd
import pytest

from tests.test_review import make_results
from wildid import evaluate as ev
from wildid import evaluation_checks as checks
from wildid import fingerprint, registry, review
from wildid.cards import load_card


def project_results(tmp_path, truth: dict[int, str], scores: dict[int, float]):
    """Results of the tiny model over 12 images, the given true labels in the journal and empty scores."""
    results = make_results(tmp_path, with_error=False)
    frame = pd.read_csv(results, dtype=str, keep_default_na=False)
    for index, score in scores.items():
        frame.loc[index, "empty_score"] = str(score)
    frame.to_csv(results, index=False)
    paths = list(frame["path"])
    review.append_labels(results, [(paths[i], label, "", None) for i, label in truth.items()], "ana")
    return results, paths


TRUTH = {0: "vole", 1: "empty", 2: "stoat", 3: "empty", 4: "vole", 5: "empty"}
SCORES = {0: 0.2, 1: 0.99, 2: 0.95, 3: 0.97, 4: 0.1, 5: 0.6}


def test_labels_that_are_no_class_of_the_model_are_flagged_and_mappable(models_root, tmp_path):
    results, _ = project_results(tmp_path, TRUTH, SCORES)
    run = ev.from_journal(results)
    report = ev.build_report(run)
    assert report["summary"]["accuracy"] == 0.0
    assert report["label_check"]["none_known"] and report["label_check"]["unknown"] == ["empty", "stoat", "vole"]
    assert any("No true label is a class of tiny" in w for w in report["warnings"])
    # animal vs empty, the empty score deciding "empty": what the filter + model really do
    labels = set(run.y_true) | set(run.y_pred) | set(run.classes)
    mapped = ev.build_report(checks.regroup(run, checks.animal_or_empty(labels), empty_threshold=0.9))
    assert mapped["labels"] == ["animal", "empty"]
    assert not mapped["warnings"]
    counts = dict(zip(mapped["labels"], ev.to_jsonable(mapped["confusion"]["counts"])))
    # truth animal: 0 (0.2), 2 (0.95 -> hidden as empty), 4; truth empty: 1, 3 (>= 0.9), 5 (0.6 -> animal)
    assert counts == {"animal": [2, 1], "empty": [1, 2]}
    assert mapped["summary"]["accuracy"] == pytest.approx(4 / 6)


def test_empty_section_scores_the_filter_against_the_labels(models_root, tmp_path):
    results, _ = project_results(tmp_path, TRUTH, SCORES)
    report = ev.build_report(ev.from_journal(results))
    empty = report["empty"]
    assert empty["roc"]["n_empty"] == 3 and empty["roc"]["n_animal"] == 3
    summary = empty["summary"]
    assert (summary["animals_hidden"], summary["empties_hidden"], summary["hidden"]) == (1, 2, 3)
    assert summary["animal_recall"] == pytest.approx(2 / 3)
    assert all("empty_score" in item for item in report["items"])
    loaded = ev.load_report(ev.to_json(ev.combine([report])).encode())  # JSON has no infinity
    assert loaded["models"][0]["empty"]["roc"]["thresholds"][0] is None
    figure = ev.empty_roc_figure(report, threshold=0.96)
    assert [trace.name for trace in figure.data] == ["thresholds", "chance", "chosen: 0.96"]


def test_evaluating_on_training_images_warns_with_the_count(models_root, tmp_path):
    results, paths = project_results(tmp_path, TRUTH, SCORES)
    card = load_card(models_root / "tiny")
    training = [paths[i] for i in (0, 1, 2, 3)] + [str(tmp_path / "other.jpg")]
    (tmp_path / "other.jpg").write_bytes(b"another training image")
    card.replace(provenance={**card.provenance, "training_files": fingerprint.sketch(training)}).save(models_root / "tiny")
    registry.clear_cache()
    report = ev.build_report(ev.from_journal(results))
    overlap = report["training_overlap"]
    assert (overlap["matched"], overlap["evaluated"], overlap["exact"]) == (4, 6, True)
    assert any(w.startswith("4 of the 6 evaluated images (67%) were training images of tiny") for w in report["warnings"])
    assert ev.build_report(ev.from_journal(results), check_training=False)["training_overlap"] is None


def test_no_overlap_no_warning(models_root, tmp_path):
    results, _ = project_results(tmp_path, {0: "gray fox", 1: "bobcat"}, {})
    report = ev.build_report(ev.from_journal(results))
    assert report["training_overlap"] is None  # the tiny model's card keeps no fingerprint
    assert report["label_check"]["unknown"] == [] and report["warnings"] == []
    assert report["empty"] is not None and report["empty"]["roc"] is None  # no empty frame labelled


def test_a_saved_report_can_be_scored_again_with_mapped_labels(models_root, tmp_path):
    results, _ = project_results(tmp_path, TRUTH, SCORES)
    report = ev.build_report(ev.from_journal(results))
    saved = ev.load_report(ev.to_json(ev.combine([report])).encode())["models"][0]
    labels = {i["true"] for i in saved["items"]} | {i["pred"] for i in saved["items"]}
    mapped = ev.remap(saved, checks.animal_or_empty(labels), empty_threshold=0.9)
    assert mapped["labels"] == ["animal", "empty"] and mapped["summary"]["accuracy"] == pytest.approx(4 / 6)
    assert mapped["empty"] == saved["empty"] and mapped["name"] == "tiny (labels mapped)"
    assert not any("No true label" in w for w in mapped["warnings"])


def test_cli_evaluate_prints_the_warnings_and_the_empty_filter(models_root, tmp_path, capsys):
    from wildid.cli import main

    results, _ = project_results(tmp_path, TRUTH, SCORES)
    assert main(["evaluate", str(results)]) == 0
    out = capsys.readouterr().out
    assert "warning: No true label is a class of tiny (3 classes)" in out
    assert "empty filter: Hide frames with empty_score ≥ 0.90: hides 3 of 6 frames (50%); keeps 2 of 3 animal frames" in out
