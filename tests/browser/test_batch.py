"""Browser: point the Batch page at a folder on the server, see the results and the downloads."""

import re
import zipfile

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
    hide = page.get_by_test_id("stCheckbox").filter(has_text=re.compile(r"Hide \d+ likely empty"))
    if hide.count():
        hide.first.click()  # show every row, also the likely-empty ones
    wait_for_app(page)
    assert page.get_by_test_id("stDataFrame").count() >= 1
    assert page.get_by_test_id("stDownloadButton").count() == 2
    page.set_viewport_size({"width": 1280, "height": 2000})  # the app scrolls inside its own pane
    wait_for_app(page)
    page.wait_for_timeout(800)
    screenshot(page, "batch")

    # Camtrap DP: the export button builds the package, says what to fill in, and downloads a zip
    page.get_by_role("button", name="Export Camtrap DP").click()
    page.get_by_text("Download Camtrap DP (zip)").wait_for()
    wait_for_app(page)
    assert page.get_by_text(re.compile(r"latitude / longitude \(WGS84\) of cam1")).count() >= 1
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
