"""Browser: open the app, upload a photo, see the species."""

import re

import pytest

from tests.browser.conftest import screenshot, select_model, wait_for_app
from tests.imagegen import class_image

pytestmark = pytest.mark.browser


def test_identify_upload_shows_species(page, app_url, tmp_path):
    photo = tmp_path / "track.jpg"
    class_image("bright", seed=200, size=(320, 240)).save(photo, quality=92)
    page.goto(app_url)
    wait_for_app(page)
    select_model(page, "Tiny test_resnet")
    page.locator('[data-testid="stFileUploader"] input[type="file"]').first.set_input_files(str(photo))
    page.get_by_text(re.compile(r"bobcat \(\d+%\)")).first.wait_for()
    wait_for_app(page)
    screenshot(page, "identify")
