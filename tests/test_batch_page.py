"""AppTest of the Batch page: a server folder -> progress, results table, histogram, downloads."""

from __future__ import annotations

import pytest
from streamlit.testing.v1 import AppTest

from tests.conftest import PROJECT_ROOT
from tests.imagegen import class_image, write

PAGE = str(PROJECT_ROOT / "app_pages" / "batch.py")


@pytest.fixture()
def allowed(tmp_path, monkeypatch):
    root = tmp_path / "allowed"
    styles = ["dark", "bright", "striped"]
    for i in range(7):
        write(root / "site1" / "cam" / f"IMG_{i:04d}.jpg", class_image(styles[i % 3], i, (160, 120)))
    write(root / "site1" / "broken.jpg", b"\xff\xd8\xff garbage")
    monkeypatch.setenv("WILDID_ALLOWED_ROOT", str(root))
    return root


def page(model: str = "tiny") -> AppTest:
    at = AppTest.from_file(PAGE, default_timeout=120)
    at.session_state["model_name"] = model
    return at.run()


def test_folder_run_shows_table_histogram_and_downloads(models_root, allowed):
    at = page()
    assert not at.exception
    at.text_input[0].input("site1").run()
    at.button[0].click().run()
    assert not at.exception and not at.error
    metrics = {m.label: m.value for m in at.metric if m.label in ("Files", "Accepted", "To review", "Errors")}
    assert metrics == {"Files": "8", "Accepted": "7", "To review": "0", "Errors": "1"}
    hide = [c for c in at.checkbox if c.label.startswith("Hide")][0]
    hide.uncheck().run()
    table = at.dataframe[-1].value
    assert len(table) == 8
    assert set(table["label"]) == {"gray fox", "bobcat", "coyote", ""}
    assert table.set_index("relpath").loc["broken.jpg", "status"] == "error"
    downloads = at.get("download_button")
    assert len(downloads) == 2
    assert len(at.get("plotly_chart")) == 1
    results = at.session_state["batch_results"]
    assert results.endswith(".csv")


def test_resume_keeps_rows(models_root, allowed):
    at = page()
    at.text_input[0].input("site1").run()
    at.button[0].click().run()
    first = open(at.session_state["batch_results"]).read()
    [c for c in at.checkbox if c.label.startswith("Resume")][0].check().run()
    at.button[0].click().run()
    assert not at.exception and not at.error
    assert open(at.session_state["batch_results"]).read() == first  # nothing redone, nothing duplicated


def test_folder_outside_allowed_root_is_refused(models_root, allowed):
    at = page()
    at.text_input[0].input("/etc").run()
    at.button[0].click().run()
    assert not at.exception
    assert any("outside the allowed folder" in e.value for e in at.error)
    assert "batch_results" not in at.session_state


def test_model_without_weights_disables_the_run(models_root, allowed):
    at = page("empty-slot")
    assert not at.exception
    assert any("no weights yet" in i.value for i in at.info)
    assert at.button[0].disabled


def test_background_crop_run_and_camtrap_export(models_root, allowed):
    import csv
    import io
    import zipfile

    at = page()
    at.text_input[0].input("site1").run()
    [r for r in at.radio if r.label == "Classify"][0].set_value("Background crop (fixed cameras)").run()
    at.button[0].click().run()
    assert not at.exception and not at.error
    table = at.dataframe[-1].value
    assert "box_source" in table.columns
    at.button(key="batch_camtrap_button").click().run()
    assert not at.exception and not at.error
    assert any("Camtrap DP 1.0 package" in s.value and "7 media" in s.value for s in at.success)
    _, _, data, summary = at.session_state["batch_camtrap"]
    assert summary.counts["media"] == 7  # the broken file is not media
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        media = list(csv.DictReader(io.StringIO(archive.read("media.csv").decode())))
    assert sorted(m["filePath"] for m in media) == [f"cam/IMG_{i:04d}.jpg" for i in range(7)]
    assert len(at.get("download_button")) == 3


def test_dask_cluster_only_from_the_operator_s_list(models_root, allowed, monkeypatch):
    """No free-text scheduler address: a visitor's own scheduler could run code on the server
    (a Dask client unpickles its replies).  The operator's WILDID_DASK_SCHEDULERS is the menu."""
    monkeypatch.delenv("WILDID_DASK_SCHEDULERS", raising=False)
    at = page()
    assert not at.exception
    assert [t.label for t in at.text_input] == ["Folder"]
    assert not [s for s in at.selectbox if s.label == "Run on"]
    monkeypatch.setenv("WILDID_DASK_SCHEDULERS", "tcp://cluster-head:8786, local:2")
    at = page()
    assert not at.exception
    assert [t.label for t in at.text_input] == ["Folder"]
    [run_on] = [s for s in at.selectbox if s.label == "Run on"]
    assert run_on.options == ["this server's cores", "tcp://cluster-head:8786", "local:2"]
    assert run_on.value == "this server's cores"


def test_results_go_to_the_folders_project_and_another_session_finds_them(models_root, allowed):
    from wildid import project

    at = page()
    at.text_input(key="batch_folder").input("site1").run()
    proj = project.for_folder(allowed / "site1", allowed)
    assert any(str(proj.path) in c.value.replace("\\", "") for c in at.caption)  # shown before any run
    at.button[0].click().run()
    assert not at.exception and not at.error
    results = proj.results_path("tiny")
    assert at.session_state["batch_results"] == str(results) and results.is_file()
    assert [run.model for run in proj.runs()] == ["tiny"] and proj.runs()[0].rows == 8
    first = results.read_bytes()
    # a new session: typing the folder shows the previous run, and Classify resumes it (nothing redone)
    fresh = page()
    fresh.text_input(key="batch_folder").input(str(allowed / "site1")).run()
    assert not fresh.exception
    assert {m.label: m.value for m in fresh.metric}.get("Files") == "8"
    assert [c for c in fresh.checkbox if c.label.startswith("Resume")][0].value is True
    fresh.button[0].click().run()
    assert not fresh.exception and results.read_bytes() == first
    assert fresh.button(key="batch_to_review").label == "Review these results"
    assert fresh.button(key="batch_to_dashboard").label == "Evaluate"


def test_shared_server_completes_another_session_s_run_never_restarts_it(models_root, allowed):
    """Behind the access gate a project's results are the room's: a second person's unticked
    Resume is refused with one line instead of starting over on the first person's file."""
    from wildid import project

    first = AppTest.from_file(PAGE, default_timeout=120)
    first.session_state["model_name"] = "tiny"
    first.session_state["wildid_user"] = "ana"
    first.run()
    first.text_input(key="batch_folder").input("site1").run()
    first.button[0].click().run()
    assert not first.exception and not first.error
    results = project.for_folder(allowed / "site1", allowed).results_path("tiny")
    before = results.read_bytes()
    second = AppTest.from_file(PAGE, default_timeout=120)
    second.session_state["model_name"] = "tiny"
    second.session_state["wildid_user"] = "bo"
    second.run()
    second.text_input(key="batch_folder").input("site1").run()
    [resume] = [c for c in second.checkbox if c.label.startswith("Resume")]
    assert resume.value is True
    resume.uncheck().run()
    second.button[0].click().run()
    assert not second.exception
    [error] = [e.value for e in second.error]
    assert "from another session" in error and "tick 'Resume the previous run on this folder'" in error.replace("\\", "")
    assert results.read_bytes() == before
    # The first person may still start their own run again.
    [own] = [c for c in first.checkbox if c.label.startswith("Resume")]
    own.uncheck().run()
    first.button[0].click().run()
    assert not first.exception and not first.error
