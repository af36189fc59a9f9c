"""Browser: a training run is a server-side job; reloading the Train page mid-run (or opening it
in another tab) shows the same run's live curves and stop button, and Stop still stops it."""

from __future__ import annotations

import re

import pytest
from playwright.sync_api import expect

from tests.browser.conftest import wait_for_app
from tests.browser.test_first_day import choose
from tests.imagegen import CLASS_STYLES, class_image

pytestmark = pytest.mark.browser


def epoch_of(page) -> int:
    text = page.get_by_text(re.compile(r"final model on all data: epoch \d+/\d+")).first.inner_text()
    return int(re.search(r"epoch (\d+)/", text).group(1))


@pytest.mark.timeout(900)
def test_reload_mid_run_reattaches_to_the_same_run(page, browser, app_url, browser_workdir, browser_models_root):
    data = browser_workdir / "reload-data"
    for label, style in CLASS_STYLES.items():
        (data / label).mkdir(parents=True, exist_ok=True)
        for seed in range(8):
            class_image(style, seed=500 + seed, size=(160, 120)).save(data / label / f"{seed}.jpg", quality=90)

    page.goto(f"{app_url}/train")
    page.get_by_label("Labelled data (folder or CSV on the server)").wait_for(timeout=120_000)
    wait_for_app(page)
    page.get_by_label("Labelled data (folder or CSV on the server)").fill(str(data))
    page.get_by_label("New model name").fill("reload-model")
    page.get_by_test_id("stRadio").filter(has_text="Mode").get_by_text("finetune", exact=True).click()
    page.get_by_label("Validation folds (0 = none)").fill("0")
    page.get_by_label("Epochs (0 = default for the mode)").fill("500")  # long enough to reload mid-run
    page.get_by_text("Advanced").click()
    page.get_by_label("Any timm architecture (overrides the choice above)").fill("test_resnet")
    choose(page, "Pretrained weights", "none (random init, for tests)")
    page.get_by_role("button", name="Train").click()

    stop = page.get_by_role("button", name="Stop training")
    expect(stop).to_be_visible(timeout=180_000)
    expect(page.get_by_text(re.compile(r"final model on all data: epoch \d+/500"))).to_be_visible(timeout=180_000)
    expect(page.locator(".js-plotly-plot")).to_have_count(1, timeout=60_000)  # the live curves
    assert "run=reload-model" in page.url
    before = epoch_of(page)

    # Reload: the same run, live (its epoch count goes on from where it was), with its stop button
    page.reload()
    expect(page.get_by_role("heading", name="Run: reload-model")).to_be_visible(timeout=60_000)
    expect(page.get_by_role("button", name="Stop training")).to_be_visible(timeout=60_000)
    expect(page.locator(".js-plotly-plot")).to_have_count(1, timeout=60_000)
    expect(page.get_by_text(re.compile(r"final model on all data: epoch \d+/500"))).to_be_visible(timeout=60_000)
    assert epoch_of(page) >= before
    page.wait_for_function(  # the curves keep coming: the page polls the server-side run
        f"""() => {{ const m = document.body.innerText.match(/final model on all data: epoch (\\d+)\\/500/);
                    return m && Number(m[1]) > {epoch_of(page)}; }}""", timeout=120_000)

    # Another tab (its own session, no run in its URL) finds the running run too
    other_context = browser.new_context(viewport={"width": 1280, "height": 900})
    try:
        other = other_context.new_page()
        other.goto(f"{app_url}/train")
        expect(other.get_by_role("heading", name="Run: reload-model")).to_be_visible(timeout=120_000)
        expect(other.get_by_role("button", name="Stop training")).to_be_visible(timeout=60_000)
    finally:
        other_context.close()

    # Stop, from the reloaded page: the run ends and nothing is written
    page.get_by_role("button", name="Stop training").click()
    expect(page.get_by_text("training stopped by the user; nothing was written")).to_be_visible(timeout=180_000)
    assert not (browser_models_root / "reload-model").exists()
