"""Browser: a biologist's first day, end to end on a generated fixed-camera folder.

batch with the bundled general model -> confirm the likely-empty pages (tick the animals) ->
label the rest with the keyboard using the project's own labels -> train a tiny model on the
reviewed frames -> rerun batch with it -> Dashboard: its confusion matrix, the empty-score ROC and
the warning that it was evaluated on its own training frames.  Every hand-off is a button.
Screenshots go to docs/screenshots/first-day-*.png for the README's walkthrough.
"""

from __future__ import annotations

import re

import pytest
from playwright.sync_api import expect

from tests.browser.conftest import screenshot, wait_for_app
from tests.camgen import fixed_camera_folder
from wildid import project, review

pytestmark = pytest.mark.browser
LONG = 300_000  # ms: batch, training and reruns on a loaded 2-core machine


def choose(page, label: str, option: str) -> None:
    """Pick ``option`` (its full text) in a select box: filter the list by typing, click the option,
    and wait until the box shows it (typed text alone would also 'contain' it)."""
    box = page.get_by_role("combobox", name=label)
    for _ in range(5):
        box.click()
        box.fill(option[:12])
        target = page.get_by_role("option", name=option)
        try:
            target.click(timeout=10_000)
            expect(box).to_have_value(option, timeout=10_000)
            return
        except AssertionError:
            continue
        except Exception:  # noqa: BLE001 - the list re-rendered under the pointer: try again
            page.keyboard.press("Escape")
    raise AssertionError(f"could not choose {option!r} in {label!r} (shows {box.input_value()!r})")


def use_torch(page) -> None:
    """The Batch page's back end: torch (ONNX would first export the model)."""
    page.get_by_test_id("stRadio").filter(has_text="Back end").get_by_text("torch", exact=True).click()
    wait_for_app(page)


def classify(page, folder, n_files: int) -> None:
    use_torch(page)
    folder_box = page.get_by_label("Folder", exact=True)
    if folder_box.input_value() != str(folder):
        folder_box.fill(str(folder))
        folder_box.press("Enter")
        wait_for_app(page)
    page.get_by_role("button", name="Classify").click()
    # The run's own progress line: the hand-off buttons of an earlier run may already be showing.
    expect(page.get_by_text(re.compile(rf"^{n_files}/{n_files} files"))).to_be_visible(timeout=LONG)
    expect(page.get_by_role("button", name="Review these results")).to_be_visible(timeout=LONG)
    wait_for_app(page)


def unfocus(page) -> None:
    """Shortcuts act on the page, not on a focused field or box."""
    page.evaluate("() => document.activeElement && document.activeElement.blur()")


@pytest.mark.timeout(1500)  # the whole day: two batch runs, ~60 review actions, a training run
def test_first_day_loop(page, app_url, browser_workdir):
    folder = browser_workdir / "tunnel"
    truth = fixed_camera_folder(folder, cameras=3, frames=20, empty_share=0.5, small_share=0.3, seed=5)
    animals = sum(label != "empty" for label in truth.values())
    page.set_viewport_size({"width": 1400, "height": 1000})

    # 1. Batch: the folder, with the bundled general model; results go to the folder's project
    page.goto(f"{app_url}/batch")
    page.get_by_role("button", name="Classify").wait_for(timeout=120_000)
    wait_for_app(page)
    classify(page, folder, len(truth))
    proj = project.for_folder(folder, browser_workdir)
    results = proj.results_path("general-animals")
    assert results.is_file() and len(review.read_results(results)) == len(truth)
    expect(page.get_by_text(str(proj.path)).first).to_be_visible()
    screenshot(page, "first-day-1-batch")

    # 2. Review: declare the project's labels once, then the likely-empty pages
    page.get_by_role("button", name="Review these results").click()
    expect(page.get_by_role("heading", name="Review predictions")).to_be_visible(timeout=60_000)
    wait_for_app(page)
    labels_box = page.get_by_label("Labels (comma-separated or one per line)")
    labels_box.fill("vole, stoat")
    unfocus(page)
    page.get_by_role("button", name="Save labels").click()
    expect(page.get_by_text("Labels of this project (3)")).to_be_visible(timeout=60_000)
    wait_for_app(page)

    presses = clicks = pages = confirmed = 0
    heading = page.get_by_role("heading", name=re.compile(r"Likely empty: \d+ frames to confirm"))
    expect(heading).to_be_visible(timeout=60_000)
    while heading.count():
        left = int(re.search(r"(\d+) frames", heading.inner_text()).group(1))
        boxes = page.get_by_test_id("stCheckbox").filter(has_text="animal ·")
        expect(boxes).to_have_count(min(24, left), timeout=60_000)  # the whole page is drawn
        names = [boxes.nth(i).inner_text().split("·", 1)[1].strip() for i in range(boxes.count())]
        for i, rel in enumerate(names):
            if truth[rel] != "empty":
                boxes.nth(i).click()
                clicks += 1
        confirmed += sum(truth[rel] == "empty" for rel in names)
        if pages == 0:
            screenshot(page, "first-day-2-empty-page")
        unfocus(page)
        page.keyboard.press("Enter")
        presses += 1
        pages += 1
        after = left - len(names)
        if after:
            expect(page.get_by_role("heading", name=f"Likely empty: {after} frames to confirm")).to_be_visible(timeout=60_000)
        else:
            expect(page.get_by_text(re.compile(r"likely-empty frames are confirmed"))).to_be_visible(timeout=60_000)
        wait_for_app(page)
    journal = review.replay_journal(results).labels
    assert len(journal) == confirmed and set(journal.values()) == {"empty"}
    print(f"likely-empty pages: {confirmed} frames confirmed empty with {presses} key presses and {clicks} clicks "
          f"(animals among them ticked)")

    # 3. The rest, one at a time, with the keyboard: the buttons say which key is which label
    page.get_by_role("button", name="Label the rest").click()
    # Wait for the new queue's own count: right after the click the old queue's line ("34 of 34") may still show.
    total = len(truth) - confirmed
    progress = page.get_by_text(re.compile(rf"\d+ of {total} reviewed in this queue"))
    expect(progress).to_be_visible(timeout=60_000)
    wait_for_app(page)
    for done in range(total):
        expect(page.get_by_role("heading", name=f"Image {done + 1} of {total}")).to_be_visible(timeout=60_000)
        wait_for_app(page)
        rel = page.get_by_test_id("stImageCaption").first.inner_text().strip()
        keys = {page.locator(f".st-key-rv_c{i}_{done} button").inner_text().split("\n")[0].strip(): str(i + 1)
                for i in range(3)}
        if done == 2:
            screenshot(page, "first-day-3-label")
        unfocus(page)
        page.keyboard.press(keys[truth[rel]])
        expect(page.get_by_text(f"{done + 1} of {total} reviewed in this queue")).to_be_visible(timeout=60_000)
    journal = review.replay_journal(results).labels
    assert len(journal) == len(truth)
    assert all(journal[row.path] == truth[row.relpath] for row in review.read_results(results).itertuples())
    assert sum(label != "empty" for label in journal.values()) == animals

    # 4. Train on the reviewed frames: the page opens with the set, grouped by camera folder
    wait_for_app(page)
    page.get_by_role("button", name="Train on the reviewed frames").click()
    expect(page.get_by_text(re.compile(r"From Review: \d+ reviewed frames"))).to_be_visible(timeout=60_000)
    wait_for_app(page)
    assert page.get_by_label("New model name").input_value() == "tunnel-1"
    page.get_by_label("Validation folds (0 = none)").fill("3")
    page.get_by_label("Epochs (0 = default for the mode)").fill("20")
    page.get_by_text("Advanced").click()
    page.get_by_label("Any timm architecture (overrides the choice above)").fill("test_resnet")
    choose(page, "Pretrained weights", "none (random init, for tests)")
    page.get_by_text("Advanced").click()
    page.get_by_role("button", name="Train").click()
    expect(page.get_by_text(re.compile(r"Saved model tunnel-1"))).to_be_visible(timeout=LONG)
    wait_for_app(page)
    screenshot(page, "first-day-4-train")

    # 5. Rerun batch on the folder with the new model (the button picks it in the sidebar)
    page.get_by_role("button", name="Classify the folder with tunnel-1").click()
    expect(page.get_by_role("heading", name=re.compile("Batch"))).to_be_visible(timeout=60_000)
    wait_for_app(page)
    expect(page.get_by_test_id("stSidebar").get_by_role("combobox", name="Model")).to_have_value(
        re.compile("tunnel-1"), timeout=60_000)
    classify(page, folder, len(truth))
    rerun = proj.results_path("tunnel-1")
    assert rerun.is_file() and {run.model for run in proj.runs()} == {"general-animals", "tunnel-1"}
    screenshot(page, "first-day-5-rerun")

    # 6. Evaluate: the confusion matrix of the new model, the empty score's ROC, and the warning
    page.get_by_role("button", name="Evaluate").click()
    expect(page.get_by_text(re.compile(r"were training images of tunnel-1"))).to_be_visible(timeout=LONG)
    wait_for_app(page)
    expect(page.get_by_role("heading", name="Confusion matrix")).to_be_visible()
    expect(page.get_by_role("heading", name="Empty filter")).to_be_visible()
    expect(page.get_by_text(re.compile(r"Empty score against the labels \(AUC"))).to_be_visible(timeout=60_000)
    overlap = page.get_by_text(re.compile(r"\d+ of the \d+ evaluated images \(100%\) were training images")).first
    assert str(len(truth)) in overlap.inner_text()
    page.set_viewport_size({"width": 1400, "height": 2600})
    wait_for_app(page)
    screenshot(page, "first-day-6-dashboard")
