"""Metric functions against scikit-learn on random labels and against hand-computed cases."""

from __future__ import annotations

import math

import numpy as np
import pytest
from sklearn import metrics as skm

from wildid import metrics as M

CLASSES = ["gray fox", "bobcat", "coyote", "lynx"]


def random_labels(seed: int, n: int = 300):
    rng = np.random.default_rng(seed)
    y_true = rng.choice(CLASSES, n, p=[0.5, 0.3, 0.15, 0.05])
    # Mostly right, sometimes a random class, and one label the truth never has.
    y_pred = np.where(rng.random(n) < 0.7, y_true, rng.choice(CLASSES[:3] + ["wolf"], n))
    return list(y_true), list(y_pred)


@pytest.mark.parametrize("seed", range(5))
def test_counting_metrics_match_sklearn(seed):
    y_true, y_pred = random_labels(seed)
    labels = M.label_order(y_true, y_pred, classes=CLASSES)
    assert labels == [c for c in CLASSES if c in set(y_true) | set(y_pred)] + ["wolf"]

    cm = M.confusion(y_true, y_pred, labels)
    np.testing.assert_array_equal(cm["counts"], skm.confusion_matrix(y_true, y_pred, labels=labels))
    np.testing.assert_allclose(cm["normalized"], np.nan_to_num(skm.confusion_matrix(y_true, y_pred, labels=labels, normalize="true")))

    p, r, f, s = skm.precision_recall_fscore_support(y_true, y_pred, labels=labels, zero_division=0)
    rows = M.per_class(y_true, y_pred, labels)
    np.testing.assert_allclose([row["precision"] for row in rows], p)
    np.testing.assert_allclose([row["recall"] for row in rows], r)
    np.testing.assert_allclose([row["f1"] for row in rows], f)
    assert [row["support"] for row in rows] == list(s)
    assert [row["predicted"] for row in rows] == [y_pred.count(label) for label in labels]

    summary = M.summary(y_true, y_pred, labels)
    assert summary["n"] == len(y_true)
    assert summary["accuracy"] == pytest.approx(skm.accuracy_score(y_true, y_pred))
    assert summary["macro_f1"] == pytest.approx(skm.f1_score(y_true, y_pred, labels=labels, average="macro", zero_division=0))
    with pytest.warns(UserWarning):  # sklearn warns about 'wolf'; our wrapper silences it
        expected_balanced = skm.balanced_accuracy_score(y_true, y_pred)
    assert summary["balanced_accuracy"] == pytest.approx(expected_balanced)

    # The confusion-matrix route (used for the corrected metrics) gives the same numbers.
    from_cm = M.metrics_from_confusion(cm["counts"], labels)
    for key in ("accuracy", "macro_f1", "balanced_accuracy"):
        assert from_cm["summary"][key] == pytest.approx(summary[key])
    np.testing.assert_allclose([row["f1"] for row in from_cm["per_class"]], f)


def test_hand_computed_small_case():
    y_true = ["a", "a", "a", "b", "b", "c"]
    y_pred = ["a", "a", "b", "b", "c", "c"]
    labels = M.label_order(y_true, y_pred)
    assert labels == ["a", "b", "c"]
    cm = M.confusion(y_true, y_pred, labels)
    assert cm["counts"].tolist() == [[2, 1, 0], [0, 1, 1], [0, 0, 1]]
    np.testing.assert_allclose(cm["normalized"][0], [2 / 3, 1 / 3, 0])
    rows = {row["label"]: row for row in M.per_class(y_true, y_pred, labels)}
    assert rows["a"]["precision"] == 1.0 and rows["a"]["recall"] == pytest.approx(2 / 3)
    assert rows["a"]["f1"] == pytest.approx(0.8)
    assert rows["b"]["precision"] == 0.5 and rows["b"]["recall"] == 0.5 and rows["b"]["f1"] == 0.5
    assert rows["c"]["precision"] == 0.5 and rows["c"]["recall"] == 1.0 and rows["c"]["f1"] == pytest.approx(2 / 3)
    assert [rows[l]["support"] for l in labels] == [3, 2, 1]
    s = M.summary(y_true, y_pred, labels)
    assert s["accuracy"] == pytest.approx(4 / 6)
    assert s["macro_f1"] == pytest.approx((0.8 + 0.5 + 2 / 3) / 3)
    assert s["balanced_accuracy"] == pytest.approx((2 / 3 + 0.5 + 1) / 3)


def test_empty_input_gives_nan_not_crash():
    assert math.isnan(M.summary([], [])["accuracy"])
    assert M.confusion([], [], ["a"])["counts"].tolist() == [[0]]
    assert M.threshold_summary([], [], 0.5)["review"] == 0


def test_confidence_bins_hand_computed():
    confidence = [0.05, 0.3, 0.35, 0.95, 1.0, 0.9, 0.1]
    correct = [False, True, False, True, True, False, True]
    bins = M.confidence_bins(correct, confidence)
    assert [b["bin"] for b in bins][:2] == ["0.0-0.1", "0.1-0.2"] and bins[-1]["bin"] == "0.9-1.0"
    assert [b["count"] for b in bins] == [1, 1, 0, 2, 0, 0, 0, 0, 0, 3]
    assert bins[0]["accuracy"] == 0.0
    assert bins[1]["accuracy"] == 1.0  # 0.1 belongs to [0.1, 0.2)
    assert bins[2]["accuracy"] is None
    assert bins[3]["accuracy"] == 0.5 and bins[3]["mean_confidence"] == pytest.approx(0.325)
    assert bins[9]["accuracy"] == pytest.approx(2 / 3)  # 0.9, 0.95 and 1.0 all in the last bin
    assert bins[9]["mean_confidence"] == pytest.approx((0.9 + 0.95 + 1.0) / 3)


def test_ece_hand_computed():
    # Bin 0.9-1.0: confidences 0.9, 0.9, 0.9, 0.9 with 3 correct -> |0.75 - 0.9| = 0.15, weight 4/6.
    # Bin 0.6-0.7: confidences 0.6, 0.6 with 2 correct -> |1.0 - 0.6| = 0.4, weight 2/6.
    confidence = [0.9, 0.9, 0.9, 0.9, 0.6, 0.6]
    correct = [True, True, True, False, True, True]
    rel = M.reliability(correct, confidence)
    assert rel["ece"] == pytest.approx(4 / 6 * 0.15 + 2 / 6 * 0.4)
    assert rel["mce"] == pytest.approx(0.4)
    assert M.expected_calibration_error(correct, confidence) == pytest.approx(0.2333333333)
    # A perfectly calibrated set: accuracy equals confidence in every bin.
    assert M.expected_calibration_error([True, False] * 5, [0.5] * 10) == pytest.approx(0.0)


def test_ece_matches_a_direct_numpy_formula_on_random_data():
    rng = np.random.default_rng(3)
    confidence = rng.uniform(0, 1, 500)
    correct = rng.random(500) < confidence ** 0.5
    edges = np.linspace(0, 1, 11)
    ece = 0.0
    for lo, hi in zip(edges[:-1], edges[1:]):
        mask = (confidence >= lo) & ((confidence < hi) if hi < 1 else (confidence <= hi))
        if mask.any():
            ece += mask.mean() * abs(correct[mask].mean() - confidence[mask].mean())
    assert M.expected_calibration_error(correct, confidence) == pytest.approx(ece)


def test_threshold_summary_and_coverage_curve():
    confidence = [0.95, 0.92, 0.9, 0.85, 0.5, 0.3, 0.99, 0.97, 0.2, 0.91]
    correct = [True, True, False, True, False, False, True, True, False, True]
    t = M.threshold_summary(correct, confidence, 0.9)
    assert t["kept"] == 6 and t["review"] == 4  # >= 0.9 is accepted
    assert t["coverage"] == pytest.approx(0.6)
    assert t["accuracy"] == pytest.approx(5 / 6)
    assert t["errors_kept"] == 1
    assert t["text"] == "Accept above 0.90: keeps 60% of images (6 of 10) at 83.3% accuracy; 4 left for review."
    curve = M.coverage_curve(correct, confidence)
    assert len(curve) == 101 and curve[0]["coverage"] == 1.0 and curve[0]["accuracy"] == pytest.approx(0.6)
    assert curve[-1]["kept"] == 0 and curve[-1]["accuracy"] is None and curve[-1]["review"] == 10
    assert all(a["kept"] >= b["kept"] for a, b in zip(curve, curve[1:]))
    assert M.threshold_summary(correct, confidence, 1.0)["text"].endswith("all 10 left for review.")


def test_class_proportion_correction_hand_computed():
    # Labelled sample: 10 images verified per predicted class.
    #   predicted a: 8 truly a, 2 truly b;  predicted b: 1 truly a, 9 truly b.
    # Full predicted set: 90 predicted a, 10 predicted b -> column a scaled by 9, column b by 1.
    y_true = ["a"] * 8 + ["b"] * 2 + ["a"] * 1 + ["b"] * 9
    y_pred = ["a"] * 10 + ["b"] * 10
    out = M.proportion_corrected(y_true, y_pred, {"a": 90, "b": 10})
    assert out["weights"] == {"a": 9.0, "b": 1.0}
    assert out["counts"].tolist() == [[72.0, 1.0], [18.0, 9.0]]
    rows = {row["label"]: row for row in out["per_class"]}
    # Precision is a within-column ratio: unchanged.
    assert rows["a"]["precision"] == pytest.approx(0.8) and rows["b"]["precision"] == pytest.approx(0.9)
    # Recall moves: raw 8/9 and 9/11, corrected 72/73 and 9/27.
    assert rows["a"]["recall"] == pytest.approx(72 / 73)
    assert rows["b"]["recall"] == pytest.approx(1 / 3)
    assert rows["b"]["f1"] == pytest.approx(2 * 0.9 * (1 / 3) / (0.9 + 1 / 3))
    assert out["summary"]["accuracy"] == pytest.approx(81 / 100)
    assert out["summary"]["balanced_accuracy"] == pytest.approx((72 / 73 + 1 / 3) / 2)
    raw = {row["label"]: row for row in M.per_class(y_true, y_pred)}
    assert raw["a"]["recall"] == pytest.approx(8 / 9) and raw["b"]["recall"] == pytest.approx(9 / 11)
    assert M.summary(y_true, y_pred)["accuracy"] == pytest.approx(17 / 20)
    assert out["unsampled"] == {}


def test_correction_with_proportional_sample_changes_nothing_and_reports_unsampled():
    y_true, y_pred = random_labels(7, 200)
    labels = M.label_order(y_true, y_pred)
    counts = {label: 5 * y_pred.count(label) for label in labels}
    counts["badger"] = 40  # predicted in the full set, never in the labelled sample
    out = M.proportion_corrected(y_true, y_pred, counts, labels)
    raw = M.summary(y_true, y_pred, labels)
    for key in ("accuracy", "macro_f1", "balanced_accuracy"):
        assert out["summary"][key] == pytest.approx(raw[key])
    assert out["unsampled"] == {"badger": 40}
    assert out["summary"]["n"] == pytest.approx(5 * len(y_true))


def test_compare_table_rows():
    def report(name, y_true, y_pred, confidence):
        correct = [t == p for t, p in zip(y_true, y_pred)]
        return {
            "name": name,
            "summary": M.summary(y_true, y_pred),
            "per_class": M.per_class(y_true, y_pred),
            "calibration": M.reliability(correct, confidence),
            "threshold": M.threshold_summary(correct, confidence, 0.9),
        }

    truth = ["a", "a", "b", "b"]
    rows = M.compare_table([
        report("full-frame", truth, ["a", "b", "b", "b"], [0.95, 0.6, 0.92, 0.99]),
        report("cropped", truth, truth, [0.95, 0.91, 0.92, 0.99]),
    ])
    assert [r["name"] for r in rows] == ["full-frame", "cropped"]
    assert rows[0]["accuracy"] == 0.75 and rows[1]["accuracy"] == 1.0
    assert rows[0]["review"] == 1 and rows[1]["review"] == 0
    assert rows[1]["f1 a"] == 1.0 and rows[0]["f1 a"] == pytest.approx(2 / 3)


def test_rank_summary_hand_computed():
    ranks = ["species", "species", "species", "family", "family", "order", "uncertain", "uncertain", "label"]
    correct = [True, True, False, True, None, True, None, None, False]
    summary = M.rank_summary(ranks, correct)
    assert (summary["n"], summary["answers"], summary["uncertain"]) == (9, 7, 2)
    # 6 answers could be checked (the family answer with an unplaceable true label could not), 4 are right.
    assert (summary["checked"], summary["correct"]) == (6, 4)
    assert summary["share_correct"] == pytest.approx(4 / 6)
    rows = {row["rank"]: row for row in summary["per_rank"]}
    assert [row["rank"] for row in summary["per_rank"]] == ["label", "species", "family", "order", "uncertain"]
    assert (rows["species"]["n"], rows["species"]["correct"], rows["species"]["share_correct"]) == (3, 2, pytest.approx(2 / 3))
    assert (rows["family"]["n"], rows["family"]["checked"], rows["family"]["share_correct"]) == (2, 1, 1.0)
    assert rows["uncertain"]["share_correct"] is None and rows["uncertain"]["n"] == 2
    assert M.rank_text(summary) == ("correct at the rank given: 66.7% of 6 answers; "
                                    "answers by rank: label 1, species 3, family 2, order 1, uncertain 2")


def test_rank_summary_of_nothing_answered():
    summary = M.rank_summary(["uncertain"], [None])
    assert summary["answers"] == 0 and summary["share_correct"] is None
    assert M.rank_text(summary).startswith("correct at the rank given: no answer could be checked")


def test_empty_roc_matches_scikit_learn_and_skips_unscored_frames():
    from sklearn.metrics import roc_auc_score

    is_empty = [True, True, True, False, False, False, False, True]
    scores = [0.99, 0.95, 0.80, 0.96, 0.40, 0.10, None, None]
    roc = M.empty_roc(is_empty, scores)
    assert roc["n_empty"] == 3 and roc["n_animal"] == 3  # the two unscored frames are left out
    assert roc["auc"] == pytest.approx(roc_auc_score([1, 1, 1, 0, 0, 0], [0.99, 0.95, 0.80, 0.96, 0.40, 0.10]))
    assert roc["thresholds"][0] is None  # +inf: hide nothing
    assert roc["hidden_animals"][0] == 0 and roc["hidden_empty"][0] == 0
    assert roc["hidden_animals"][-1] == 1 and roc["hidden_empty"][-1] == 1
    assert M.empty_roc([True, True], [0.9, 0.8]) is None  # one kind only: no curve


def test_empty_threshold_summary_counts_what_the_filter_costs():
    is_empty = [True, True, True, False, False, False, False, True]
    scores = [0.99, 0.95, 0.80, 0.96, 0.40, 0.10, None, None]
    s = M.empty_threshold_summary(is_empty, scores, 0.9)
    assert (s["frames"], s["hidden"], s["animals"], s["animals_hidden"], s["empties"], s["empties_hidden"]) == (8, 3, 3, 1, 3, 2)
    assert s["animal_recall"] == pytest.approx(2 / 3)
    assert s["hidden_share"] == pytest.approx(3 / 8)
    assert s["unscored"] == 2
    assert "keeps 2 of 3 animal frames (recall 66.7%)" in s["text"]
    assert M.empty_threshold_summary(is_empty, scores, 0.97)["animals_hidden"] == 0
