"""AppTest of the Re-ID page: top matches, unknown verdict, confirm a match, register a new individual."""

from __future__ import annotations

import shutil

import pytest
from streamlit.testing.v1 import AppTest

from tests.conftest import PROJECT_ROOT
from tests.imagegen import jpeg_bytes
from tests.reidgen import coat_view, write_individuals
from tests.test_reid import MODEL, _handcrafted_master  # noqa: F401 - session fixture
from wildid import reid

PAGE = str(PROJECT_ROOT / "app_pages" / "reid.py")


@pytest.fixture()
def lynx_gallery(models_root, _handcrafted_master, tmp_path, monkeypatch):  # noqa: F811
    shutil.copytree(_handcrafted_master / MODEL, models_root / MODEL)
    monkeypatch.setenv("WILDID_GALLERIES", str(tmp_path / "galleries"))
    embedder = reid.load_embedder(MODEL)
    gallery = reid.Gallery.create("lynx", embedder.card)
    reid.add_folder(gallery, write_individuals(tmp_path / "known", range(4), range(3)), embedder)
    return gallery


def run_with_upload(data: bytes, name: str = "query.jpg") -> AppTest:
    at = AppTest.from_file(PAGE, default_timeout=60)
    at.run()
    at.file_uploader(key="reid_upload").set_value((name, data, "image/jpeg"))
    return at.run()


def test_known_individual_shows_matches_side_by_side(lynx_gallery):
    at = run_with_upload(jpeg_bytes(coat_view(2, 40, rotate=10.0, brighten=0.9), quality=92))
    assert not at.exception and not at.error
    [verdict] = [s.value for s in at.success]
    assert verdict.startswith("lynx-002 (similarity")
    captions = [img.caption for element in at.get("image") for img in element.proto.imgs]
    assert captions[0] == "Query" and captions[1] == "1. lynx-002" and len(captions) == 1 + 4
    assert [m.label for m in at.metric][:2] == ["Individuals", "Images"]
    assert at.metric[0].value == "4" and at.metric[1].value == "12"


def test_unknown_individual_is_flagged_and_can_be_registered(lynx_gallery):
    at = run_with_upload(jpeg_bytes(coat_view(950, 1), quality=92), "newcomer.jpg")
    assert not at.exception and not at.success
    [warning] = [w.value for w in at.warning]
    assert warning.startswith("Unknown individual")
    assert at.text_input(key="reid_new_name").value == "individual-005"
    at.text_input(key="reid_new_name").set_value("lynx-new")
    at.button[-1].click()  # the form's submit button
    at.run()
    assert not at.exception and not at.error
    assert any("Registered lynx-new" in s.value for s in at.success)
    gallery = reid.Gallery.open("lynx")
    assert gallery.individuals()["lynx-new"] == 1 and len(gallery.entries) == 13
    # Registering under an existing name is refused, nothing is overwritten.
    at.text_input(key="reid_new_name").set_value("lynx-001")
    at.button[-1].click()
    at.run()
    assert any("already in gallery" in e.value for e in at.error)
    assert len(reid.Gallery.open("lynx").entries) == 13


def test_confirm_a_match_adds_the_photo_to_that_individual(lynx_gallery):
    at = run_with_upload(jpeg_bytes(coat_view(1, 41, rotate=-10.0), quality=92))
    assert [s.value for s in at.success][0].startswith("lynx-001")
    at.button(key="reid_confirm_1").click()
    at.run()
    assert not at.exception
    assert any("Added the photo to lynx-001" in s.value for s in at.success)
    assert reid.Gallery.open("lynx").individuals()["lynx-001"] == 4
    at.button(key="reid_confirm_1").click()
    at.run()
    assert any("already filed under lynx-001" in i.value for i in at.info)
    assert reid.Gallery.open("lynx").individuals()["lynx-001"] == 4


def test_no_gallery_offers_to_create_one(models_root, _handcrafted_master, tmp_path, monkeypatch):  # noqa: F811
    shutil.copytree(_handcrafted_master / MODEL, models_root / MODEL)
    monkeypatch.setenv("WILDID_GALLERIES", str(tmp_path / "none"))
    at = AppTest.from_file(PAGE, default_timeout=60).run()
    assert not at.exception
    assert any("No galleries yet" in i.value for i in at.info)
    at.text_input(key="reid_new_gallery_name").set_value("wolves")
    at.button[0].click()
    at.run()
    assert not at.exception
    assert reid.list_galleries() == ["wolves"]
    assert at.selectbox(key="reid_gallery").value == "wolves"


def test_two_galleries_in_a_row_and_the_generic_model(models_root, tmp_path, monkeypatch):
    """No trained re-ID model: the packaged generic embedding is offered; a second gallery no longer
    crashes (its select box was set after it existed)."""
    monkeypatch.setenv("WILDID_GALLERIES", str(tmp_path / "galleries"))
    at = AppTest.from_file(PAGE, default_timeout=120).run()
    assert not at.exception
    assert at.selectbox(key="reid_new_gallery_model").value == "reid-generic"
    assert any("generic starting point" in c.value for c in at.caption)
    for name in ("north", "south"):
        at.text_input(key="reid_new_gallery_name").set_value(name)
        at.button[0].click()
        at.run()
        assert not at.exception, at.exception
        assert at.selectbox(key="reid_gallery").value == name
    assert reid.list_galleries() == ["north", "south"]
    assert reid.Gallery.open("south").model == "reid-generic"
    assert any("generic starting point" in c.value for c in at.caption)


def test_registering_refreshes_counts_and_the_next_name(lynx_gallery):
    at = run_with_upload(jpeg_bytes(coat_view(951, 1), quality=92), "newcomer.jpg")
    assert at.text_input(key="reid_new_name").value == "individual-005"
    at.button[-1].click()  # register under the suggested name
    at.run()
    assert not at.exception and not at.error
    assert any("Registered individual-005" in s.value for s in at.success)
    # The page shows the gallery as it is now: 5 individuals, 13 images, the photo now matches itself,
    # and the suggested name moved on.
    assert at.metric[0].value == "5" and at.metric[1].value == "13"
    assert any(s.value.startswith("individual-005 (similarity") for s in at.success)
    assert at.text_input(key="reid_new_name").value == "individual-006"
