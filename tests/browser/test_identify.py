"""Browser: open the app, upload a photo, see the species name and its facts card."""

import re

import pytest
from playwright.sync_api import expect

from tests.browser.conftest import scaled, screenshot, select_model, wait_for_app
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
    expect(page.locator(".js-plotly-plot")).to_have_count(1)
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
    page.set_default_timeout(scaled(60_000))
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


TAXA_MODEL_TITLE = "Tiny taxonomy test model"


@pytest.fixture()
def taxa_model(browser_models_root):
    """The tiny model with a 0.6 threshold and a hand-made taxonomy beside it (served by the running app)."""
    import shutil

    from wildid.cards import load_card

    folder = browser_models_root / "tiny-taxa"
    if not folder.is_dir():
        shutil.copytree(browser_models_root / "tiny", folder)
        load_card(folder).replace(name="tiny-taxa", title=TAXA_MODEL_TITLE, threshold=0.6).save(folder)
        (folder / "taxonomy.toml").write_text(
            '[classes]\n'
            '"gray fox" = { species = "Urocyon cinereoargenteus", genus = "Urocyon", family = "Canidae", order = "Carnivora", class = "Mammalia" }\n'
            '"coyote" = { species = "Canis latrans", genus = "Canis", family = "Canidae", order = "Carnivora", class = "Mammalia" }\n'
            '"bobcat" = { species = "Lynx rufus", genus = "Lynx", family = "Felidae", order = "Carnivora", class = "Mammalia" }\n'
            '[names]\n"Canidae" = "dogs, wolves and foxes"\n', encoding="utf-8")
    return TAXA_MODEL_TITLE


def test_identify_rolled_up_answer_shows_group_rank_closest_classes_and_members(page, app_url, tmp_path, taxa_model):
    import numpy as np
    from PIL import Image

    # Between the tiny model's gray fox (dark) and coyote (striped) pictures: neither class is sure, the family is.
    dark = np.asarray(class_image("dark", seed=300, size=(160, 120)), float)
    striped = np.asarray(class_image("striped", seed=300, size=(160, 120)), float)
    photo = tmp_path / "between.png"
    Image.fromarray(np.clip(0.3 * dark + 0.7 * striped, 0, 255).astype(np.uint8)).save(photo)
    page.set_viewport_size({"width": 1280, "height": 1600})
    page.goto(app_url)
    wait_for_app(page)
    select_model(page, taxa_model)
    page.get_by_text(f"Model card: {taxa_model}").first.wait_for()
    page.locator('[data-testid="stFileUploader"] input[type="file"]').first.set_input_files(str(photo))
    # The group, its rank and its summed probability; then the closest classes.
    page.get_by_text(re.compile(r"^Family: dogs, wolves and foxes \(Canidae\), 9\d%$")).first.wait_for()
    wait_for_app(page)
    closest = page.get_by_text(re.compile(r"Closest classes: (gray fox|coyote) \(\d+%\), (gray fox|coyote) \(\d+%\)\.$"))
    assert closest.count() == 1
    assert page.get_by_text(re.compile(r"^Uncertain:")).count() == 0
    page.get_by_role("heading", name="About this family").wait_for()
    # What the group is, and the members a hiker meets, each with its own facts one click away.
    page.get_by_text("Dog family: wolves, coyotes, foxes and dogs · Canidae").first.wait_for()
    page.get_by_text(re.compile(r"^Members you may meet in North America or Europe")).wait_for()
    titles = page.locator('[data-testid="stExpander"] summary')
    assert titles.filter(has_text="Grey wolf · Canis lupus").count() == 1
    assert titles.filter(has_text="Bobcat · Lynx rufus").count() == 0  # a cat is no member of the dog family
    wolf = page.get_by_test_id("stExpander").filter(has=page.locator("summary", has_text="Grey wolf · Canis lupus"))
    titles.filter(has_text="Grey wolf · Canis lupus").click()
    wolf.get_by_text(re.compile(r"Habitat:")).first.wait_for()
    wolf.get_by_text(re.compile(r"Print: Front about 10-14 cm long")).first.wait_for()
    assert page.get_by_test_id("stException").count() == 0
    page.set_viewport_size({"width": 1280, "height": 2200})
    page.get_by_text(re.compile(r"^Family: dogs, wolves and foxes")).first.scroll_into_view_if_needed()
    wait_for_app(page)
    screenshot(page, "identify-rollup")


def test_track_photo_on_the_shipped_track_model_shows_the_family_and_its_species(page, app_url):
    """The bundled real footprint (a held-out test photo) through models/tracks-families: the family,
    then the family's species a hiker may meet, with print sizes and toe counts to finish by eye."""
    page.set_viewport_size({"width": 1280, "height": 1800})
    page.goto(app_url)
    wait_for_app(page)
    select_model(page, "Animal tracks: mammal family")
    page.get_by_text("Model card: Animal tracks: mammal family").first.wait_for()
    page.get_by_text("Example", exact=True).first.click()
    wait_for_app(page)
    box = page.get_by_role("combobox", name="Example")
    box.click()
    box.fill("track photo felid")
    page.keyboard.press("Enter")
    page.get_by_text(re.compile(r"^felid \(\d+%\)$")).first.wait_for(timeout=scaled(120_000))
    wait_for_app(page)
    assert page.get_by_text("Not something this model was trained on").count() == 0
    page.get_by_text("About this animal").wait_for()
    page.get_by_text(re.compile(r"Cat family · Felidae")).first.wait_for()
    page.get_by_text(re.compile(r"^Members you may meet in North America or Europe")).first.wait_for()
    page.get_by_test_id("stDataFrame").first.wait_for()  # species, toes, print size side by side
    titles = page.locator('[data-testid="stExpander"] summary')
    assert titles.filter(has_text="Canada lynx · Lynx canadensis").count() == 1
    assert titles.filter(has_text="Grey wolf · Canis lupus").count() == 0  # a dog is no member of the cat family
    cougar = page.get_by_test_id("stExpander").filter(has=page.locator("summary", has_text="Cougar · Puma concolor"))
    titles.filter(has_text="Cougar · Puma concolor").click()
    cougar.get_by_text(re.compile(r"Print: Front about 7\.5-10\.5 cm long")).first.wait_for()
    cougar.get_by_text(re.compile(r"Toes: 4 front, 4 hind")).first.wait_for()
    assert page.get_by_test_id("stException").count() == 0
    screenshot(page, "identify-track-family")
