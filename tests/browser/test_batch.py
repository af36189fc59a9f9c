"""Browser: point the Batch page at a folder on the server, see the results and the downloads."""

import re
import zipfile

import pytest
from playwright.sync_api import expect

from tests.browser.conftest import next_frame, screenshot, wait_for_app
from tests.imagegen import class_image, write

pytestmark = pytest.mark.browser


def test_batch_folder_shows_table_and_downloads(page, app_url, browser_workdir):
    folder = browser_workdir / "batch-frames"
    styles = ["dark", "bright", "striped"]
    for i in range(9):
        write(folder / "cam1" / f"IMG_{i:04d}.jpg", class_image(styles[i % 3], 300 + i, (320, 240)))
    write(folder / "cam1" / "corrupt.jpg", b"\xff\xd8\xff not really a jpeg")
    # The default model (bundled EfficientNet-Lite0 ImageNet weights) is used: any model will do
    # for the page's plumbing.
    page.goto(f"{app_url}/batch")
    page.get_by_role("button", name="Classify").wait_for()
    wait_for_app(page)
    page.get_by_label("Folder", exact=True).fill(str(folder))
    page.get_by_label("Folder", exact=True).press("Enter")
    wait_for_app(page)
    page.get_by_role("button", name="Classify").click()
    page.get_by_text("Download CSV").wait_for()
    wait_for_app(page)
    assert page.get_by_test_id("stMetric").filter(has_text="Files").inner_text().endswith("10")
    hide = page.get_by_test_id("stCheckbox").filter(has_text=re.compile(r"Hide \d+ likely empty")).first
    hide.click()  # show every row, also the likely-empty ones (hidden by default, as wildid.defaults says)
    wait_for_app(page)
    expect(page.get_by_test_id("stDataFrame").first).to_be_visible()
    expect(page.get_by_test_id("stDownloadButton")).to_have_count(2)
    page.set_viewport_size({"width": 1280, "height": 2000})  # the app scrolls inside its own pane
    wait_for_app(page)
    next_frame(page)
    screenshot(page, "batch")

    # Camtrap DP: the export button builds the package, says what to fill in, and downloads a zip
    page.get_by_role("button", name="Export Camtrap DP").click()
    page.get_by_text("Download Camtrap DP (zip)").wait_for()
    wait_for_app(page)
    page.get_by_text(re.compile(r"latitude / longitude \(WGS84\) of cam1")).first.wait_for()
    with page.expect_download() as download_info:
        page.get_by_text("Download Camtrap DP (zip)").click()
    saved = browser_workdir / "camtrap-dp.zip"
    download_info.value.save_as(saved)
    with zipfile.ZipFile(saved) as archive:
        assert sorted(archive.namelist()) == ["datapackage.json", "deployments.csv", "media.csv", "observations.csv"]
        media = archive.read("media.csv").decode().splitlines()
    assert len(media) == 1 + 9  # header + the nine readable frames
    page.get_by_text("Download Camtrap DP (zip)").scroll_into_view_if_needed()
    wait_for_app(page)
    screenshot(page, "batch-camtrap-dp")
