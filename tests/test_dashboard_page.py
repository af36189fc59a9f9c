"""AppTest of app_pages/dashboard.py with a generated results file (+ journal) and a labelled folder."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from tests.imagegen import CLASS_STYLES, class_image, write
from tests.test_evaluate import write_results
from wildid import evaluate as ev

PAGE = str(Path(__file__).resolve().parents[1] / "app_pages" / "dashboard.py")
SOURCES = [
    "Labelled folder or CSV on the server",
    "Upload a results CSV + truth CSV",
    "Results CSV on the server + its reviewed journal",
    "Open a saved report (JSON)",
]


@pytest.fixture()
def workdir(tmp_path, monkeypatch):
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.setenv("WILDID_ALLOWED_ROOT", str(work))
    return work


def make_results_with_journal(work: Path) -> Path:
    """8 classified images (2 of them reviewed as wrong) and a journal reviewing 6 of them."""
    styles = list(CLASS_STYLES.items())
    rows, journal = [], []
    plan = [  # (true, predicted, confidence, reviewed)
        ("gray fox", "gray fox", 0.97, True), ("gray fox", "gray fox", 0.93, True), ("bobcat", "bobcat", 0.95, True),
        ("bobcat", "gray fox", 0.55, True), ("coyote", "coyote", 0.91, True), ("coyote", "bobcat", 0.62, True),
        ("coyote", "coyote", 0.99, False), ("gray fox", "gray fox", 0.96, False),
    ]
    for i, (true, pred, conf, reviewed) in enumerate(plan):
        style = dict(styles)[true]
        path = write(work / "imgs" / f"frame_{i}.jpg", class_image(style, seed=i), quality=85)
        rows.append({"path": str(path), "relpath": path.name, "label": pred, "confidence": conf, "status": "accepted",
                     "model": "tiny", "model_version": "1"})
        if reviewed:
            journal.append([str(path), true, "ann", "2024-06-01T10:00:00", pred, conf])
    results = write_results(work / "batch.csv", rows)
    with ev.journal_path_for(results).open("w", newline="") as handle:
        w = csv.writer(handle)
        w.writerow(["path", "true_label", "reviewer", "reviewed_at", "predicted_label", "confidence"])
        w.writerows(journal)
    return results


def test_results_and_journal_dashboard(workdir):
    results = make_results_with_journal(workdir)
    at = AppTest.from_file(PAGE, default_timeout=60)
    at.run()
    assert not at.exception
    assert any("Pick a data source" in i.value for i in at.info)
    at.radio[0].set_value(SOURCES[2]).run()
    at.text_input(key="dashboard_results_path").set_value(str(results)).run()
    at.button[0].click().run()
    assert not at.exception, at.exception
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["Images"] == "6"
    assert metrics["Accuracy"] == "66.7%"  # 4 of 6 reviewed were right
    assert any("not a random sample" in c.value for c in at.caption)
    # The cell picker lists error cells first; its thumbnails are the images of that cell.
    cell = at.selectbox(key="dashboard_cell")
    assert cell.value in {("bobcat", "gray fox"), ("coyote", "bobcat")}
    cell.set_value(("bobcat", "gray fox")).run()
    assert any("true bobcat → predicted gray fox**: 1 images" in md.value for md in at.markdown)
    assert len(at.get("image")) == 1  # the one misclassified bobcat, as a thumbnail
    # Threshold slider: >= 0.9 keeps 4 of 6 reviewed images, all right; 2 left for review.
    at.slider(key="dashboard_threshold").set_value(0.9).run()
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["Accepted"] == "4 (67%)" and metrics["Left for review"] == "2"
    assert metrics["Accuracy of accepted"] == "100.0%"
    assert any("keeps 67% of images (4 of 6) at 100.0% accuracy; 2 left for review" in s.value for s in at.success)
    # Correction: the full set has 8 predictions (gray fox 4, bobcat 2, coyote 2).
    assert any("reweighted to the predicted-class proportions of all 8" in c.value for c in at.caption)
    at.toggle(key="dashboard_normalized").set_value(True).run()
    assert not at.exception
    assert len(at.get("download_button")) == 2


def test_labelled_folder_two_models(workdir, models_root):
    for label, style in CLASS_STYLES.items():
        for seed in range(2):
            write(workdir / "data" / label / f"{seed}.jpg", class_image(style, seed=400 + seed), quality=90)
    at = AppTest.from_file(PAGE, default_timeout=120)
    at.session_state["model_name"] = "tiny"
    at.run()
    at.text_input(key="dashboard_data").set_value(str(workdir / "data")).run()
    at.multiselect(key="dashboard_models").set_value(["tiny", "tiny-vit"]).run()
    at.button[0].click().run()
    assert not at.exception, at.exception
    assert any(h.value == "Models side by side" for h in at.subheader)
    compare = at.dataframe[0].value
    assert list(compare.index) == ["tiny", "tiny-vit"]
    assert (compare["accuracy"] >= 0.8).all() and (compare["n"] == 6).all()
    at.selectbox(key="dashboard_detail").set_value("tiny-vit").run()
    assert any(h.value == "tiny-vit" for h in at.subheader)


def test_path_outside_allowed_root_is_refused(workdir, tmp_path):
    at = AppTest.from_file(PAGE, default_timeout=60)
    at.run()
    at.radio[0].set_value(SOURCES[2]).run()
    at.text_input(key="dashboard_results_path").set_value(str(tmp_path / "elsewhere.csv")).run()
    at.button[0].click().run()
    assert not at.exception
    assert any("outside the allowed folder" in e.value for e in at.error)


def test_answers_per_rank_and_share_correct_at_rank(workdir, models_root):
    import numpy as np
    from PIL import Image

    from wildid.cards import load_card

    folder = models_root / "tiny"
    load_card(folder).replace(threshold=0.6).save(folder)
    for label, style in CLASS_STYLES.items():
        write(workdir / "data" / label / "0.jpg", class_image(style, seed=400), quality=90)
    # Between fox and coyote, filed as a coyote: answered as the dog family, right at that rank.
    dark = np.asarray(class_image("dark", seed=300, size=(160, 120)), float)
    striped = np.asarray(class_image("striped", seed=300, size=(160, 120)), float)
    Image.fromarray(np.clip(0.3 * dark + 0.7 * striped, 0, 255).astype(np.uint8)).save(workdir / "data" / "coyote" / "blend.png")
    at = AppTest.from_file(PAGE, default_timeout=120)
    at.session_state["model_name"] = "tiny"
    at.run()
    at.text_input(key="dashboard_data").set_value(str(workdir / "data")).run()
    at.button[0].click().run()
    assert not at.exception, at.exception
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["Accuracy"] == "75.0%"  # the blend's top class (gray fox) is no coyote
    assert metrics["Correct at the rank given"] == "100.0%"  # but the dog family is right
    [ranks] = [frame.value for frame in at.dataframe if "share_correct" in frame.value.columns]
    assert dict(zip(ranks["rank"], ranks["n"])) == {"species": 3, "family": 1}


def project_with_labels(work: Path):
    """A project folder with the tiny model's results over 12 images, 6 reviewed (vole/stoat/empty)."""
    import pandas as pd

    from tests.test_review import make_results
    from wildid import project, review

    proj = project.for_folder(work / "frames", work).create()
    results = make_results(proj.path, name="results-tiny.csv", with_error=False)
    frame = pd.read_csv(results, dtype=str, keep_default_na=False)
    scores = {0: 0.2, 1: 0.99, 2: 0.95, 3: 0.97, 4: 0.1, 5: 0.6}
    for index, score in scores.items():
        frame.loc[index, "empty_score"] = str(score)
    frame.to_csv(results, index=False)
    truth = {0: "vole", 1: "empty", 2: "stoat", 3: "empty", 4: "vole", 5: "empty"}
    review.append_labels(results, [(frame.loc[i, "path"], label, "", None) for i, label in truth.items()], "ana")
    return proj, results


def test_handed_results_warn_map_labels_and_pick_the_empty_threshold(models_root, workdir):
    proj, results = project_with_labels(workdir)
    at = AppTest.from_file(PAGE, default_timeout=120)
    at.query_params["results"] = str(results)  # Batch's "Evaluate" opens the page on this file
    at.run()
    assert not at.exception and not at.error
    assert at.radio(key="dashboard_source").value == SOURCES[2]
    assert any("No true label is a class of tiny" in w.value for w in at.warning)
    accuracy = {m.label: m.value for m in at.metric}["Accuracy"]
    assert accuracy == "0.0%"
    # the empty filter at the default 0.90: hides frames 1, 2 (an animal!) and 3
    values = {m.label: m.value for m in at.metric}
    assert values["Recall of animals"] == "66.7%" and values["Animal frames hidden"] == "1 of 3"
    assert values["Frames hidden"] == "3 of 6 (50%)"
    # animal or empty, the empty score saying empty: what filter + model really do
    at.radio(key="dashboard_mapping_tiny").set_value("animal or empty (the empty score says empty)").run()
    assert not at.exception
    assert {m.label: m.value for m in at.metric}["Accuracy"] == "66.7%"
    assert not any("No true label" in w.value for w in at.warning)
    # a stricter threshold keeps every animal; saved for the project, Batch and Review start from it
    at.slider(key="dashboard_empty_t_tiny").set_value(0.96).run()
    values = {m.label: m.value for m in at.metric}
    assert values["Recall of animals"] == "100.0%" and values["Frames hidden"] == "2 of 6 (33%)"
    at.button(key="dashboard_empty_save").click().run()
    assert proj.empty_threshold == 0.96
    assert len(at.get("plotly_chart")) >= 2  # confusion matrix and the empty-score ROC


def test_no_journal_yet_says_review_first(models_root, workdir):
    from tests.test_review import make_results
    from wildid import project

    proj = project.for_folder(workdir / "frames", workdir).create()
    results = make_results(proj.path, name="results-tiny.csv")
    at = AppTest.from_file(PAGE, default_timeout=60)
    at.query_params["results"] = str(results)
    at.run()
    assert not at.exception
    assert any("no reviewed labels for results-tiny.csv yet" in e.value for e in at.error)
    assert at.button(key="dashboard_to_review").label == "Review these results"
    at.run()  # still offered on the next run (e.g. after another widget changed)
    assert at.button(key="dashboard_to_review").label == "Review these results"
