"""Projects: one place per image folder for results, journal, label set; found from any session."""

from __future__ import annotations

import os

import pandas as pd
import pytest

from tests.test_review import make_results
from wildid import labelset, project, review
from wildid.errors import DataError


def test_project_location_is_a_pure_function_of_the_folder(tmp_path):
    root = tmp_path / "data"
    a, b = root / "site-a" / "cam1", root / "site-b" / "cam1"
    a.mkdir(parents=True)
    b.mkdir(parents=True)
    first = project.for_folder(a, root)
    # Another session (or a path typed differently) finds the same place.
    assert project.for_folder(str(root / "site-a" / ".." / "site-a" / "cam1"), root).path == first.path
    assert first.path.parent == root / project.PROJECTS_FOLDER
    assert first.path.name.startswith("cam1-") and len(first.path.name) == len("cam1-") + 8
    # Two folders with the same name never share a project.
    assert project.for_folder(b, root).path != first.path
    assert not first.path.exists()  # nothing written until a run starts
    first.create()
    assert project.of_results(first.results_path("general-animals")) == first
    assert first.settings()["folder"] == str(a.resolve())


def test_slug_is_file_name_safe():
    assert project.slug("Cam 1 / Tunnel: north") == "Cam-1-Tunnel-north"
    assert project.slug("...") == "folder"
    assert not project.slug(".hidden").startswith(".")


def test_runs_list_results_per_model_with_row_counts(tmp_path):
    proj = project.for_folder(tmp_path / "frames", tmp_path).create()
    results = make_results(tmp_path / "scratch")
    (proj.path / "results-tiny.csv").write_bytes(results.read_bytes())
    torn = results.read_bytes() + b"/x/half-written-row,cam"  # a run still writing its last row
    (proj.path / "results-other.csv").write_bytes(torn)
    runs = {run.model: run for run in proj.runs()}
    assert set(runs) == {"tiny"}  # both files name model "tiny" in their rows...
    assert sorted(r.rows for r in proj.runs()) == [13, 13]  # ...and the torn row is not counted
    assert proj.run_for("tiny").path == proj.path / "results-tiny.csv"
    assert proj.run_for("missing") is None


def test_runs_in_a_project_share_one_journal_and_label_set(tmp_path):
    proj = project.for_folder(tmp_path / "frames", tmp_path).create()
    first = make_results(proj.path, name="results-general-animals.csv")
    second = proj.path / "results-voles-1.csv"
    second.write_bytes(first.read_bytes())
    assert review.journal_path(first) == review.journal_path(second) == proj.journal
    frame = review.read_results(first)
    review.append_label(first, frame.loc[0, "path"], "vole", "ana")
    assert review.replay_journal(second).labels == {frame.loc[0, "path"]: "vole"}
    labelset.write(first, ["vole", "stoat"])
    assert labelset.read(second) == ["vole", "stoat", "empty"]
    assert proj.labels_file.read_text() == "vole\nstoat\nempty\n"
    with pytest.raises(DataError, match="journal"):
        review.read_results(proj.journal)
    # Outside a project the side files stay beside the results, as before.
    lone = make_results(tmp_path / "lone")
    assert review.journal_path(lone) == lone.with_name("run.reviewed.csv")
    assert project.side_file(lone, project.LABELS) == lone.with_name("run.labels.txt")


def test_settings_keep_the_empty_threshold(tmp_path):
    proj = project.for_folder(tmp_path / "frames", tmp_path).create()
    assert proj.empty_threshold is None
    proj.save_settings(empty_threshold=0.97)
    assert project.for_folder(tmp_path / "frames", tmp_path).empty_threshold == 0.97
    proj.settings_file.write_text("{not json")
    assert proj.settings() == {} and proj.empty_threshold is None


def test_not_empty_flags_are_appended_durably_and_a_torn_tail_ignored(tmp_path):
    results = make_results(tmp_path)
    assert project.read_not_empty(results) == set()
    assert project.add_not_empty(results, ["/a.jpg", "/b.jpg", "/a.jpg"]) == 2
    assert project.add_not_empty(results, ["/b.jpg"]) == 0
    flags = project.side_file(results, project.NOT_EMPTY)
    with open(flags, "ab") as handle:
        handle.write(b"/c.jp")  # a crash mid-write
    assert project.read_not_empty(results) == {"/a.jpg", "/b.jpg"}
    assert project.add_not_empty(results, ["/d.jpg"]) == 1
    assert project.read_not_empty(results) == {"/a.jpg", "/b.jpg", "/d.jpg"}
    with pytest.raises(DataError):
        project.add_not_empty(results, ["/evil\n/e.jpg"])


def test_write_text_atomic_leaves_no_temporary_file(tmp_path):
    target = project.write_text_atomic(tmp_path / "sub" / "labels.txt", "a\n")
    assert target.read_text() == "a\n"
    assert os.listdir(tmp_path / "sub") == ["labels.txt"]


def test_label_set_parsing_and_order():
    assert labelset.parse("vole, stoat\nVole\n  least   weasel \n# comment\n") == ["vole", "stoat", "least weasel"]
    assert labelset.with_empty(["vole"]) == ["vole", "empty"]
    assert labelset.with_empty(["Empty", "vole"]) == ["Empty", "vole"]
    # keys 1-9 on the most used; ties keep the declared order
    order = labelset.keyed_order(["vole", "stoat", "empty", "shrew"], {"empty": 40, "stoat": 3, "shrew": 3})
    assert order == ["empty", "stoat", "shrew", "vole"]
    with pytest.raises(DataError):
        labelset.clean("x" * 200)


def test_label_set_suggestions_never_take_hundreds_of_model_classes():
    many = [f"class {i}" for i in range(398)]
    assert labelset.suggest(many) == ["empty"]
    assert labelset.suggest(many, used=["vole"]) == ["vole", "empty"]
    assert labelset.suggest(["vole", "stoat", "empty"]) == ["vole", "stoat", "empty"]
    options = labelset.search_options(["vole", "empty"], many, predicted=["class 7", "class 7", "class 3"])
    assert options[:4] == ["vole", "empty", "class 7", "class 3"]
    assert len(options) == 400


def test_label_set_from_labelled_csv_and_image_folder(tmp_path):
    from tests.imagegen import class_image

    for label in ("stoat", "vole"):
        (tmp_path / "folder" / label).mkdir(parents=True)
        class_image("dark").save(tmp_path / "folder" / label / "a.jpg")
    assert sorted(labelset.from_data(tmp_path / "folder")) == ["stoat", "vole"]
    csv_path = tmp_path / "labels.csv"
    pd.DataFrame({"path": ["a.jpg", "b.jpg", "c.jpg"], "label": ["vole", "empty", "vole"]}).to_csv(csv_path, index=False)
    assert labelset.from_data(csv_path) == ["vole", "empty"]


def test_write_needs_a_label_besides_empty(tmp_path):
    results = make_results(tmp_path)
    with pytest.raises(DataError, match="besides 'empty'"):
        labelset.write(results, ["empty"])
    assert labelset.add(results, "vole") == ["vole", "empty"]  # a label typed in the search box declares it
    labelset.write(results, ["vole", "stoat"])
    assert labelset.add(results, "shrew") == ["vole", "stoat", "empty", "shrew"]
    assert labelset.add(results, "SHREW") == ["vole", "stoat", "empty", "shrew"]


def test_proposed_model_names_are_free_and_safe():
    assert project.propose_model_name("tunnel cams", set()) == "tunnel-cams-1"
    assert project.propose_model_name("tunnel cams", {"tunnel-cams-1", "tunnel-cams-2"}) == "tunnel-cams-3"
    assert project.propose_model_name("_x", set()) == "x-1"


def test_reviewed_set_goes_to_the_project_grouped_by_camera_folder(tmp_path):
    proj = project.for_folder(tmp_path / "frames", tmp_path).create()
    results = make_results(proj.path, name="results-tiny.csv")
    frame = review.read_results(results)
    review.append_labels(results, [(frame.loc[i, "path"], label, "", None)
                                   for i, label in ((0, "vole"), (1, "empty"), (2, "stoat"))], "ana")
    summary = project.export_reviewed_set(results)
    assert summary.labels_csv.parent == proj.path and summary.labels_csv.name.startswith("reviewed-set-")
    table = pd.read_csv(summary.labels_csv)
    assert list(table["label"]) == ["vole", "empty", "stoat"] and list(table["group"]) == ["cam1", "cam2", "cam1"]
    lone = make_results(tmp_path / "lone")
    review.append_label(lone, review.read_results(lone).loc[0, "path"], "vole", "ana")
    assert project.export_reviewed_set(lone).labels_csv.parent == tmp_path / "lone"
