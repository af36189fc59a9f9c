"""Train page (AppTest): form -> background training -> curves, metrics and a saved model."""

from __future__ import annotations

from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

import ui
from tests.imagegen import CLASS_STYLES, class_image, write

PAGE = Path(__file__).resolve().parent.parent / "app_pages" / "train.py"


@pytest.fixture()
def workdir(tmp_path, monkeypatch, models_root) -> Path:
    work = tmp_path / "work"
    for label, style in CLASS_STYLES.items():
        for seed in range(4):
            write(work / "data" / label / f"{seed}.jpg", class_image(style, seed=seed), quality=90)
    write(work / "one" / "bobcat" / "0.jpg", class_image("bright", seed=1), quality=90)
    write(work / "one" / "bobcat" / "1.jpg", class_image("bright", seed=2), quality=90)
    monkeypatch.setenv("WILDID_ALLOWED_ROOT", str(work))
    monkeypatch.setenv("WILDID_CACHE", str(tmp_path / "cache"))
    return work


def fill(at: AppTest, data: str, name: str = "page-model", arch: str = "test_resnet", weights: str = "none") -> None:
    at.text_input[0].input(data)
    at.text_input[1].input(name)
    custom = next(t for t in at.text_input if t.label.startswith("Any timm architecture"))
    custom.input(arch)
    next(s for s in at.selectbox if s.label == "Pretrained weights").select(weights)
    next(n for n in at.number_input if n.label.startswith("Validation folds")).set_value(2)
    next(n for n in at.number_input if n.label.startswith("Epochs")).set_value(5)


def submit(at: AppTest) -> AppTest:
    next(b for b in at.button if b.label == "Train").click()
    return at.run()


def test_train_page_trains_and_saves(workdir, models_root):
    at = AppTest.from_file(str(PAGE), default_timeout=60)
    at.run()
    assert not at.exception
    fill(at, "data")
    submit(at)
    assert not at.exception
    assert at.session_state["train_job"] == "page-model" and at.query_params["run"] == "page-model"
    job = ui.training_runs().get("page-model").job
    assert job.wait(120), "training did not finish"
    assert job.error is None, job.error
    at.run()
    assert not at.exception
    success = " ".join(s.value for s in at.success)
    assert "Saved model page-model" in success
    assert (models_root / "page-model" / "model.safetensors").is_file()
    metric_labels = [m.label for m in at.metric]
    assert "Mean accuracy" in metric_labels and "Calibration error (ECE)" in metric_labels
    assert any("wildid train" in c.value and "--arch test_resnet" in c.value for c in at.code)
    assert len(job.result.metrics["fold_accuracy"]) == 2
    # the default head (logistic regression) has no epochs to plot: the confusion matrix only
    assert len(at.get("plotly_chart")) == 1
    assert job.result.card.temperature > 0 and job.result.card.views in ("none", "flip", "d8")


def test_train_page_bad_inputs(workdir, tmp_path):
    at = AppTest.from_file(str(PAGE), default_timeout=60)
    at.run()
    fill(at, "one")
    submit(at)
    assert not at.exception
    assert any("only one class" in e.value for e in at.error)
    assert "train_job" not in at.session_state and not ui.training_runs().all()

    fill(at, str(tmp_path))  # outside the allowed root
    submit(at)
    assert any("outside the allowed folder" in e.value for e in at.error)

    fill(at, "data", arch="resnet18", weights="package")
    submit(at)
    assert any("packaged weights exist for tf_efficientnet_lite0 and tf_efficientnet_lite2 only" in e.value for e in at.error)


def test_training_job_stop(workdir):
    from wildid.train import TrainConfig, TrainingJob, load_labelled

    job = TrainingJob(load_labelled(workdir / "data"), TrainConfig(arch="test_resnet", weights="none", folds=2, epochs=5),
                      workdir / "never")
    job.stop()
    job.start()
    assert job.wait(60)
    assert job.stopped and job.result is None and "stopped" in job.error
    assert not (workdir / "never").exists()


def test_a_run_outlives_the_page_and_a_second_run_to_its_name_is_refused(workdir, models_root):
    import threading

    from wildid.train import TrainingJob

    release = threading.Event()

    class SlowJob(TrainingJob):
        """The real job, held at its first epoch until the test lets it go."""

        def _record(self, p):
            super()._record(p)
            if p.stage == "epoch":
                release.wait(60)

    at = AppTest.from_file(str(PAGE), default_timeout=60)
    at.run()
    fill(at, "data", name="slow-model")
    runs = ui.training_runs()
    original = runs.start

    def start_slow(*args, **kwargs):
        return original(*args, **kwargs, job_factory=SlowJob)

    runs.start = start_slow
    submit(at)
    assert not at.exception and not at.error
    run = runs.get("slow-model")
    assert run.running
    # a reload (the URL names the run) and another tab (no name: whatever is running) both see it live
    for query in ({"run": "slow-model"}, {}):
        other = AppTest.from_file(str(PAGE), default_timeout=60)
        other.query_params.update(query)
        other.run(timeout=60)
        assert not other.exception
        assert "Run: slow-model" in [h.value for h in other.subheader]
        assert other.button(key="train_stop").label == "Stop training"
    # a second run to the same name is refused with one line, the first goes on
    fill(other, "data", name="slow-model")
    submit(other)
    assert any("already running" in e.value for e in other.error)
    assert runs.get("slow-model") is run and run.running
    release.set()
    assert run.job.wait(120) and run.job.result is not None, run.job.error
    # the finished result stays visible to any session that opens the run
    later = AppTest.from_file(str(PAGE), default_timeout=60)
    later.query_params["run"] = "slow-model"
    later.run()
    assert any("Saved model slow-model" in s.value for s in later.success)


def test_behind_the_access_gate_a_run_is_shown_and_stopped_by_its_owner_only(workdir):
    """On a shared server the signed-in name owns a run: another person's URL naming it, or the
    server's list of running jobs, shows them nothing to watch or stop."""
    import threading

    from tests.test_jobs import FakeJob

    class QuietJob(FakeJob):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.stop_event, self.result, self.error, self.stopped = threading.Event(), None, None, False

        def snapshot(self):
            return [], None

        def stop(self):
            self.stop_event.set()

    runs = ui.training_runs()
    run = runs.start("ana-model", None, None, "models/ana-model", meta={"owner": "ana"}, job_factory=QuietJob)
    try:
        for user, seen in (("ana", True), ("bo", False)):
            for query in ({"run": "ana-model"}, {}):
                at = AppTest.from_file(str(PAGE), default_timeout=60)
                at.session_state["wildid_user"] = user
                at.query_params.update(query)
                at.run()
                assert not at.exception
                assert ("Run: ana-model" in [h.value for h in at.subheader]) is seen, (user, query)
                assert any(b.key == "train_stop" for b in at.button) is seen
                assert not any(str(b.key).startswith("train_open_") for b in at.button)
    finally:
        run.job.finish()
