"""Browser: a footprint photo sent to the general model gets the out-of-scope state (no species
answer) and a suggestion of the installed track model, which one click switches to."""

import re
import shutil

import pytest

from tests.browser.conftest import screenshot, select_model, wait_for_app
from tests.trackstandin import TRACKS, installed_tracks_model, make_tracks_standin, split_rows

pytestmark = pytest.mark.browser


@pytest.fixture(scope="module")
def tracks_model(browser_models_root):
    """models/tracks-families if installed, else a stand-in trained on the real footprint photos."""
    from wildid.cards import load_card

    target = browser_models_root / "tracks-families"
    if not target.is_dir():
        installed = installed_tracks_model()
        if installed is not None:
            shutil.copytree(installed, target)
        else:
            make_tracks_standin(browser_models_root)
    return load_card(target)


@pytest.fixture(scope="module")
def footprint(tracks_model, tmp_path_factory):
    """A held-out footprint (test split) that the track model calls in scope and the general model
    excludes as footprints."""
    from wildid.registry import load_predictor

    general, tracks = load_predictor("general-animals"), load_predictor(tracks_model.folder)
    for row in split_rows("test"):
        path = TRACKS / row["path"]
        [g], [t] = general.predict([path]), tracks.predict([path])
        if g.excluded_as == "footprints" and not t.out_of_scope:
            target = tmp_path_factory.mktemp("footprint") / f"{row['label']}_track.jpg"
            shutil.copy(path, target)
            return target
    pytest.fail("no test-split footprint is out of scope for general-animals and in scope for the track model")


@pytest.mark.timeout(900)  # the first run fits the stand-in track model on real photos (minutes on 2 cores)
def test_footprint_on_the_general_model_suggests_the_track_model(page, app_url, tracks_model, footprint):
    page.goto(app_url)
    wait_for_app(page)
    select_model(page, "General animals")
    page.locator('[data-testid="stFileUploader"] input[type="file"]').first.set_input_files(str(footprint))
    page.get_by_text("Not something this model was trained on").first.wait_for()
    wait_for_app(page)
    assert page.get_by_text(re.compile("this looks like footprints, which")).count() == 1
    # No species answer: neither a green answer box nor a facts card.
    assert page.get_by_test_id("stAlertContentSuccess").count() == 0
    assert page.get_by_text("About this animal").count() == 0
    page.get_by_text(re.compile(re.escape(tracks_model.display_title) + ".*was trained on images like this one")).wait_for()
    screenshot(page, "identify-out-of-scope")
    page.get_by_role("button", name=f"Use {tracks_model.display_title}").click()
    wait_for_app(page)
    page.get_by_text(f"Model card: {tracks_model.display_title}").first.wait_for()
    page.locator('[data-testid="stFileUploader"] input[type="file"]').first.set_input_files(str(footprint))
    wait_for_app(page)
    page.get_by_text(re.compile(r"^(bear|canid|deer|felid|mustelid) \(\d+%\)$|^Uncertain")).first.wait_for()
    assert page.get_by_text("Not something this model was trained on").count() == 0
    assert page.get_by_test_id("stException").count() == 0
