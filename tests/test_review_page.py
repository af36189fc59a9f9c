"""AppTest of app_pages/review.py: label images with the page's buttons, check the journal."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pandas as pd
import pytest
from streamlit.testing.v1 import AppTest

from tests.imagegen import CLASS_STYLES
from tests.test_review import ROWS, make_results, sha256_tree
from wildid import review
from wildid.cards import ModelCard


PAGE = str(Path(__file__).resolve().parents[1] / "app_pages" / "review.py")


@pytest.fixture()
def workdir(tmp_path, monkeypatch):
    """The allowed root, and a card for the results' model "tiny" (its class order drives the buttons;
    the page never loads weights, so a card without weights is enough and keeps the test fast)."""
    work = tmp_path / "work"
    work.mkdir()
    ModelCard(name="tiny", arch="test_resnet", classes=tuple(CLASS_STYLES), task="tracks").save(tmp_path / "models" / "tiny")
    monkeypatch.setenv("WILDID_MODELS", str(tmp_path / "models"))
    monkeypatch.setenv("WILDID_ALLOWED_ROOT", str(work))
    return work


def open_page(results) -> AppTest:
    at = AppTest.from_file(PAGE, default_timeout=60)
    at.run()
    assert not at.exception
    at.text_input(key="rv_results_path").set_value(str(results)).run()
    assert not at.exception
    return at


def journal(results) -> pd.DataFrame:
    return pd.read_csv(review.journal_path(results), keep_default_na=False)


def test_label_skip_back_other_and_merge(workdir):
    results = make_results(workdir)
    before = sha256_tree(workdir)
    frame = review.read_results(results)
    at = open_page(results)
    assert [b.label for b in at.button if b.key and b.key.startswith("rv_c")] == ["gray fox", "bobcat", "coyote"]
    assert "Image 1 of 6" in [s.value for s in at.subheader]
    at.text_input(key="rv_reviewer").set_value("ana").run()
    # queue "below threshold" = status review, least confident first: rows 11, 10, 9, 8, 7, 6
    at.button(key="rv_c2_0").click().run()  # row 11 -> coyote
    at.button(key="rv_c1_1").click().run()  # row 10 -> bobcat
    at.button(key="rv_skip_2").click().run()  # row 9 skipped
    at.button(key="rv_c0_3").click().run()  # row 8 -> gray fox
    assert not at.exception
    entries = journal(results)
    assert list(entries["path"]) == [frame.loc[i, "path"] for i in (11, 10, 8)]
    assert list(entries["true_label"]) == ["coyote", "bobcat", "gray fox"]
    assert list(entries["predicted_label"]) == [ROWS[i][1] for i in (11, 10, 8)]
    assert list(entries["confidence"]) == [0.38, 0.41, 0.55] and set(entries["reviewer"]) == {"ana"}
    assert "Image 5 of 6" in [s.value for s in at.subheader]
    # back to row 8: the page says how it was labelled; relabel it with a free-text label
    at.button(key="rv_back_4").click().run()
    assert "Image 4 of 6" in [s.value for s in at.subheader]
    assert any("Reviewed as **gray fox** by ana" in s.value for s in at.success)
    at.text_input(key="rv_other").input("coyote pup")
    next(b for b in at.button if b.label == "Save other label").click().run()
    assert not at.exception
    assert review.replay_journal(results).labels[frame.loc[8, "path"]] == "coyote pup"
    assert len(journal(results)) == 4
    # a click that was meant for an image the reviewer has left (a key pressed mid-redraw) is ignored
    at.session_state["rv_pos"] = 5
    at.button(key="rv_c1_4").click().run()  # drawn for position 4 (row 7)
    assert frame.loc[7, "path"] not in review.replay_journal(results).labels and len(journal(results)) == 4
    # live metrics: 3 reviewed paths; row 11 right, rows 10 and 8 wrong
    assert [m.value for m in at.metric][:2] == ["3", "33.3%"]
    # merge writes <stem>.final.csv; the results and images are untouched
    at.button(key="rv_merge").click().run()
    assert not at.exception
    final = pd.read_csv(review.final_path(results), keep_default_na=False)
    assert (final["label_source"] == "manual").sum() == 3 and (final["label_source"] == "auto").sum() == 6
    after = sha256_tree(workdir)
    assert all(after[name] == digest for name, digest in before.items())


def test_reload_resumes_at_first_unreviewed(workdir):
    results = make_results(workdir)
    frame = review.read_results(results)
    for i in (11, 10):
        review.append_label(results, frame.loc[i, "path"], ROWS[i][0], "ben")
    at = open_page(results)
    assert "Image 3 of 6" in [s.value for s in at.subheader]
    assert any("2 of 6 reviewed" in p.proto.text for p in at.get("progress"))


def test_random_queue_and_per_bin_queue(workdir):
    results = make_results(workdir)
    at = open_page(results)
    at.selectbox(key="rv_queue").set_value(review.QUEUE_RANDOM).run()
    at.number_input(key="rv_n").set_value(4).run()
    assert "Image 1 of 4" in [s.value for s in at.subheader]
    at.selectbox(key="rv_queue").set_value(review.QUEUE_PER_BIN).run()
    at.number_input(key="rv_per_bin").set_value(1).run()
    assert not at.exception
    assert "Image 1 of 6" in [s.value for s in at.subheader]  # six default bins, one image each


def test_outside_allowed_root_and_export(workdir, tmp_path_factory):
    elsewhere = make_results(tmp_path_factory.mktemp("elsewhere"))
    at = open_page(elsewhere)
    assert any("outside the allowed folder" in e.value for e in at.error)
    results = make_results(workdir)
    frame = review.read_results(results)
    review.append_label(results, frame.loc[10, "path"], "bobcat", "ana")
    results_hash = hashlib.sha256(results.read_bytes()).hexdigest()
    at = open_page(results)
    at.text_input(key="rv_export_dir").set_value(str(workdir / "train-set")).run()
    at.button(key="rv_export").click().run()
    assert not at.exception
    assert [p.name for p in (workdir / "train-set" / "bobcat").iterdir()] == ["cam1__img010.jpg"]
    assert hashlib.sha256(results.read_bytes()).hexdigest() == results_hash


def test_camtrap_export_has_the_reviewed_labels_as_human_classifications(workdir):
    import csv
    import io
    import zipfile

    results = make_results(workdir)
    frame = review.read_results(results)
    at = open_page(results)
    at.text_input(key="rv_reviewer").set_value("ana").run()
    at.button(key="rv_c2_0").click().run()  # row 11 -> coyote
    at.button(key="review_camtrap_button").click().run()
    assert not at.exception and not at.error
    assert any("Camtrap DP 1.0 package" in s.value for s in at.success)
    assert any("latitude / longitude" in t.value for t in at.text)  # generated images have no GPS
    _, _, data, summary = at.session_state["review_camtrap"]
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        observations = list(csv.DictReader(io.StringIO(archive.read("observations.csv").decode())))
    media_of = {frame.loc[i, "path"]: frame.loc[i, "relpath"] for i in frame.index}
    human = [o for o in observations if o["classificationMethod"] == "human"]
    assert [(o["mediaID"], o["classifiedBy"], o["scientificName"]) for o in human] == [
        (media_of[frame.loc[11, "path"]], "ana", "Canis latrans")]
    assert summary.counts["media"] == 12
