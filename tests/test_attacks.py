"""The attack suite of issue 18: each finding replayed as an attacker on the network would, through
the page (AppTest) or the command that `make run` starts.  Every test here failed on the code
before the fix (see SECURITY.md, "Attacks replayed"); a test that passes proves the defence.

A fake home folder (``HOME`` -> tmp) holds the "secrets" (``.ssh``, ``.local``), so nothing
touches the real home; ``WILDID_ALLOWED_ROOT`` is unset unless a test needs another root, so
the defaults are what is tested.
"""

from __future__ import annotations

import csv
import gc
import hashlib
import io
import json
import os
import re
import signal
import socket
import struct
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest
import torch
from PIL import Image
from streamlit.testing.v1 import AppTest

from tests.conftest import PROJECT_ROOT
from tests.imagegen import class_image, write
from wildid import review

PAGES = PROJECT_ROOT / "app_pages"
PAYLOAD = "![x](http://example.invalid/x.png)"
SECRET_TEXT = "TOPSECRET-ssh-key-material"


# --- fixtures ---------------------------------------------------------------------------------------
@pytest.fixture()
def home(tmp_path, monkeypatch, models_root):
    """A home folder with secrets in it; the allowed folder is left at its default."""
    home = tmp_path / "home"
    (home / ".ssh").mkdir(parents=True)
    (home / ".ssh" / "id_rsa").write_text(SECRET_TEXT + "\n")
    write(home / ".ssh" / "photo.jpg", class_image("bright", 1), quality=90)
    (home / ".local" / "lib" / "python3.11").mkdir(parents=True)
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.delenv("WILDID_ALLOWED_ROOT", raising=False)
    monkeypatch.delenv("WILDID_ACCESS_SECRET", raising=False)
    monkeypatch.setenv("WILDID_SESSIONS", str(tmp_path / "sessions"))
    return home


def data_root(home: Path) -> Path:
    """Where the data folder is by default: ~/wildid-data (created on first use)."""
    return home / "wildid-data"


def page(name: str, **state) -> AppTest:
    at = AppTest.from_file(str(PAGES / f"{name}.py"), default_timeout=120)
    for key, value in state.items():
        at.session_state[key] = value
    return at


def results_csv(path: Path, rows: list[dict]) -> bytes:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=review.RESULTS_COLUMNS)
    writer.writeheader()
    for row in rows:
        writer.writerow({c: row.get(c, "") for c in review.RESULTS_COLUMNS})
    data = buffer.getvalue().encode()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return data


def row(path: Path | str, label: str = "bobcat", status: str = "accepted", relpath: str | None = None) -> dict:
    return {"path": str(path), "relpath": relpath or Path(path).name, "label": label, "confidence": 0.97,
            "top_k": json.dumps([[label, 0.97]]), "status": status, "model": "tiny", "model_version": "1"}


def markdown_strings(at: AppTest) -> list[str]:
    """Every string the browser renders as Markdown: text elements, alerts, captions, headings,
    widget labels and image captions."""
    out = []
    for kind in ("markdown", "caption", "error", "warning", "info", "success", "title", "header", "subheader"):
        out += [e.value for e in at.get(kind)]
    for kind in ("button", "checkbox", "toggle", "text_input", "selectbox", "radio", "expander", "metric"):
        out += [getattr(e, "label", "") or "" for e in at.get(kind)]
    for image in at.get("image"):
        out += list(image.captions)
    return [s for s in out if s]


def assert_no_markdown_image(at: AppTest) -> None:
    strings = markdown_strings(at)
    raw = [s for s in strings if re.search(r"(?<!\\)!(?<!\\)\[[^\]]*\]\(", s)]
    assert not raw, f"untrusted text rendered as a Markdown image: {raw}"


# --- 1. TorchScript upload runs code (torch.from_file copies a secret) ----------------------------------
EXFILTRATE_SOURCE = '''
import torch


class Exfiltrate(torch.nn.Module):
    secret: str
    copy: str
    size: int

    def __init__(self, secret: str, copy: str, size: int):
        super().__init__()
        self.secret = secret
        self.copy = copy
        self.size = size

    def forward(self, x):
        source = torch.from_file(self.secret, shared=False, size=self.size, dtype=torch.uint8)
        target = torch.from_file(self.copy, shared=True, size=self.size, dtype=torch.uint8)
        target.copy_(source)
        # Returned (times zero) so TorchScript's dead-code elimination keeps the copy.
        return torch.zeros(x.shape[0], 2) + target.float().sum() * 0.0
'''


def exfiltrating_torchscript(tmp_path: Path, secret: Path, copy: Path) -> bytes:
    """A ~1-2 KB TorchScript file whose forward() copies ``secret`` into a new file ``copy``."""
    module_file = tmp_path / "exfiltrate_module.py"
    module_file.write_text(EXFILTRATE_SOURCE)
    import importlib.util

    spec = importlib.util.spec_from_file_location("exfiltrate_module", module_file)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    scripted = torch.jit.script(module.Exfiltrate(str(secret), str(copy), secret.stat().st_size))
    path = tmp_path / "evil-torchscript.pt"
    scripted.save(str(path))
    return path.read_bytes()


def test_exfiltrating_torchscript_is_real_when_run(tmp_path, home):
    """The payload below really copies the secret when its forward() runs (so the refusal means something)."""
    copy = tmp_path / "proof-copy"
    data = exfiltrating_torchscript(tmp_path, home / ".ssh" / "id_rsa", copy)
    torch.jit.load(io.BytesIO(data))(torch.zeros(1, 3, 8, 8))
    assert copy.read_text().strip() == SECRET_TEXT


def add_model(at: AppTest, upload: tuple, name: str, classes: str, arch: str = "resnet18") -> AppTest:
    at.file_uploader[0].set_value(upload)
    at.text_input[0].input(name)
    at.selectbox[0].select(arch)
    at.text_area[0].input(classes)
    next(b for b in at.button if b.label == "Add model").click()
    return at.run()


def test_attack_torchscript_upload_runs_no_code(tmp_path, home, models_root):
    copy = tmp_path / "stolen-key"
    data = exfiltrating_torchscript(tmp_path, home / ".ssh" / "id_rsa", copy)
    assert len(data) < 4096
    at = page("models").run()
    add_model(at, ("model.pt", data, "application/octet-stream"), "innocent", "fox\nbobcat")
    assert not at.exception
    assert not copy.exists(), "the uploaded TorchScript ran: it copied the secret"
    assert any("TorchScript" in e.value for e in at.error)
    assert not any((root / "innocent").exists() for root in (models_root, data_root(home) / "models"))


# --- 2. Review export: CSV paths copied anywhere (a planted .pth in site-packages) ---------------------------------
def test_attack_review_export_plants_no_pth(tmp_path, home):
    planted = tmp_path / "attacker" / "evil.pth"
    planted.parent.mkdir()
    planted.write_text("import os; os.system('touch /tmp/pwned')\n")
    site = home / ".local" / "lib" / "python3.11"
    data = results_csv(tmp_path / "upload.csv", [row(planted, label="site-packages")])
    at = page("review").run()
    at.radio(key="rv_source").set_value("Upload").run()
    at.file_uploader(key="rv_upload").set_value(("results.csv", data, "text/csv")).run()
    assert not at.exception
    if at.text_input(key="rv_export_dir") is not None:
        at.text_input(key="rv_export_dir").set_value(str(site)).run()
        at.checkbox(key="rv_include_auto").check().run()
        at.button(key="rv_export").click().run()
    assert not at.exception
    assert not (site / "site-packages" / "evil.pth").exists()
    assert not list(home.rglob("*.pth"))
    assert at.error, "the page should say why nothing was exported"


# --- 3. Models page: the Classes field opened as a path -----------------------------------------------------
def resnet18_state(num_classes: int) -> bytes:
    import timm

    buffer = io.BytesIO()
    torch.save(timm.create_model("resnet18", num_classes=num_classes).state_dict(), buffer)
    return buffer.getvalue()


def test_attack_classes_field_is_never_opened(tmp_path, home, models_root):
    secret = home / ".ssh" / "two_lines.txt"
    secret.write_text("SECRET-LINE-ONE\nSECRET-LINE-TWO\n")
    at = page("models").run()
    add_model(at, ("weights.pth", resnet18_state(2), "application/octet-stream"), "leak", str(secret))
    assert not at.exception
    shown = " ".join(markdown_strings(at)) + " ".join(str(d.value.to_dict()) for d in at.dataframe)
    assert "SECRET-LINE" not in shown
    for folder in (models_root / "leak", data_root(home) / "models" / "leak"):
        assert not (folder / "card.toml").exists() or "SECRET-LINE" not in (folder / "card.toml").read_text()


# --- 4. Models page: the model name joined onto the models folder -------------------------------------------
@pytest.mark.parametrize("name", ["../escaped", "{tmp}/absolute", "..", ".hidden", "a/../../b"])
def test_attack_model_name_traversal_writes_nothing_outside(name, tmp_path, home, models_root):
    name = name.format(tmp=tmp_path)
    at = page("models").run()
    before = {p for p in tmp_path.rglob("card.toml")}
    add_model(at, ("weights.pth", resnet18_state(2), "application/octet-stream"), name, "fox, bobcat")
    assert not at.exception
    assert {p for p in tmp_path.rglob("card.toml")} == before, "a card was written for a bad model name"
    assert any("not allowed" in e.value for e in at.error)


# --- 5. Dashboard: thumbnails of any image on the server ----------------------------------------------------
def report_json(paths: list[str], name: str = "tiny") -> bytes:
    from wildid import evaluate as ev

    run = ev.Run(name=name, paths=paths, y_true=["bobcat"] * len(paths), y_pred=["bobcat"] * len(paths),
                 confidence=[0.9] * len(paths), classes=("bobcat", "coyote"))
    return ev.to_json(ev.combine([ev.build_report(run, 0.5)], "upload")).encode()


def test_attack_dashboard_report_json_serves_no_outside_image(home):
    secret_photo = home / ".ssh" / "photo.jpg"
    at = page("dashboard").run()
    at.radio[0].set_value("Open a saved report (JSON)").run()
    at.file_uploader(key="dashboard_json").set_value(("report.json", report_json([str(secret_photo)]), "application/json")).run()
    next(b for b in at.button if b.label == "Open").click().run()
    assert not at.exception
    assert not at.get("image"), "a thumbnail of a file outside the allowed folder was served"
    assert any("outside the allowed folder" in c.value for c in at.caption)


def test_attack_dashboard_checks_the_allowed_folder_without_the_env(home):
    at = page("dashboard").run()
    at.radio[0].set_value("Results CSV on the server + its reviewed journal").run()
    at.text_input(key="dashboard_results_path").set_value(str(home / ".ssh" / "id_rsa")).run()
    next(b for b in at.button if b.label == "Evaluate").click().run()
    assert not at.exception
    assert any("outside the allowed folder" in e.value for e in at.error)


# --- 6. `make run` listens on every interface -----------------------------------------------------------------
def make_run_command(*variables: str) -> str:
    """The command `make run` would start (make -n prints it without running anything)."""
    proc = subprocess.run(["make", "-n", "run", "PY=" + sys.executable, *variables], cwd=PROJECT_ROOT,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    lines = [line for line in proc.stdout.splitlines() if "streamlit" in line or "wildid.serve" in line]
    assert lines, proc.stdout
    return lines[-1]


def listening_addresses(pid: int, port: int) -> set[str]:
    import psutil

    found = set()
    for process in [psutil.Process(pid), *psutil.Process(pid).children(recursive=True)]:
        for conn in process.net_connections(kind="inet"):
            if conn.status == psutil.CONN_LISTEN and conn.laddr.port == port:
                found.add(conn.laddr.ip)
    return found


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_attack_make_run_binds_loopback_only(tmp_path, home):
    """Start exactly the command `make run` runs and read the address the server listens on."""
    port = free_port()
    command = make_run_command(f"PORT={port}")
    env = dict(os.environ, STREAMLIT_SERVER_HEADLESS="true", STREAMLIT_BROWSER_GATHER_USAGE_STATS="false",
               STREAMLIT_SERVER_FILE_WATCHER_TYPE="none")
    env.pop("WILDID_ADDRESS", None)
    # Output to a file, not a pipe: Streamlit ignores SIGTERM once its stdout is a pipe nobody reads
    # (the stop handler's print fails), and a server outlived every busy-core `make test` run.
    log = tmp_path / "make-run.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(command, shell=True, cwd=PROJECT_ROOT, env=env, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 90
        addresses: set[str] = set()
        while time.monotonic() < deadline and not addresses:
            assert proc.poll() is None, log.read_text(errors="replace")[-2000:]
            addresses = listening_addresses(proc.pid, port)
            time.sleep(0.3)
        assert addresses == {"127.0.0.1"}, f"`make run` listens on {addresses}"
    finally:
        stop_process_group(proc)


def stop_process_group(proc: subprocess.Popen, grace: float = 30.0) -> None:
    """SIGTERM the whole group (shell, make, the server make exec'd into), SIGKILL what outlives ``grace``."""
    os.killpg(proc.pid, signal.SIGTERM)
    proc.wait(timeout=grace)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        try:
            os.killpg(proc.pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.2)  # polling for the group to be gone
    os.killpg(proc.pid, signal.SIGKILL)


def test_attack_open_address_without_secret_refuses_to_start(home):
    command = make_run_command("ADDRESS=0.0.0.0", f"PORT={free_port()}")
    env = dict(os.environ)
    env.pop("WILDID_ACCESS_SECRET", None)
    proc = subprocess.Popen(command, shell=True, cwd=PROJECT_ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        stop_process_group(proc)
        pytest.fail("the server started on 0.0.0.0 without an access secret")
    assert proc.returncode != 0
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and "WILDID_ACCESS_SECRET" in lines[0], err


# --- 7. Sessions share state ------------------------------------------------------------------------------------
def test_attack_review_upload_is_private_to_its_session(tmp_path, home):
    images = data_root(home) / "cam"
    write(images / "a.jpg", class_image("dark", 1), quality=90)
    data = results_csv(tmp_path / "r.csv", [row(images / "a.jpg", status="review")])
    alice = page("review").run()
    alice.radio(key="rv_source").set_value("Upload").run()
    alice.file_uploader(key="rv_upload").set_value(("alice-results.csv", data, "text/csv")).run()
    assert not alice.exception and not alice.error
    [stored] = [str(p) for p in tmp_path.rglob("*alice-results.csv")]  # wherever the upload was kept
    # Bob (another session) types the path Alice's upload got, and lists its folder from Batch.
    bob = page("review").run()
    bob.text_input(key="rv_results_path").set_value(stored).run()
    assert not bob.exception
    assert bob.error and not [b for b in bob.button if (b.key or "").startswith("rv_c")]
    batch = page("batch", model_name="tiny").run()
    batch.text_input[0].input(str(Path(stored).parent)).run()
    batch.button[0].click().run()
    assert not batch.exception
    assert batch.error and "batch_results" not in batch.session_state


def test_attack_reviewer_identity_comes_from_the_access_layer(tmp_path, home, monkeypatch):
    monkeypatch.setenv("WILDID_ACCESS_SECRET", "correct-horse-battery")
    images = data_root(home) / "cam"
    write(images / "a.jpg", class_image("dark", 1), quality=90)
    results = data_root(home) / "run.csv"
    results_csv(results, [row(images / "a.jpg", status="review")])
    at = AppTest.from_file(str(PROJECT_ROOT / "app.py"), default_timeout=120)
    at.query_params["results"] = str(results)
    at.query_params["reviewer"] = "mallory"
    at.run()
    assert not at.exception
    assert [t.value for t in at.title] == ["wildid"], "a page ran before the access secret was given"
    at.text_input(key="access_name").input("ana")
    at.text_input(key="access_secret").input("wrong-secret-guess")
    at.button[0].click().run()
    assert any("wrong access secret" in e.value.lower() for e in at.error)
    at.text_input(key="access_name").input("ana")
    at.text_input(key="access_secret").input("correct-horse-battery")
    at.button[0].click().run()
    at.switch_page("app_pages/review.py").run()
    assert not at.exception
    reviewer = at.text_input(key="rv_reviewer")
    assert reviewer.value == "ana" and reviewer.disabled
    next(b for b in at.button if (b.key or "").startswith("rv_c")).click().run()
    assert list(review.replay_journal(results).entries["reviewer"]) == ["ana"]


def test_attack_export_cannot_overwrite_another_sessions_export(tmp_path, home):
    root = data_root(home)
    write(root / "cam" / "a.jpg", class_image("dark", 1), quality=90)
    write(root / "cam" / "b.jpg", class_image("bright", 2), quality=90)
    alice_results, bob_results = root / "alice.csv", root / "bob.csv"
    results_csv(alice_results, [row(root / "cam" / "a.jpg", label="bobcat")])
    results_csv(bob_results, [row(root / "cam" / "b.jpg", label="coyote")])
    target = root / "training-set"

    def export(results: Path) -> AppTest:
        at = page("review").run()
        at.text_input(key="rv_results_path").set_value(str(results)).run()
        at.text_input(key="rv_export_dir").set_value(str(target)).run()
        at.checkbox(key="rv_include_auto").check().run()
        at.button(key="rv_export").click().run()
        assert not at.exception
        return at

    alice = export(alice_results)
    labels = target / "labels.csv"
    assert labels.is_file() and not alice.error
    before = labels.read_bytes()
    bob = export(bob_results)
    assert labels.read_bytes() == before, "another session's export replaced Alice's labels.csv"
    assert bob.error


def test_attack_train_cannot_replace_the_bundled_model(tmp_path, home, models_root, monkeypatch):
    from wildid import registry

    bundled = tmp_path / "project-models"
    import shutil

    shutil.copytree(PROJECT_ROOT / "models" / "general-animals", bundled / "general-animals")
    weights = bundled / "general-animals" / "model.safetensors"
    digest = hashlib.sha256(weights.read_bytes()).hexdigest()
    monkeypatch.setattr(registry, "PROJECT_ROOT", tmp_path / "project")
    (tmp_path / "project").mkdir()
    (tmp_path / "project" / "models").symlink_to(bundled, target_is_directory=True)
    monkeypatch.delenv("WILDID_MODELS", raising=False)
    for label in ("bobcat", "coyote"):
        for seed in range(3):
            write(data_root(home) / "data" / label / f"{seed}.jpg", class_image("dark" if label == "bobcat" else "bright", seed), quality=90)
    at = page("train").run()
    at.text_input[0].input("data")
    at.text_input[1].input("general-animals")
    next(c for c in at.checkbox if c.label.startswith("Replace")).check()
    next(t for t in at.text_input if t.label.startswith("Any timm architecture")).input("test_resnet")
    next(s for s in at.selectbox if s.label == "Pretrained weights").select("none")
    next(n for n in at.number_input if n.label.startswith("Validation folds")).set_value(0)
    next(b for b in at.button if b.label == "Train").click()
    at.run()
    assert not at.exception
    job = at.session_state["train_job"] if "train_job" in at.session_state else None
    if job is not None:
        job.wait(300)
    assert job is None, "the Train page started replacing the bundled model"
    assert any("general-animals" in e.value for e in at.error)
    assert hashlib.sha256(weights.read_bytes()).hexdigest() == digest
    assert not (data_root(home) / "models" / "general-animals").exists()


# --- 8. Resources ---------------------------------------------------------------------------------------------
BOMB_PNG = None


def rgba_png(side: int) -> bytes:
    """A flat-colour RGBA PNG: 12000x12000 compresses to well under 1 MB."""
    global BOMB_PNG
    if side == 12000 and BOMB_PNG is not None:
        return BOMB_PNG
    buffer = io.BytesIO()
    Image.new("RGBA", (side, side), (40, 90, 30, 200)).save(buffer, "PNG", compress_level=9)
    if side == 12000:
        BOMB_PNG = buffer.getvalue()
    return buffer.getvalue()


PEAK_SCRIPT = """
import sys
from wildid.imaging import load_image
from wildid.errors import WildidError
def status_kb(field):
    return next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith(field + ":"))
data = open(sys.argv[1], 'rb').read()
open("/proc/self/clear_refs", "w").write("5")  # peak mark (VmHWM) := current RSS
before = status_kb("VmRSS")
try:
    load_image(data)
    outcome = 'decoded'
except WildidError as exc:
    outcome = 'refused: ' + str(exc)
print((status_kb("VmHWM") - before) // 1024, outcome)
"""


def test_attack_12000px_rgba_png_is_refused_before_decoding(tmp_path, home, models_root):
    data = rgba_png(12000)
    assert len(data) < 1_000_000
    path = tmp_path / "bomb.png"
    path.write_bytes(data)
    proc = subprocess.run([sys.executable, "-c", PEAK_SCRIPT, str(path)], cwd=PROJECT_ROOT, capture_output=True,
                          text=True, timeout=300)
    grown_mb, outcome = proc.stdout.split(" ", 1)
    assert outcome.startswith("refused"), outcome
    assert int(grown_mb) < 100, f"server memory grew by {grown_mb} MB"
    at = page("identify", model_name="tiny").run()
    at.file_uploader(key="identify_upload").set_value(("bomb.png", data, "image/png")).run()
    assert not at.exception
    assert any("MP limit" in e.value for e in at.error)


def lying_zip(declared: int, padding: int) -> bytes:
    """A zip whose central directory declares ``declared`` unpacked bytes for one small member,
    plus ``padding`` random stored bytes so the compression ratio stays under 100:1.  Python's
    zipfile never inflates past the declared size, so what the declared sizes allow is what an
    honest zip of that size would unpack to."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED) as archive:
        archive.writestr("frames/big.jpg", b"\0" * 1000)
        archive.writestr("frames/noise.jpg", os.urandom(padding))
    data = bytearray(buffer.getvalue())
    central = data.find(b"PK\x01\x02")
    struct.pack_into("<I", data, central + 24, declared)
    return bytes(data)


def test_attack_zip_unpacking_to_gigabytes_is_refused(tmp_path, home, models_root):
    """50 MB uploads may not unpack to 4 GiB: 1.5 GiB declared in a 16 MB zip (96:1) is refused."""
    data = lying_zip(declared=int(1.5 * 1024**3), padding=16 * 1024**2)
    at = page("batch", model_name="tiny").run()
    at.radio[1].set_value("Upload a zip").run()
    at.file_uploader[0].set_value(("frames.zip", data, "application/zip")).run()
    next(b for b in at.button if b.label == "Classify").click().run()
    assert not at.exception
    assert any(re.search(r"unpacks to \d+ MB, over the \d+ MB limit", e.value) for e in at.error), [e.value for e in at.error]


def test_attack_session_disk_quota(tmp_path, home, models_root, monkeypatch):
    monkeypatch.setenv("WILDID_SESSION_QUOTA_BYTES", str(3 * 1024**2))
    at = page("batch", model_name="tiny").run()
    at.radio[1].set_value("Upload images").run()
    uploads = [(f"noise{i}.png", Image.effect_noise((600, 600), 64).convert("RGB").tobytes()[:900_000], "image/png")
               for i in range(4)]
    at.file_uploader[0].set_value(uploads).run()
    next(b for b in at.button if b.label == "Classify").click().run()
    assert not at.exception
    assert any("quota" in e.value for e in at.error)


def test_attack_session_folders_are_removed_when_the_session_ends(tmp_path, home, models_root):
    at = page("batch", model_name="tiny").run()
    at.radio[1].set_value("Upload images").run()
    buffer = io.BytesIO()
    class_image("dark", 3).save(buffer, "JPEG")
    at.file_uploader[0].set_value([("a.jpg", buffer.getvalue(), "image/jpeg")]).run()
    next(b for b in at.button if b.label == "Classify").click().run()
    assert not at.exception and not at.error
    folder = Path(at.session_state["batch_results"]).parent
    assert folder.is_dir()
    del at  # the session ends (its state is dropped) ...
    page("models").run()  # ... and the server runs another script (the last run's globals are replaced)
    gc.collect()
    assert not folder.exists(), "the session's upload folder outlived the session"


def test_attack_stale_session_folders_are_swept_at_start(tmp_path, home, models_root):
    sessions = tmp_path / "sessions"
    stale = sessions / "999999999-deadbeef" / "uploads"
    stale.mkdir(parents=True)
    (stale / "left-over.jpg").write_bytes(b"x" * 1000)
    at = AppTest.from_file(str(PROJECT_ROOT / "app.py"), default_timeout=120).run()
    assert not at.exception
    assert not stale.parent.exists()


# --- 9. Untrusted names rendered as Markdown ------------------------------------------------------------------
def test_attack_markdown_image_in_names_is_shown_as_text(tmp_path, home, models_root):
    root = data_root(home)
    image = write(root / "cam" / f"{PAYLOAD.replace('/', '_')}.jpg", class_image("dark", 4), quality=90)
    results = root / "run.csv"
    results_csv(results, [row(image, label=PAYLOAD, status="review", relpath=f"cam/{image.name}")])
    at = page("review").run()
    at.text_input(key="rv_results_path").set_value(str(results)).run()
    assert not at.exception
    assert any("example.invalid" in s for s in markdown_strings(at))  # the class button and the caption, as text
    assert_no_markdown_image(at)
    at.text_input(key="rv_reviewer").set_value(PAYLOAD).run()
    next(b for b in at.button if (b.key or "").startswith("rv_c")).click().run()  # "Saved <label> ..."
    assert_no_markdown_image(at)
    at.button(key="rv_back_1").click().run()  # "Reviewed as <label> by <reviewer>"
    assert not at.exception
    assert sum("example.invalid" in s for s in markdown_strings(at)) >= 2  # caption, "Reviewed as"
    assert_no_markdown_image(at)
    # A report whose model name and file names carry the payload.
    dashboard = page("dashboard").run()
    dashboard.radio[0].set_value("Open a saved report (JSON)").run()
    dashboard.file_uploader(key="dashboard_json").set_value(
        ("r.json", report_json([str(image)], name=PAYLOAD), "application/json")).run()
    next(b for b in dashboard.button if b.label == "Open").click().run()
    assert not dashboard.exception
    assert any("example.invalid" in s for s in markdown_strings(dashboard))
    assert_no_markdown_image(dashboard)
    # A folder name typed on the Batch page comes back in the error line.
    batch = page("batch", model_name="tiny").run()
    batch.text_input[0].input(PAYLOAD).run()
    batch.button[0].click().run()
    assert batch.error and any("example.invalid" in e.value for e in batch.error)
    assert_no_markdown_image(batch)
    # An uploaded photo's file name in the Identify caption.
    identify = page("identify", model_name="tiny").run()
    buffer = io.BytesIO()
    class_image("dark", 5).save(buffer, "JPEG")
    identify.file_uploader(key="identify_upload").set_value((f"{PAYLOAD}.jpg", buffer.getvalue(), "image/jpeg")).run()
    assert not identify.exception
    assert any("example.invalid" in s for s in markdown_strings(identify))
    assert_no_markdown_image(identify)


# --- 10. Home as the allowed folder, NUL bytes, symlinks out of the folder -------------------------------------
@pytest.mark.parametrize("text", ["~/.ssh", "{home}/.ssh", "{home}", "~"])
def test_attack_home_and_hidden_folders_are_not_allowed(text, home, models_root):
    at = page("batch", model_name="tiny").run()
    at.text_input[0].input(text.format(home=home)).run()
    at.button[0].click().run()
    assert not at.exception
    assert at.error and "batch_results" not in at.session_state
    assert data_root(home).is_dir()  # the dedicated data folder was made on first use


def test_attack_nul_byte_in_review_and_train_paths_is_one_line(home, models_root):
    at = page("review").run()
    at.text_input(key="rv_results_path").set_value("run\x00.csv").run()
    assert not at.exception
    assert at.error and "\n" not in at.error[0].value
    train = page("train").run()
    train.text_input[0].input("data\x00/../..")
    next(b for b in train.button if b.label == "Train").click()
    train.run()
    assert not train.exception
    assert train.error and "\n" not in train.error[0].value


def test_attack_batch_does_not_follow_file_links_out_of_the_folder(tmp_path, home, models_root):
    root = data_root(home)
    write(root / "cam" / "ok.jpg", class_image("dark", 6), quality=90)
    root.joinpath("cam", "leak.jpg").symlink_to(home / ".ssh" / "photo.jpg")
    at = page("batch", model_name="tiny").run()
    at.text_input[0].input("cam").run()
    at.button[0].click().run()
    assert not at.exception and not at.error
    rows = {r["relpath"]: r for r in csv.DictReader(open(at.session_state["batch_results"]))}
    assert rows["ok.jpg"]["status"] != "error"
    assert rows["leak.jpg"]["status"] == "error" and rows["leak.jpg"]["label"] == ""
    assert "outside the allowed folder" in rows["leak.jpg"]["error"]


# --- defence in depth ------------------------------------------------------------------------------------------
def test_torchscript_in_a_model_folder_needs_trust(tmp_path, home, models_root, monkeypatch):
    """A TorchScript file in a model folder is code: loaded by name (as the app does) only when the
    operator lists the model in WILDID_TRUSTED_MODELS; the CLI needs --trust-checkpoint."""
    from wildid.cards import load_card
    from wildid.errors import CheckpointError
    from wildid.registry import load_predictor

    copy = tmp_path / "stolen-by-folder"
    folder = models_root / "scripted"
    folder.mkdir()
    (folder / "model.pt").write_bytes(exfiltrating_torchscript(tmp_path, home / ".ssh" / "id_rsa", copy))
    load_card(models_root / "tiny").replace(name="scripted", weights="model.pt", classes=("a", "b")).save(folder)
    with pytest.raises(CheckpointError, match="TorchScript") as err:
        load_predictor("scripted")
    assert "--trust-checkpoint" in str(err.value) and not copy.exists()
    proc = subprocess.run([sys.executable, "-m", "wildid.cli", "predict", str(home / ".ssh" / "photo.jpg"), "--model",
                           "scripted"], cwd=PROJECT_ROOT, env=dict(os.environ), capture_output=True, text=True, timeout=180)
    assert proc.returncode != 0 and "TorchScript" in proc.stderr and not copy.exists()
    monkeypatch.setenv("WILDID_TRUSTED_MODELS", "scripted")  # the operator's explicit choice: now it runs
    load_predictor("scripted").predict([class_image("dark", 1)])
    assert copy.read_text().strip() == SECRET_TEXT


def test_app_refuses_an_open_address_without_a_secret(home):
    """app.py repeats the launcher's check, for a server started by hand with --server.address."""
    from streamlit import config

    before = config.get_option("server.address")
    config.set_option("server.address", "0.0.0.0")
    try:
        at = AppTest.from_file(str(PROJECT_ROOT / "app.py"), default_timeout=120).run()
    finally:
        config.set_option("server.address", before)
    assert not at.exception
    assert [e.value for e in at.error] and "WILDID_ACCESS_SECRET" in at.error[0].value
    assert not at.title and not at.sidebar.selectbox  # no page, no model picker


def test_serve_needs_a_long_secret(monkeypatch):
    from wildid import serve

    for address in ("0.0.0.0", "", "192.168.1.20", "::", "wildid.example.org"):
        with pytest.raises(serve.ServeError):
            serve.check_serving(address, "")
        with pytest.raises(serve.ServeError, match="at least 12"):
            serve.check_serving(address, "lynx2024")
        serve.check_serving(address, "a-long-enough-secret")
    for address in ("127.0.0.1", "127.0.0.5", "::1", "localhost"):
        serve.check_serving(address, "")
    assert serve.secret_matches("a-long-enough-secret", "a-long-enough-secret")
    assert not serve.secret_matches("a-long-enough-secreT", "a-long-enough-secret")
    assert not serve.secret_matches("", "")
    monkeypatch.setenv("WILDID_ACCESS_SECRET", "a-long-enough-secret")
    proc = subprocess.run([sys.executable, "-m", "wildid.serve", "--address", "0.0.0.0", "--port", "8765", "--dry-run"],
                          cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0
    assert "--server.address 0.0.0.0 --server.port 8765" in proc.stdout
