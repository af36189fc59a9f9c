"""AppTest of app_pages/review.py: label images with the page's buttons, check the journal."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pandas as pd
import pytest
from streamlit.testing.v1 import AppTest

from tests.imagegen import CLASS_STYLES
from tests.test_review import ROWS, make_results, sha256_tree
from wildid import labelset, project, review
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


def open_page(results, queue: str | None = None) -> AppTest:
    at = AppTest.from_file(PAGE, default_timeout=60)
    if queue:
        at.query_params["queue"] = queue
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
    at = open_page(results, review.QUEUE_BELOW_THRESHOLD)
    # a model with few classes: they are the project's labels until others are declared, plus empty
    assert [b.label for b in at.button if b.key and b.key.startswith("rv_c")] == ["gray fox", "bobcat", "coyote", "empty"]
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
    # declare the project's labels, then pick one in the type-ahead box
    at.text_area(key="rv_labels_text").set_value("gray fox, bobcat\ncoyote\ncoyote pup").run()
    at.button(key="rv_labels_save").click().run()
    assert labelset.read(results) == ["gray fox", "bobcat", "coyote", "coyote pup", "empty"]
    assert "Image 4 of 6" in [s.value for s in at.subheader]
    at.selectbox(key="rv_search_3").set_value("coyote pup").run()
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
    at = open_page(results, review.QUEUE_BELOW_THRESHOLD)
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
    at = open_page(results, review.QUEUE_BELOW_THRESHOLD)
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


def test_a_model_with_hundreds_of_classes_offers_search_not_buttons(workdir, tmp_path):
    classes = tuple(f"imagenet class {i}" for i in range(398))
    ModelCard(name="general-big", arch="test_resnet", classes=classes, task="animals").save(tmp_path / "models" / "general-big")
    results = make_results(workdir)
    frame = pd.read_csv(results, dtype=str, keep_default_na=False)
    frame["model"] = "general-big"
    frame.loc[frame["status"] != "error", "label"] = "imagenet class 7"
    frame.to_csv(results, index=False)
    at = open_page(results)
    assert not at.exception
    label_buttons = [b for b in at.button if b.key and b.key.startswith("rv_c")]
    assert [b.label for b in label_buttons] == ["empty"]  # not 398 buttons: nothing declared yet
    assert len(at.button) < 20  # the whole page stays a screenful of buttons
    search = at.selectbox(key="rv_search_0")
    assert len(search.options) == 399 and search.options[:2] == ["empty", "imagenet class 7"]  # most predicted first
    assert any("Type this project's labels once" in i.value for i in at.info)
    # declared labels become the keyed buttons; the model's classes stay one search away
    at.text_area(key="rv_labels_text").set_value("vole, stoat").run()
    at.button(key="rv_labels_save").click().run()
    assert [b.label for b in at.button if b.key and b.key.startswith("rv_c")] == ["vole", "stoat", "empty"]
    assert len(at.selectbox(key="rv_search_0").options) == 401
    at.button(key="rv_c1_0").click().run()  # key 2 -> stoat
    assert list(review.replay_journal(results).labels.values()) == ["stoat"]


def test_likely_empty_pages_confirm_with_one_key_and_flag_exceptions(workdir):
    results = make_results(workdir)
    frame = pd.read_csv(results, dtype=str, keep_default_na=False)
    frame.loc[:9, "empty_score"] = "0.97"  # rows 0-9 look empty; 10, 11 do not
    frame.to_csv(results, index=False)
    paths = list(review.read_results(results)["path"])
    at = open_page(results)
    assert at.selectbox(key="rv_queue").value == review.QUEUE_LIKELY_EMPTY  # blanks first
    assert "Likely empty: 10 frames to confirm" in [s.value for s in at.subheader]
    flags = [c for c in at.checkbox if c.key and c.key.startswith("rv_flag_")]
    assert len(flags) == 10
    flags[2].check()  # the third thumbnail shows an animal
    confirm = next(b for b in at.get("form_submit_button") if b.label.startswith("Confirm 10 as empty"))
    confirm.click().run()
    assert not at.exception
    saved = review.replay_journal(results).labels
    assert len(saved) == 9 and set(saved.values()) == {"empty"}
    assert project.read_not_empty(results) == {paths[2]} and paths[2] not in saved
    assert any("All 9 likely-empty frames are confirmed" in s.value for s in at.success)
    at.button(key="rv_to_label").click().run()
    assert at.selectbox(key="rv_queue").value == review.QUEUE_TO_LABEL
    # the flagged frame waits for a label with the frames batch sent to review (10, 11), in file order
    assert "Image 1 of 3" in [s.value for s in at.subheader]
    assert at.get("progress")[0].proto.text.startswith("0 of 3 reviewed")


def test_a_rolled_up_row_shows_the_model_s_answer_at_its_rank(workdir):
    """A row answered at family level (no class sure) says so beside the image, not just its top class."""
    results = make_results(workdir)
    frame = pd.read_csv(results, dtype=str, keep_default_na=False)
    frame["rank"], frame["taxon"], frame["taxon_confidence"] = "", "", ""
    review_rows = frame.index[frame["status"] == "review"]
    lowest = frame.loc[review_rows, "confidence"].astype(float).idxmin()  # first in the below-threshold queue
    frame.loc[lowest, ["rank", "taxon", "taxon_confidence"]] = ["family", "Canidae", "0.83"]
    frame.to_csv(results, index=False)
    at = open_page(results, review.QUEUE_BELOW_THRESHOLD)
    assert "Image 1 of 6" in [s.value for s in at.subheader]
    captions = " ".join(c.value.replace("\\", "") for c in at.caption)
    assert "model's answer Canidae (family, 83%)" in captions
