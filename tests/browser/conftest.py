"""Real-browser tests: a Streamlit server on loopback driven by headless Debian Chromium.

Playwright cannot download its own browser here, so it launches /usr/bin/chromium
(``make test`` installs the Debian package).  Screenshots go to docs/screenshots/ for the
README.  Each page's test lives in its own file: tests/browser/test_<page>.py.
"""

from __future__ import annotations

import os
import shutil
import socket
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
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if urllib.request.urlopen(f"{url}/_stcore/health", timeout=2).status == 200:
                break
        except OSError:
            time.sleep(0.5)
    else:
        proc.kill()
        pytest.fail("streamlit did not start within 60 s")
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
    page.set_default_timeout(60_000)
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


def wait_for_app(page) -> None:
    """Until Streamlit has finished running the script (no 'Running...' indicator)."""
    page.wait_for_selector('[data-testid="stApp"]')
    page.wait_for_timeout(400)  # let a rerun triggered by the last action start
    page.wait_for_function(
        "() => !document.querySelector('[data-testid=\"stStatusWidget\"]')"
        " || !document.querySelector('[data-testid=\"stStatusWidget\"]').innerText.includes('Running')",
        timeout=60_000,
    )


def screenshot(page, name: str) -> Path:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    path = SCREENSHOTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    return path


def select_model(page, title: str) -> None:
    """Pick a model in the sidebar by (the start of) its title; wait until the picker shows it.

    Typing into the focused combobox and pressing Enter survives a re-render of the option
    list, which a click on an option did not on a loaded machine.
    """
    import re

    from playwright.sync_api import expect

    box = page.get_by_test_id("stSidebar").get_by_role("combobox", name="Model")
    for _ in range(5):
        box.click()
        box.fill(title)  # the option list is virtualised: filter it first
        page.keyboard.press("Enter")
        page.wait_for_timeout(300)
        if title in box.input_value():
            break
    expect(box).to_have_value(re.compile(re.escape(title)), timeout=30_000)
    wait_for_app(page)
