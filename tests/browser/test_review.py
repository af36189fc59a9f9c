"""Browser: label three images with the keyboard, reload, the labels are still there."""

from __future__ import annotations

import pandas as pd
import pytest

from tests.browser.conftest import screenshot, wait_for_app
from tests.test_review import make_results
from wildid import review

pytestmark = pytest.mark.browser


def wait_progress(page, done: int, pos: int, total: int = 6) -> None:
    """Until the page shows ``done`` reviewed and the buttons of position ``pos`` are drawn."""
    page.get_by_text(f"{done} of {total} reviewed in this queue").first.wait_for()
    page.locator(f".st-key-rv_c0_{pos} button").wait_for()
    wait_for_app(page)


def test_review_keyboard_labels_survive_reload(page, app_url, browser_workdir):
    folder = browser_workdir / "review-run"
    folder.mkdir()
    results = make_results(folder)
    frame = review.read_results(results)
    page.goto(f"{app_url}/review?results={results}&reviewer=ana&queue=below%20threshold")
    wait_for_app(page)
    wait_progress(page, 0, pos=0)
    page.get_by_text("Image 1 of 6").wait_for()

    # typing in the label search box must not fire the shortcuts (b = back, s = skip, digits = labels)
    search = page.get_by_role("combobox", name="Any other label (type to search, or type a new one)")
    search.click()
    search.type("bobs 12")
    page.keyboard.press("Escape")
    search.evaluate("el => el.blur()")
    wait_for_app(page)
    assert not review.journal_path(results).exists()
    page.get_by_text("Image 1 of 6").wait_for()

    # queue "below threshold" (status review), least confident first: rows 11, 10, 9
    for done, key in enumerate(["1", "2", "3"], start=1):
        page.keyboard.press(key)
        wait_progress(page, done, pos=done)
    page.get_by_text("Image 4 of 6").wait_for()
    entries = pd.read_csv(review.journal_path(results))
    assert list(entries["path"]) == [frame.loc[i, "path"] for i in (11, 10, 9)]
    assert list(entries["true_label"]) == ["gray fox", "bobcat", "coyote"]
    assert set(entries["reviewer"]) == {"ana"}

    page.reload()
    wait_for_app(page)
    wait_progress(page, 3, pos=3)  # replayed from the journal
    page.get_by_text("Image 4 of 6").wait_for()  # resumes at the first unreviewed image
    page.keyboard.press("b")  # back to the third image: shown as reviewed
    page.get_by_text("Image 3 of 6").wait_for()
    page.get_by_text("Reviewed as coyote by ana").wait_for()
    wait_for_app(page)
    assert len(pd.read_csv(review.journal_path(results))) == 3
    screenshot(page, "review")
