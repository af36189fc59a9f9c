"""Load, truly concurrent: 20 browser sessions identify photos against one Streamlit server.

tests/test_load.py interleaves 20 AppTests in one thread (AppTest is not thread-safe); here 20
Chromium contexts (own cookies, own websocket, own Streamlit session) talk to one server at the
same time.  Playwright's sync API is single-threaded, so the test fires all 20 uploads first and
then collects the results: the server runs the 20 sessions' scripts concurrently.  Each page
records in the browser itself (Date.now()) when its upload started and when its top-1 result
appeared, so latency does not depend on the order in which the test reads the pages.

Latency is reported as a ratio to ONE session alone on the same server in the same run (three
single-session uploads first), so the figure means the same on a fast desktop and a busy laptop.
Two waves of 20 fresh sessions follow.  Each session must show ITS OWN label (session i gets
class i % 3 in wave 1 and (i + 1) % 3 in wave 2).  The server process's RSS (/proc/<pid>/status)
is read before the first wave and after each wave, once the closed sessions' connections are
gone: wave 2 must not grow memory materially over wave 1, which it would if sessions kept their
own copies of the model or their uploads.

Not part of `make test` (marker ``load``): run it with `make test-load` (.ci/run does, after
`make test`).
"""

from __future__ import annotations

import time
from urllib.parse import urlparse

import numpy as np
import pytest

from tests.browser.conftest import scaled, select_model, wait_for_app
from tests.imagegen import CLASS_STYLES, class_image

pytestmark = [pytest.mark.browser, pytest.mark.load, pytest.mark.timeout(900)]

SESSIONS = 20
LABELS = list(CLASS_STYLES)  # gray fox, bobcat, coyote
MODEL_TITLE = "Tiny test_resnet"
WAVE2_GROWTH_LIMIT_MB = 150
SINGLE_RUNS = 3
# No session starves: in each wave the slowest session waits less than this many times the wave's
# median session.  (A queue served strictly one by one gives a max/median of about 2.)  Measured
# 2026-12-04: quiet machine 1.09 / 1.35 and 1.51 / 1.07 (waves 1 / 2); with one core busy 3.56 / 1.59
# (half of wave 1 done in 10 s, the rest together at 35 s), hence 5.  The ratio to one session
# alone is printed, not asserted: 20 Chromium renderers share the server's 2 cores, so it measures
# the client's load as much as the server's (CI: wave 1 p50 20.5 s, max 22.3 s against 0.32 s
# alone: 69x, yet max/median 1.09).
STARVATION_LIMIT = 5.0

# Runs in every page: poll the page text for a top-1 result line ("bobcat (80%)" or the
# "Uncertain: ..." warning) and remember when and what first appeared after the upload.
WATCH_JS = """
() => {
  window.__wildidResult = null;
  window.__wildidStart = Date.now();
  const pattern = /^((gray fox|bobcat|coyote) \\(\\d+%\\)|Uncertain: .*)$/m;
  const timer = setInterval(() => {
    const match = (document.body.innerText || '').match(pattern);
    if (match) {
      window.__wildidResult = {text: match[1], at: Date.now()};
      clearInterval(timer);
    }
  }, 20);
}
"""

RESULT_LINES_JS = r"""
() => (document.body.innerText || '').split('\n').map(s => s.trim())
        .filter(s => /^(gray fox|bobcat|coyote) \(\d+%\)$/.test(s) || s.startsWith('Uncertain:'))
"""


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


def open_sessions(browser, url: str, count: int) -> list:
    contexts = [browser.new_context(viewport={"width": 1100, "height": 900}) for _ in range(count)]
    pages = []
    for context in contexts:
        page = context.new_page()
        page.set_default_timeout(scaled(60_000) * max(1, count // 4))
        page.goto(url, wait_until="commit")  # all sessions start their first run together
        pages.append(page)
    for page in pages:
        wait_for_app(page, timeout=60_000 * max(1, count // 4))
    for page in pages:
        # The tiny ResNet is listed first, so a new session usually has it already; pick it
        # through the sidebar only when not (picking costs a rerun per session).
        picker = page.get_by_test_id("stSidebar").get_by_test_id("stSelectbox").filter(has_text="Model").first
        if not picker.get_by_role("combobox").input_value().startswith(MODEL_TITLE):
            select_model(page, MODEL_TITLE)
        page.get_by_text(f"Model card: {MODEL_TITLE}").first.wait_for()
    return pages


def wave(browser, url: str, number: int, tmp_path, count: int = SESSIONS, result_timeout_ms: float = 60_000) -> list[float]:
    """``count`` sessions upload at once; returns per-session latency (s) from upload to top-1 shown."""
    expected = [LABELS[(index + number - 1) % 3] for index in range(count)]
    photos = []
    for index, label in enumerate(expected):
        path = tmp_path / f"wave{number}-s{index}.jpg"
        class_image(CLASS_STYLES[label], seed=5000 + 100 * number + index, size=(320, 240)).save(path, quality=92)
        photos.append(path)
    opened = time.perf_counter()
    pages = open_sessions(browser, url, count)
    if count > 1:
        print(f"\n  wave {number}: {count} sessions opened with the model picked in {time.perf_counter() - opened:.1f} s")
    try:
        for page, photo in zip(pages, photos):  # fire every upload before reading any result
            page.evaluate(WATCH_JS)
            page.locator('[data-testid="stFileUploader"] input[type="file"]').first.set_input_files(str(photo))
        latencies = []
        for index, page in enumerate(pages):
            page.wait_for_function("() => window.__wildidResult !== null", timeout=result_timeout_ms)
            result = page.evaluate("() => window.__wildidResult")
            start = page.evaluate("() => window.__wildidStart")
            latencies.append((result["at"] - start) / 1000)
            wait_for_app(page, timeout=result_timeout_ms)
            shown = page.evaluate(RESULT_LINES_JS)
            # The top-1 is this session's own photo's class, and the page shows one result only
            # (its top-k lists each class once: no second top-1 from another session).
            assert result["text"].startswith(expected[index] + " ("), (number, index, expected[index], result)
            assert shown and shown[0].startswith(expected[index] + " ("), (number, index, shown)
            shown_labels = [line.rsplit(" (", 1)[0] for line in shown]
            assert len(shown_labels) == len(set(shown_labels)) <= len(LABELS), (number, index, shown)
            assert page.get_by_test_id("stException").count() == 0
        return latencies
    finally:
        for page in pages:
            page.context.close()


def established_connections(port: int) -> int:
    """TCP connections to the server's port that are still open (/proc/net/tcp, tcp6)."""
    count = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table) as handle:
                next(handle)
                for line in handle:
                    fields = line.split()
                    local_port = int(fields[1].rsplit(":", 1)[1], 16)
                    count += local_port == port and fields[3] == "01"  # 01 = ESTABLISHED
        except FileNotFoundError:
            continue
    return count


def wait_for_sessions_closed(port: int) -> None:
    """Until the closed browser contexts' websockets are gone from the server (a condition, polled)."""
    deadline = time.monotonic() + scaled(30_000) / 1000
    while established_connections(port) and time.monotonic() < deadline:
        time.sleep(0.05)  # polling interval
    assert established_connections(port) == 0, "browser sessions still connected after their contexts closed"


def test_twenty_concurrent_browser_sessions(browser, app_server, tmp_path):
    url, proc = app_server
    port = urlparse(url).port
    started = time.perf_counter()
    # One session alone, a few times: the yardstick for the concurrent latencies.
    single = [wave(browser, url, 10 + run, tmp_path, count=1)[0] for run in range(SINGLE_RUNS)]
    single_s = float(np.median(single))
    wait_for_sessions_closed(port)
    # The slowest of 20 concurrent sessions may wait for all 20 uploads to be classified.
    result_timeout_ms = scaled(60_000) + 1000 * STARVATION_LIMIT * SESSIONS * single_s
    rss_before = rss_mb(proc.pid)
    lat1 = wave(browser, url, 1, tmp_path, result_timeout_ms=result_timeout_ms)
    wait_for_sessions_closed(port)
    rss_wave1 = rss_mb(proc.pid)
    lat2 = wave(browser, url, 2, tmp_path, result_timeout_ms=result_timeout_ms)
    wait_for_sessions_closed(port)
    rss_wave2 = rss_mb(proc.pid)
    elapsed = time.perf_counter() - started

    all_lat = np.array(lat1 + lat2)
    p50, p95, worst = np.percentile(all_lat, 50), np.percentile(all_lat, 95), all_lat.max()
    print(f"\nconcurrent load: {2 * SESSIONS} browser sessions in 2 waves of {SESSIONS}, {elapsed:.1f} s total")
    print(f"  one session alone, upload->result: {', '.join(f'{t:.2f}' for t in single)} s (median {single_s:.2f} s)")
    for name, lat in (("wave 1", lat1), ("wave 2", lat2)):
        arr = np.array(lat)
        print(f"  {name} latency upload->result: p50 {np.percentile(arr, 50):.2f} s, "
              f"p95 {np.percentile(arr, 95):.2f} s, max {arr.max():.2f} s")
    print(f"  all    latency upload->result: p50 {p50:.2f} s, p95 {p95:.2f} s, max {worst:.2f} s")
    print("  starvation, slowest / median session of its wave: "
          + ", ".join(f"{name} {max(lat) / np.median(lat):.2f}" for name, lat in (("wave 1", lat1), ("wave 2", lat2)))
          + f" (limit {STARVATION_LIMIT:.0f})")
    print(f"  latency ratio to one session alone ({SESSIONS} concurrent): p50 {p50 / single_s:.1f}x, "
          f"p95 {p95 / single_s:.1f}x, max {worst / single_s:.1f}x (20 sessions served strictly one after another: up to {SESSIONS}x)")
    print(f"  server RSS: before {rss_before:.0f} MB, after wave 1 {rss_wave1:.0f} MB "
          f"(+{rss_wave1 - rss_before:.0f}), after wave 2 {rss_wave2:.0f} MB (+{rss_wave2 - rss_wave1:.0f} over wave 1)")

    assert len(all_lat) == 2 * SESSIONS and (all_lat > 0).all()
    for name, lat in (("wave 1", lat1), ("wave 2", lat2)):
        arr = np.array(lat)
        assert arr.max() < STARVATION_LIMIT * np.median(arr), (name, sorted(lat))
    # Flat memory: a second wave of 20 sessions adds little over the first.
    assert rss_wave2 - rss_wave1 < WAVE2_GROWTH_LIMIT_MB, (rss_wave1, rss_wave2)
