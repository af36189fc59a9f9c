"""Browser: open the app, upload a photo, see the species name and its facts card."""

import re

import pytest

from tests.browser.conftest import screenshot, select_model, wait_for_app
from tests.imagegen import class_image

pytestmark = pytest.mark.browser


def test_identify_upload_shows_species_and_facts(page, app_url, tmp_path):
    photo = tmp_path / "track.jpg"
    class_image("bright", seed=200, size=(320, 240)).save(photo, quality=92)
    page.goto(app_url)
    wait_for_app(page)
    select_model(page, "Tiny test_resnet")
    page.get_by_text("Model card: Tiny test_resnet").first.wait_for()
    page.locator('[data-testid="stFileUploader"] input[type="file"]').first.set_input_files(str(photo))
    page.get_by_text(re.compile(r"^bobcat \(\d+%\)$")).first.wait_for()
    wait_for_app(page)
    # The facts card for the top-1 species.
    page.get_by_text("About this animal").wait_for()
    page.get_by_text(re.compile(r"Bobcat · Lynx rufus")).first.wait_for()
    page.get_by_text(re.compile(r"Habitat:")).first.wait_for()
    page.locator(".js-plotly-plot").first.wait_for()
    assert page.locator(".js-plotly-plot").count() == 1
    assert page.get_by_test_id("stException").count() == 0
    # Streamlit scrolls inside its own container, so a taller window shows the facts card too.
    page.set_viewport_size({"width": 1280, "height": 1500})
    wait_for_app(page)
    screenshot(page, "identify")


def test_identify_on_a_phone_width_screen(browser, app_url, tmp_path):
    photo = tmp_path / "night.jpg"
    class_image("dark", seed=201, size=(320, 240)).save(photo, quality=92)
    context = browser.new_context(viewport={"width": 390, "height": 844}, device_scale_factor=2)
    page = context.new_page()
    page.set_default_timeout(60_000)
    try:
        page.goto(app_url)
        wait_for_app(page)
        page.locator('[data-testid="stFileUploader"] input[type="file"]').first.set_input_files(str(photo))
        # A generated dark frame on the general model: any of the three verdicts (an out-of-scope
        # answer keeps its chart folded away, so the verdict is what to wait for).
        page.get_by_text(re.compile(r"^(Uncertain: .*|.+ \(\d+%\)|Not something this model was trained on.*)$")).first.wait_for()
        wait_for_app(page)
        page.set_viewport_size({"width": 390, "height": 1800})
        assert page.get_by_test_id("stException").count() == 0
        # Nothing wider than the screen: no horizontal scrolling on a phone.
        assert page.evaluate("document.documentElement.scrollWidth") <= 390 + 1
        screenshot(page, "identify-phone")
    finally:
        context.close()


def test_drawn_crop_changes_the_answer_only_after_the_box_is_drawn(page, app_url, tmp_path):
    """Crop mode on: the full photo's answer stays until a box is dragged over the bright half."""
    import numpy as np
    from PIL import Image

    left = np.asarray(class_image("dark", seed=210, size=(320, 240)))
    right = np.asarray(class_image("bright", seed=211, size=(320, 240)))
    photo = tmp_path / "half.png"
    Image.fromarray(np.concatenate([left, left, right], axis=1)).save(photo)  # 960x240, mostly dark
    page.goto(app_url)
    wait_for_app(page)
    select_model(page, "Tiny test_resnet")
    page.locator('[data-testid="stFileUploader"] input[type="file"]').first.set_input_files(str(photo))
    answer = page.get_by_test_id("stAlertContentSuccess").first
    answer.wait_for()
    wait_for_app(page)
    full = answer.inner_text()
    assert full.startswith("gray fox (")
    page.get_by_text("Options: crop").click()
    page.get_by_text("Crop: draw a box on the photo").click()
    page.get_by_text("Drag a box over the animal").wait_for()
    wait_for_app(page)
    # Crop mode alone changes nothing: the same answer, the same percentage.
    assert page.get_by_test_id("stAlertContentSuccess").first.inner_text() == full
    chart = page.locator(".js-plotly-plot").first
    chart.scroll_into_view_if_needed()
    drag = chart.locator(".nsewdrag").first
    box = drag.bounding_box()
    # Over the right third (the bright part), well inside the photo.
    x0, x1 = box["x"] + box["width"] * 0.72, box["x"] + box["width"] * 0.97
    y0, y1 = box["y"] + box["height"] * 0.15, box["y"] + box["height"] * 0.85
    page.mouse.move(x0, y0)
    page.mouse.down()
    for step in range(1, 11):
        page.mouse.move(x0 + (x1 - x0) * step / 10, y0 + (y1 - y0) * step / 10)
    page.mouse.up()
    page.get_by_text(re.compile(r"^bobcat \(\d+%\)$")).first.wait_for()
    wait_for_app(page)
    page.get_by_text(re.compile(r"half\.png · 960x240 · crop")).first.wait_for()
    assert page.get_by_test_id("stException").count() == 0
    screenshot(page, "identify-crop")
