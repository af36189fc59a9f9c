"""Browser: train a tiny linear model on a generated image folder, watch the curves, see it saved."""

import re

import pytest
from playwright.sync_api import expect

from tests.browser.conftest import choose_option, next_frame, scaled, screenshot, wait_for_app
from tests.imagegen import CLASS_STYLES, class_image

pytestmark = pytest.mark.browser


def test_train_tiny_linear_model(page, app_url, browser_workdir, browser_models_root):
    data = browser_workdir / "train-data"
    for label, style in CLASS_STYLES.items():
        (data / label).mkdir(parents=True, exist_ok=True)
        for seed in range(8):
            class_image(style, seed=300 + seed, size=(160, 120)).save(data / label / f"{seed}.jpg", quality=90)

    # Enter through the app's front page and the sidebar navigation, as a user would.
    page.goto(app_url)
    page.get_by_test_id("stSidebar").get_by_test_id("stSelectbox").wait_for(timeout=scaled(120_000))
    wait_for_app(page)
    page.get_by_test_id("stSidebarNav").get_by_text("Train", exact=True).click()
    page.get_by_label("Labelled data (folder or CSV on the server)").wait_for()
    wait_for_app(page)
    page.get_by_label("Labelled data (folder or CSV on the server)").fill(str(data))
    page.get_by_label("New model name").fill("browser-trained")
    page.get_by_label("Validation folds (0 = none)").fill("4")
    page.get_by_label("Epochs (0 = default for the mode)").fill("30")
    page.get_by_text("Advanced").click()
    page.get_by_label("Any timm architecture (overrides the choice above)").fill("test_resnet")
    weights = page.get_by_role("combobox", name="Pretrained weights")
    choose_option(page, weights, "none (random init", "Pretrained weights")
    wait_for_app(page)
    # A rerun that lands between choosing and submitting resets the form's unsent choices: the
    # button is pressed only with the choice still in place.
    expect(weights).to_have_value(re.compile("none"), timeout=scaled(5_000))
    page.get_by_role("button", name="Train").click()

    page.get_by_text("Saved model browser-trained").wait_for(timeout=scaled(180_000))
    wait_for_app(page)
    assert (browser_models_root / "browser-trained" / "model.safetensors").is_file()
    assert page.get_by_text("Mean accuracy").count() >= 1
    # the default head (logistic regression) has no epochs to plot: the confusion matrix only
    expect(page.locator(".js-plotly-plot")).to_have_count(1, timeout=scaled(30_000))
    assert page.get_by_text("Calibration error (ECE)").count() >= 1
    expect(page.get_by_text("Confusion matrix (held-out folds)")).to_have_count(1)
    # the sidebar picker lists the new model right away
    page.get_by_test_id("stSidebar").get_by_test_id("stSelectbox").click()
    expect(page.get_by_role("option").filter(has_text="browser-trained")).to_have_count(1)
    page.keyboard.press("Escape")
    page.set_viewport_size({"width": 1280, "height": 1900})  # the app scrolls inside its own container
    wait_for_app(page)
    next_frame(page)
    screenshot(page, "train")
