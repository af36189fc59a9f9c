"""Browser: point the Batch page at a folder on the server, see the results and the downloads."""

import pytest

from tests.browser.conftest import screenshot, wait_for_app
from tests.imagegen import class_image, write

pytestmark = pytest.mark.browser


def test_batch_folder_shows_table_and_downloads(page, app_url, browser_workdir):
    folder = browser_workdir / "batch-frames"
    styles = ["dark", "bright", "striped"]
    for i in range(9):
        write(folder / "cam1" / f"IMG_{i:04d}.jpg", class_image(styles[i % 3], 300 + i, (320, 240)))
    write(folder / "cam1" / "corrupt.jpg", b"\xff\xd8\xff not really a jpeg")
    # Open the app at its root: a deep link (/batch) is served by Streamlit's pages/ auto-discovery
    # without app.py's frame, so navigate through the sidebar.  The default model (bundled
    # EfficientNet-Lite0 ImageNet weights) is used: any model will do for the page's plumbing.
    page.goto(app_url)
    wait_for_app(page)
    # Let the first page finish loading its model: a second script thread importing timm at the
    # same moment (Streamlit fast reruns) can hit timm's circular import half-way.
    page.get_by_test_id("stFileUploader").first.wait_for()
    wait_for_app(page)
    page.get_by_test_id("stSidebarNav").get_by_text("Batch", exact=True).click()
    page.get_by_role("button", name="Classify").wait_for()
    wait_for_app(page)
    page.get_by_label("Folder", exact=True).fill(str(folder))
    page.get_by_label("Folder", exact=True).press("Enter")
    wait_for_app(page)
    page.get_by_role("button", name="Classify").click()
    page.get_by_text("Download CSV").wait_for()
    wait_for_app(page)
    assert page.get_by_test_id("stMetric").filter(has_text="Files").inner_text().endswith("10")
    page.get_by_text("Hide", exact=False).first.click()  # show every row, also the likely-empty ones
    wait_for_app(page)
    assert page.get_by_test_id("stDataFrame").count() >= 1
    assert page.get_by_test_id("stDownloadButton").count() == 2
    page.set_viewport_size({"width": 1280, "height": 2000})  # the app scrolls inside its own pane
    wait_for_app(page)
    page.wait_for_timeout(800)
    screenshot(page, "batch")
