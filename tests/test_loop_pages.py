"""The biologist's loop through the app's pages (AppTest over app.py's navigation): batch ->
review (blanks first, then the project's labels) -> train on the reviewed frames -> rerun batch
with the new model -> Dashboard, with every hand-off a button, never a download and upload."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
from streamlit.testing.v1 import AppTest

import ui
from tests.camgen import fixed_camera_folder
from tests.conftest import PROJECT_ROOT
from wildid import labelset, project, review

APP = str(PROJECT_ROOT / "app.py")


@pytest.fixture()
def allowed(tmp_path, monkeypatch, models_root):
    root = tmp_path / "allowed"
    truth = fixed_camera_folder(root / "tunnel", cameras=3, frames=12, empty_share=0.5, seed=3)
    monkeypatch.setenv("WILDID_ALLOWED_ROOT", str(root))
    return root, truth


def title(at: AppTest) -> str:
    return at.title[0].value if len(at.title) else ""


def follow(at: AppTest, page: str) -> None:
    """Stay on the page a hand-off button switched to (AppTest reruns the page it last switched
    to itself; the browser follows st.switch_page on its own)."""
    at.switch_page(page)


def test_batch_review_train_rerun_evaluate(allowed):
    root, truth = allowed
    folder = root / "tunnel"
    at = AppTest.from_file(APP, default_timeout=180)
    at.session_state["model_name"] = "tiny"
    at.run()
    at.switch_page("app_pages/batch.py").run()
    at.text_input(key="batch_folder").input(str(folder)).run()
    next(b for b in at.button if b.label == "Classify").click().run()
    assert not at.exception and not at.error
    proj = project.for_folder(folder, root)
    results = proj.results_path("tiny")
    assert results.is_file() and len(review.read_results(results)) == 36

    # Batch -> Review on that very file: blanks first
    at.button(key="batch_to_review").click().run()
    assert not at.exception and title(at) == "Review predictions"
    follow(at, "app_pages/review.py")
    assert at.text_input(key="rv_results_path").value == str(results)
    assert at.selectbox(key="rv_queue").value == review.QUEUE_LIKELY_EMPTY
    at.text_area(key="rv_labels_text").set_value("vole, stoat").run()
    at.button(key="rv_labels_save").click().run()
    assert labelset.read(results) == ["vole", "stoat", "empty"]
    frame = review.read_results(results)
    by_path = {row.path: truth[row.relpath] for row in frame.itertuples()}
    while at.selectbox(key="rv_queue").value == review.QUEUE_LIKELY_EMPTY and not at.success:
        page = [c for c in at.checkbox if c.key and c.key.startswith("rv_flag_")]
        shown = review.build_queue(frame, review.QueueSpec(review.QUEUE_LIKELY_EMPTY), project.read_not_empty(results))
        unreviewed = [p for p in shown["path"] if p not in review.replay_journal(results).labels][: len(page)]
        for box, path in zip(page, unreviewed):
            if by_path[path] != "empty":
                box.check()
        next(b for b in at.get("form_submit_button") if b.label.startswith("Confirm")).click().run()
        assert not at.exception
    at.button(key="rv_to_label").click().run()
    # the rest, one at a time with the project's keys: 1 vole, 2 stoat, 3 empty
    keys = {"vole": 0, "stoat": 1, "empty": 2}
    for _ in range(40):
        heading = [h.value for h in at.subheader if h.value.startswith("Image ")]
        if not heading:
            break
        pos = at.session_state["rv_pos"]
        path = review.build_queue(frame, review.QueueSpec(review.QUEUE_TO_LABEL, labels=("vole", "stoat", "empty")),
                                  project.read_not_empty(results))["path"].iloc[pos]
        at.button(key=f"rv_c{keys[by_path[path]]}_{pos}").click().run()
        assert not at.exception
    labels = review.replay_journal(results).labels
    assert len(labels) == 36 and all(by_path[p] == label for p, label in labels.items())

    # Review -> Train with the reviewed set, grouped by camera folder, the name proposed
    at.button(key="rv_train").click().run()
    assert not at.exception and title(at) == "Train a model"
    follow(at, "app_pages/train.py")
    assert at.text_input(key="train_name").value == "tunnel-1"
    data = Path(at.text_input(key="train_data").value)
    table = pd.read_csv(data)
    assert len(table) == 36 and set(table["group"]) == {"cam01", "cam02", "cam03"}
    next(t for t in at.text_input if t.label.startswith("Any timm architecture")).input("test_resnet")
    next(s for s in at.selectbox if s.label == "Pretrained weights").select("none")
    next(n for n in at.number_input if n.label.startswith("Validation folds")).set_value(3)
    next(n for n in at.number_input if n.label.startswith("Epochs")).set_value(5)
    next(b for b in at.button if b.label == "Train").click().run()
    assert not at.exception and not at.error
    run = ui.training_runs().get("tunnel-1")
    assert run.job.wait(180) and run.job.result is not None, run.job.error
    at.run()

    # Train -> Batch on the same folder with the new model; its results sit beside the first run's
    at.button(key="train_to_batch").click().run()
    assert not at.exception and title(at).startswith("Batch")
    follow(at, "app_pages/batch.py")
    assert at.session_state["model_name"] == "tunnel-1"
    next(b for b in at.button if b.label == "Classify").click().run()
    assert not at.exception and not at.error
    rerun = proj.results_path("tunnel-1")
    assert rerun.is_file() and {r.model for r in proj.runs()} == {"tiny", "tunnel-1"}
    assert review.replay_journal(rerun).labels == labels  # one journal per project

    # Batch -> Dashboard: the new model on its own training frames is flagged
    at.button(key="batch_to_dashboard").click().run()
    assert not at.exception and title(at) == "Evaluation dashboard"
    warnings = " ".join(w.value for w in at.warning)
    assert "36 of the 36 evaluated images (100%) were training images of tunnel-1" in warnings
    assert "No true label" not in warnings  # its classes are the project's labels
    assert any(m.label == "Recall of animals" for m in at.metric)
