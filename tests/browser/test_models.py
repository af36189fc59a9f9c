"""Browser: the Models page lists the installed models and explains a slot without weights."""

import pytest
from playwright.sync_api import expect

from tests.browser.conftest import screenshot, wait_for_app

pytestmark = pytest.mark.browser


def test_models_page_lists_models(page, app_url):
    page.goto(f"{app_url}/models")
    wait_for_app(page)
    page.get_by_role("heading", name="Models").first.wait_for()
    table = page.get_by_test_id("stDataFrame").first
    table.wait_for()
    # The bundled default and a tiny test model are listed; the slot says how to get weights.
    page.get_by_text("Model card: General animals (ImageNet, EfficientNet-Lite0)").wait_for()
    page.get_by_text("Model card: Tiny test_resnet test model").wait_for()
    page.get_by_text("has no weights yet").first.wait_for()
    # Sidebar navigation and the model picker are there on a deep link too.
    expect(page.get_by_test_id("stSidebarNav").get_by_text("Identify")).to_have_count(1)
    assert page.get_by_test_id("stException").count() == 0
    screenshot(page, "models")
