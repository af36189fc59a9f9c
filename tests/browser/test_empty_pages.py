"""Browser: clearing likely-empty frames on Review's thumbnail pages, counted.

A generated fixed-camera folder with over a hundred blank frames (and some animals far away
that the empty score misses) is classified; Review's likely-empty pages are then cleared the
way a person would: tick the frames that show an animal, press Enter.  The test prints the key
presses and clicks it took (the README quotes them) and checks what reached the journal.
"""

from __future__ import annotations

import math
import re
import time

import pytest
from playwright.sync_api import expect

from tests.browser.conftest import wait_for_app
from tests.camgen import fixed_camera_folder
from wildid import batch, project, review
from wildid.registry import load_predictor

pytestmark = pytest.mark.browser


@pytest.mark.timeout(900)
def test_clear_over_a_hundred_likely_empty_frames(page, app_url, browser_workdir, browser_models_root):
    folder = browser_workdir / "blank-heavy"
    truth = fixed_camera_folder(folder, cameras=4, frames=40, empty_share=0.75, small_share=0.5, seed=11)
    proj = project.for_folder(folder, browser_workdir).create()
    results = proj.results_path("tiny")
    batch.run_batch(folder, load_predictor(str(browser_models_root / "tiny")), results, recursive=True)
    frame = review.read_results(results)
    likely = frame[frame["empty_score"] >= review.DEFAULT_EMPTY_THRESHOLD]
    n_likely = len(likely)
    animals_hidden = sum(truth[rel] != "empty" for rel in likely["relpath"])
    assert n_likely >= 100 and animals_hidden >= 1  # the filter hides a few animals: the reviewer must catch them

    page.set_viewport_size({"width": 1400, "height": 1000})
    page.goto(f"{app_url}/review?results={results}&reviewer=ana")
    heading = page.get_by_role("heading", name=re.compile(r"Likely empty: \d+ frames to confirm"))
    expect(heading).to_be_visible(timeout=120_000)
    wait_for_app(page)
    presses = clicks = 0
    started = time.monotonic()
    while heading.count():
        left = int(re.search(r"(\d+) frames", heading.inner_text()).group(1))
        boxes = page.get_by_test_id("stCheckbox").filter(has_text="animal ·")
        expect(boxes).to_have_count(min(24, left), timeout=60_000)  # the whole page is drawn
        names = [boxes.nth(i).inner_text().split("·", 1)[1].strip() for i in range(boxes.count())]
        for i, rel in enumerate(names):
            if truth[rel] != "empty":
                boxes.nth(i).click()
                clicks += 1
        page.evaluate("() => document.activeElement && document.activeElement.blur()")
        page.keyboard.press("Enter")
        presses += 1
        after = left - len(names)
        if after:
            expect(page.get_by_role("heading", name=f"Likely empty: {after} frames to confirm")).to_be_visible(timeout=60_000)
        else:
            expect(page.get_by_text(re.compile(r"likely-empty frames are confirmed"))).to_be_visible(timeout=60_000)
        wait_for_app(page)
    seconds = time.monotonic() - started

    labels = review.replay_journal(results).labels
    flagged = project.read_not_empty(results)
    by_path = dict(zip(frame["path"], frame["relpath"]))
    assert len(labels) == n_likely - animals_hidden and set(labels.values()) == {"empty"}
    assert all(truth[by_path[p]] == "empty" for p in labels)
    assert len(flagged) == animals_hidden and all(truth[by_path[p]] != "empty" for p in flagged)
    assert presses == math.ceil(n_likely / 24) and clicks == animals_hidden
    print(f"\nlikely-empty frames: {n_likely} ({animals_hidden} of them with an animal) cleared with {presses} key "
          f"presses and {clicks} clicks in {seconds:.0f} s of browser time; per 100 frames: "
          f"{presses * 100 / n_likely:.1f} presses + one click per animal among them")
