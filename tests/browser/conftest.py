"""Real-browser tests: a Streamlit server on loopback driven by headless Debian Chromium.

Playwright cannot download its own browser here, so it launches /usr/bin/chromium
(``make test`` installs the Debian package).  Screenshots go to docs/screenshots/ for the
README.  Each page's test lives in its own file: tests/browser/test_<page>.py.

Holding on a busy laptop: tests wait on conditions (text shown, the app's script state),
never on fixed sleeps, and every time limit is ``scaled(...)`` by a speed factor measured at
the start of the session: a fixed CPU workload runs on every core at once, and its wall time
over the same workload's time on a quiet development machine is the factor (>= 1; set
``WILDID_TEST_SLOWDOWN`` to override).  pytest-timeout's per-test limit is scaled alike.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

PROJECT_ROOT = Path(__file__).resolve().parents[2]
SCREENSHOTS = PROJECT_ROOT / "docs" / "screenshots"
CHROMIUM = os.environ.get("WILDID_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


# --- time limits that scale with the machine ------------------------------------------------------
# A pure-Python loop: one core's worth of work, independent of numpy/torch threading.
CALIBRATION_SOURCE = """
import time
start = time.perf_counter()
x = 0
for i in range(10_000_000):
    x += i & 7
print(time.perf_counter() - start)
"""
# Its time on one core of the quiet 2-core development machine (CPU time of the loop, 0.45-0.54 s
# over 7 runs: the fastest is the machine with nothing else running).
CALIBRATION_REFERENCE_S = 0.45
MAX_SLOWDOWN = 12.0
SLOWDOWN_ENV = "WILDID_TEST_SLOWDOWN"
_speed: dict[str, float] = {}


def measure_slowdown() -> float:
    """Wall time of the calibration loop run on every core at once, over the quiet reference.

    Every core at once, because the browser tests keep every core busy (server, browser,
    pytest): a process hogging one of two cores shows up as ~1.5x here, not 1x.
    """
    if os.environ.get(SLOWDOWN_ENV):
        return max(1.0, float(os.environ[SLOWDOWN_ENV]))
    children = [subprocess.Popen([sys.executable, "-c", CALIBRATION_SOURCE], stdout=subprocess.PIPE, text=True)
                for _ in range(os.cpu_count() or 1)]
    times = [float(child.communicate(timeout=300)[0]) for child in children]
    return min(MAX_SLOWDOWN, max(1.0, statistics.median(times) / CALIBRATION_REFERENCE_S))


def slowdown() -> float:
    """This machine's speed factor, measured once per session (>= 1)."""
    if "factor" not in _speed:
        _speed["factor"] = measure_slowdown()
    return _speed["factor"]


def scaled(milliseconds: float) -> int:
    """A time limit in ms, stretched by the measured slowdown (Playwright takes ms)."""
    return int(milliseconds * slowdown())


@pytest.hookimpl(trylast=True)  # after -m / -k deselection: calibrate only when browser tests run
def pytest_collection_modifyitems(config, items):
    browser_items = [item for item in items if item.get_closest_marker("browser")]
    if not browser_items:
        return
    from playwright.sync_api import expect

    factor = slowdown()
    expect.set_options(timeout=scaled(30_000))
    base = float(config.getini("timeout") or 300)
    for item in browser_items:
        own = item.get_closest_marker("timeout")
        limit = float(own.args[0]) if own and own.args else base
        item.add_marker(pytest.mark.timeout(limit * factor))


def pytest_terminal_summary(terminalreporter):
    if "factor" in _speed:
        terminalreporter.write_line(
            f"browser tests: machine slowdown factor {_speed['factor']:.2f} (calibration loop on "
            f"{os.cpu_count()} cores vs a quiet core); time limits scaled by it"
        )


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="session")
def browser_models_root(tmp_path_factory, _tiny_models_master) -> Path:
    """The tiny models plus the bundled ones, for the server process."""
    root = tmp_path_factory.mktemp("browser-models")
    shutil.copytree(_tiny_models_master, root, dirs_exist_ok=True)
    return root


@pytest.fixture(scope="session")
def browser_workdir(tmp_path_factory) -> Path:
    """A folder the server may read and write (batch folders, results, journals)."""
    return tmp_path_factory.mktemp("browser-work")


@pytest.fixture(scope="session")
def app_server(browser_models_root, browser_workdir, tmp_path_factory):
    """(url, Popen) of the Streamlit server; the load test reads the process's memory."""
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} missing: run `make chromium` (apt package chromium)")
    port = _free_port()
    env = dict(
        os.environ,
        WILDID_MODELS=str(browser_models_root),
        WILDID_CACHE=str(tmp_path_factory.mktemp("browser-cache")),
        WILDID_ALLOWED_ROOT=str(browser_workdir),
        WILDID_SESSIONS=str(tmp_path_factory.mktemp("browser-sessions")),
        # The re-ID test model is TorchScript (code): the operator's explicit trust.
        WILDID_TRUSTED_MODELS="coat-handcrafted",
        STREAMLIT_SERVER_FILE_WATCHER_TYPE="none",
        STREAMLIT_BROWSER_GATHER_USAGE_STATS="false",
    )
    log_path = tmp_path_factory.mktemp("browser-log") / "streamlit.log"
    os.environ["WILDID_BROWSER_LOG"] = str(log_path)
    log = open(log_path, "w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "streamlit", "run", "app.py", "--server.port", str(port),
         "--server.address", "127.0.0.1", "--server.headless", "true"],
        cwd=PROJECT_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    limit = scaled(60_000) / 1000
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        try:
            if urllib.request.urlopen(f"{url}/_stcore/health", timeout=2).status == 200:
                break
        except OSError:
            if proc.poll() is not None:
                pytest.fail(f"streamlit exited with {proc.returncode}; see {log_path}")
            time.sleep(0.2)  # polling interval of the health check, not a wait for something to happen
    else:
        proc.kill()
        pytest.fail(f"streamlit did not start within {limit:.0f} s")
    yield url, proc
    proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
    log.close()


@pytest.fixture(scope="session")
def app_url(app_server):
    return app_server[0]


@pytest.fixture(scope="session")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        instance = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        yield instance
        instance.close()


@pytest.hookimpl(hookwrapper=True, tryfirst=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if report.when == "call":
        item.rep_call = report


@pytest.fixture()
def page(browser, app_url, request):
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    page.set_default_timeout(scaled(60_000))
    yield page
    report = getattr(request.node, "rep_call", None)
    if report is not None and report.failed:
        # Evidence for a failed run: what the browser showed and what the server said.
        failure = Path(os.environ.get("WILDID_BROWSER_FAILURES", "/tmp/wildid-browser-failures"))
        failure.mkdir(parents=True, exist_ok=True)
        try:
            page.screenshot(path=str(failure / f"{request.node.name}.png"), full_page=True)
        except Exception:  # noqa: BLE001 - best effort only
            pass
        log_path = Path(os.environ.get("WILDID_BROWSER_LOG", ""))
        if log_path.is_file():
            print("---- streamlit log (tail) ----\n" + "\n".join(log_path.read_text().splitlines()[-40:]))
    context.close()


# The app root carries Streamlit's script state: "initial" before the first run, "rerunRequested"
# from the moment a widget changes (set in the browser, synchronously, so there is no gap after an
# action), "running", and "notRunning" once the run's output is on the page.
APP_IDLE = '[data-testid="stApp"][data-test-script-state="notRunning"][data-test-connection-state="CONNECTED"]'


def wait_for_app(page, timeout: float = 60_000) -> None:
    """Until Streamlit has finished running the script (its app root says so)."""
    page.wait_for_selector(APP_IDLE, state="attached", timeout=scaled(timeout))


def next_frame(page) -> None:
    """Until the browser has painted twice (a resize's re-layout is on screen before a screenshot)."""
    page.evaluate("() => new Promise(done => requestAnimationFrame(() => requestAnimationFrame(done)))")


def screenshot(page, name: str) -> Path:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    path = SCREENSHOTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    return path


def choose_option(page, box, text: str, what: str) -> None:
    """Pick an option of a select box by typing it and pressing Enter, until the box shows it.

    Typing goes to the focused input, which survives a re-render of the option list; a click
    on an option failed when the list re-rendered under the pointer on a loaded machine.  The
    box is retried (condition: its value) when a rerun swallowed the keystrokes.
    """
    from playwright.sync_api import Error as PlaywrightError
    from playwright.sync_api import expect

    wanted = re.compile(re.escape(text))
    option = page.get_by_role("option").filter(has_text=text).first
    for _ in range(5):
        wait_for_app(page)
        box.click()
        box.fill(text)  # the option list is virtualised: filter it first
        try:
            # Enter only once the option is listed: inside a form, an Enter with no open list submits
            # the form (the likely cause of a busy-core run submitting the old weights choice).
            option.wait_for(timeout=scaled(5_000))
        except PlaywrightError:
            continue
        page.keyboard.press("Enter")
        try:
            expect(box).to_have_value(wanted, timeout=scaled(5_000))
            break
        except (AssertionError, PlaywrightError):
            continue
    try:
        expect(box).to_have_value(wanted, timeout=scaled(30_000))
    except AssertionError:
        raise AssertionError(f"could not choose {text!r} in {what} (it shows {box.input_value()!r})") from None
    wait_for_app(page)


def select_model(page, title: str) -> None:
    """Pick a model in the sidebar by (the start of) its title; wait until the picker shows it."""
    box = page.get_by_test_id("stSidebar").get_by_role("combobox", name="Model")
    choose_option(page, box, title, "the sidebar model picker")
