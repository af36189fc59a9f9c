"""Browser: evaluate a results file + reviewed journal, see the confusion-matrix heatmap, click a cell."""

import re

import pytest
from playwright.sync_api import expect

from tests.browser.conftest import screenshot, wait_for_app
from tests.test_dashboard_page import make_results_with_journal

pytestmark = pytest.mark.browser


def test_dashboard_heatmap_and_cell_click(page, app_url, browser_workdir):
    work = browser_workdir / "dashboard"
    work.mkdir(exist_ok=True)
    results = make_results_with_journal(work)
    page.set_viewport_size({"width": 1280, "height": 3000})  # the whole dashboard in view: clicks land, one screenshot
    page.goto(app_url + "/dashboard")
    wait_for_app(page)
    page.get_by_text("Results CSV on the server + its reviewed journal").click()
    wait_for_app(page)
    box = page.get_by_label("Results CSV; its journal <name>.reviewed.csv lies beside it")
    box.fill(str(results))
    box.press("Enter")
    wait_for_app(page)
    page.get_by_role("button", name="Evaluate").click()
    wait_for_app(page)
    heatmap = page.locator(".js-plotly-plot .heatmaplayer").first
    heatmap.wait_for()
    expect(page.locator(".js-plotly-plot .heatmaplayer")).to_have_count(1)
    chart = page.locator(".js-plotly-plot").filter(has=page.locator(".heatmaplayer")).first
    assert "Confusion matrix: tiny" in chart.inner_text()
    page.get_by_text("true bobcat → predicted gray fox").first.wait_for()  # the cell picker's first error cell
    page.get_by_text("frame_3.jpg").first.wait_for()

    # Click the (true coyote, predicted bobcat) cell: its thumbnail appears instead.
    # Find the cell from the axis tick labels (row order follows the model card's classes).
    def centre(axis: str, text: str) -> float:
        tick = chart.locator(f".{axis}tick text").filter(has_text=text).first.bounding_box()
        return tick["x"] + tick["width"] / 2 if axis == "x" else tick["y"] + tick["height"] / 2

    x, y = centre("x", "bobcat"), centre("y", "coyote")
    page.mouse.move(x, y)
    chart.get_by_text("predicted: bobcat").first.wait_for()  # the hover label names the cell
    page.mouse.click(x, y)
    wait_for_app(page)
    page.get_by_text(re.compile(r"true coyote → predicted bobcat: 1 images")).first.wait_for()
    page.get_by_text("frame_5.jpg").first.wait_for()
    page.set_viewport_size({"width": 1280, "height": 1500})  # README picture: metrics, matrix, thumbnails
    wait_for_app(page)
    screenshot(page, "dashboard")
