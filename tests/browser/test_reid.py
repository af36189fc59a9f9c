"""Browser: the Re-ID page matches an uploaded coat photo against a gallery, side by side."""

import re

import pytest
from playwright.sync_api import expect

from tests.browser.conftest import screenshot, wait_for_app
from tests.reidgen import coat_view, make_handcrafted_model, write_individuals

pytestmark = pytest.mark.browser
MODEL = "coat-handcrafted"


@pytest.fixture()
def lynx_gallery(browser_models_root, browser_workdir, tmp_path):
    from wildid import reid

    if not (browser_models_root / MODEL).is_dir():
        make_handcrafted_model(browser_models_root, MODEL)
    root = browser_workdir / "galleries"  # the server's galleries root (under its allowed root)
    if "lynx" not in reid.list_galleries(root):
        embedder = reid.load_embedder(browser_models_root / MODEL)
        gallery = reid.Gallery.create("lynx", embedder.card, root=root)
        reid.add_folder(gallery, write_individuals(tmp_path / "known", range(5), range(3), size=160), embedder)
    return root / "lynx"


def test_reid_upload_shows_top_matches(page, app_url, lynx_gallery, tmp_path):
    photo = tmp_path / "lynx-query.jpg"
    coat_view(3, 40, size=160, rotate=12.0, brighten=0.9).save(photo, quality=92)
    page.goto(app_url + "/reid")
    wait_for_app(page)
    page.get_by_text("Re-identify an individual").first.wait_for()
    page.locator('[data-testid="stFileUploader"] input[type="file"]').first.set_input_files(str(photo))
    page.get_by_text(re.compile(r"^lynx-003 \(similarity")).first.wait_for()
    page.get_by_text("Top matches").first.wait_for()
    wait_for_app(page)
    page.get_by_text("1. lynx-003").first.wait_for()  # captions appear once the images have loaded
    page.set_viewport_size({"width": 1280, "height": 1500})  # the matches sit below the fold
    page.get_by_role("button", name="Register as new individual").wait_for()
    page.get_by_role("button", name="Confirm match").first.wait_for()
    wait_for_app(page)
    # Query + 4 gallery images, all decoded.
    page.wait_for_function(
        "() => { const imgs = [...document.querySelectorAll('[data-testid=\"stImage\"] img')];"
        " return imgs.length >= 5 && imgs.every(i => i.complete && i.naturalWidth > 0); }",
        timeout=60_000,
    )
    screenshot(page, "reid")


def test_two_galleries_in_a_row(page, app_url, browser_workdir):
    """Creating a gallery, then another, selects each in turn (was StreamlitWidgetAlreadyInstantiatedError)."""
    page.goto(app_url + "/reid")
    wait_for_app(page)
    page.get_by_text("Re-identify an individual").first.wait_for()
    for name in ("wolves-north", "wolves-south"):
        wait_for_app(page)
        field = page.get_by_label("Gallery name")
        for _ in range(5):  # once a gallery exists the form sits in the "New gallery" expander
            if field.is_visible() and field.is_editable():
                break
            page.get_by_text("New gallery", exact=True).first.click()
            page.wait_for_timeout(300)
            wait_for_app(page)
        expect(field).to_be_editable()
        field.fill(name)
        model_box = page.get_by_role("combobox", name="Embedding model")
        model_box.click()
        model_box.fill("Generic")
        page.keyboard.press("Enter")
        expect(model_box).to_have_value(re.compile("^Generic re-ID embedding"))
        page.get_by_role("button", name="Create gallery").click()
        wait_for_app(page)
        gallery_box = page.get_by_role("combobox", name="Gallery")
        expect(gallery_box).to_have_value(name, timeout=60_000)
        assert page.get_by_test_id("stException").count() == 0
    assert (browser_workdir / "galleries" / "wolves-north" / "gallery.json").is_file()
    assert (browser_workdir / "galleries" / "wolves-south" / "gallery.json").is_file()
    # Works out of the box with the packaged backbone, labelled as a starting point, not a trained model.
    page.get_by_text("This gallery uses the generic starting point").first.wait_for()
