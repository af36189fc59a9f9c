"""Faults: kill -9 during `wildid batch` and `wildid train`, and a full disk while writing results.

What must hold: a resumed batch ends with exactly one row per file, rows written before a
kill keep their bytes, a killed training leaves models/NAME either without a card (ignored)
or with a card and weights that load together, and a full disk never leaves a torn row
behind for the next reader.
"""

from __future__ import annotations

import csv
import errno
import hashlib
import io
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.imagegen import CLASS_STYLES, class_image, write

PROJECT_ROOT = Path(__file__).resolve().parent.parent
N_FRAMES = 30


def _frames(root: Path) -> list[Path]:
    styles = list(CLASS_STYLES.values())
    return [write(root / f"cam{i % 3}" / f"IMG_{i:04d}.jpg", class_image(styles[i % 3], i, (96, 72)), quality=85)
            for i in range(N_FRAMES)]


def _complete_prefix(path: Path) -> bytes:
    data = path.read_bytes()
    return data[: data.rfind(b"\n") + 1]


def _rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def _wait_for_rows(out: Path, proc: subprocess.Popen, at_least: int, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if out.exists() and out.read_bytes().count(b"\n") >= 1 + at_least:
            return
        if proc.poll() is not None:
            pytest.fail(f"batch ended before the kill: {proc.stderr.read().decode()[-1500:]}")
        time.sleep(0.02)
    pytest.fail("no rows appeared in time")


def test_kill_9_during_batch_twice_then_resume(models_root, tmp_path):
    root = tmp_path / "frames"
    frames = _frames(root)
    out = tmp_path / "results.csv"
    cmd = [sys.executable, "-m", "wildid.cli", "batch", str(root), "--model", "tiny", "--out", str(out), "--recursive",
           "--batch-size", "3", "--quiet"]
    env = dict(os.environ, WILDID_MODELS=str(models_root), WILDID_BATCH_DELAY="0.15")
    prefixes = []
    for kill_after in (4, 14):
        args = cmd + (["--resume"] if out.exists() else [])
        proc = subprocess.Popen(args, cwd=PROJECT_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        _wait_for_rows(out, proc, kill_after)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
        assert proc.returncode == -signal.SIGKILL
        prefix = _complete_prefix(out)
        rows = _rows(out)
        assert kill_after <= len(rows) < N_FRAMES, "the kill must land mid-run"
        prefixes.append((prefix, hashlib.sha256(prefix).hexdigest(), len(rows)))
    done = subprocess.run(cmd + ["--resume"], cwd=PROJECT_ROOT, env=dict(env, WILDID_BATCH_DELAY="0"),
                          capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr[-1500:]
    final = out.read_bytes()
    for prefix, digest, _ in prefixes:  # rows written before each kill: byte for byte unchanged
        assert hashlib.sha256(final[: len(prefix)]).hexdigest() == digest
    rows = _rows(out)
    paths = [row["path"] for row in rows]
    assert len(rows) == N_FRAMES and len(set(paths)) == N_FRAMES
    assert set(paths) == {str(p) for p in frames}
    assert all(row["status"] == "accepted" and row["label"] in CLASS_STYLES for row in rows)
    assert final.endswith(b"\n") and final.count(b"\n") == N_FRAMES + 1
    print(f"\nbatch kill -9 x2: rows at kills {[n for *_, n in prefixes]}, final {len(rows)} unique rows, "
          f"prefix sha256 {prefixes[-1][1][:12]} unchanged")


# --- training --------------------------------------------------------------------------------------------------
def _labelled(root: Path) -> Path:
    for label, style in CLASS_STYLES.items():
        for seed in range(6):
            write(root / label / f"{seed}.jpg", class_image(style, seed + 20), quality=88)
    return root


def _model_state(folder: Path) -> str:
    """'absent' (no card: not a model), or 'complete' after checking card and weights load together."""
    from wildid.cards import load_card
    from wildid.registry import clear_cache, load_predictor

    if not (folder / "card.toml").exists():
        return "absent"
    card = load_card(folder)
    clear_cache()
    predictor = load_predictor(str(folder))
    assert predictor.card.classes == tuple(sorted(CLASS_STYLES))
    [prediction] = predictor.predict([class_image("bright", 77)])
    assert prediction.label in CLASS_STYLES
    assert card.has_weights
    return "complete"


@pytest.mark.parametrize("delay", [0.0, 0.05])
def test_kill_9_during_train_leaves_nothing_half_written(models_root, tmp_path, delay):
    """Kill as soon as models/NAME appears (plus ``delay``): the save is the dangerous moment."""
    data = _labelled(tmp_path / "data")
    target = models_root / "killed"
    cmd = [sys.executable, "-m", "wildid.cli", "train", str(data), "--out", "killed", "--arch", "test_resnet",
           "--weights", "none", "--mode", "linear", "--epochs", "3", "--folds", "0", "--no-cache", "--quiet"]
    env = dict(os.environ, WILDID_MODELS=str(models_root), WILDID_CACHE=str(tmp_path / "cache"))
    proc = subprocess.Popen(cmd, cwd=PROJECT_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while not target.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.002)
    if delay:
        time.sleep(delay)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    state = _model_state(target)
    leftovers = sorted(p.name for p in target.glob("*")) if target.exists() else []
    print(f"\ntrain kill -9 (+{delay}s after models/killed appeared, rc {proc.returncode}): {state}, files {leftovers}")
    # A rerun works: --overwrite replaces whatever is there, and the result is a complete model.
    again = subprocess.run(cmd + ["--overwrite"], cwd=PROJECT_ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr[-1500:]
    assert _model_state(target) == "complete"
    assert not list(target.glob("*.tmp")), "no temporary files after a completed save"


# --- disk full ------------------------------------------------------------------------------------------------------
class FullDisk(io.RawIOBase):
    """An append-only file on a 'disk' with ``budget`` bytes left: writes what fits, then ENOSPC,
    like write(2) on a full file system."""

    def __init__(self, path: Path, budget: int):
        self.fd = os.open(path, os.O_WRONLY | os.O_APPEND)
        self.budget = budget

    def writable(self) -> bool:
        return True

    def write(self, data) -> int:
        data = bytes(data)
        if self.budget <= 0:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        chunk = data[: self.budget]
        written = os.write(self.fd, chunk)
        self.budget -= written
        return written

    def fileno(self) -> int:
        return self.fd

    def close(self) -> None:
        if not self.closed:
            os.close(self.fd)
        super().close()


def _full_disk_after(monkeypatch, budget_after_header: int):
    """Patch the batch writer onto a nearly full disk; returns the original open_results."""
    from wildid import batch

    original = batch.open_results

    def open_results(out, *args, **kwargs):
        handle = original(out, *args, **kwargs)
        handle.close()  # the header (if new) is on disk; from here the disk fills up
        raw = FullDisk(Path(out), budget_after_header)
        return io.TextIOWrapper(io.BufferedWriter(raw, 256), encoding="utf-8", newline="")

    monkeypatch.setattr(batch, "open_results", open_results)
    return original


def test_disk_full_while_writing_results(models_root, tmp_path, monkeypatch):
    from wildid.batch import COLUMNS, run_batch
    from wildid.registry import load_predictor

    root = tmp_path / "frames"
    frames = _frames(root)
    out = tmp_path / "results.csv"
    original = _full_disk_after(monkeypatch, 1500)  # a few rows fit, then the disk is full mid-row
    with pytest.raises(Exception) as err:  # noqa: PT011 - which type is asserted below
        run_batch(root, load_predictor("tiny"), out, recursive=True, batch_size=4)
    message = str(err.value)
    assert isinstance(err.value, OSError) and err.value.errno == errno.ENOSPC or "space" in message.lower(), message
    data = out.read_bytes()
    complete = _complete_prefix(out)
    rows_before = _rows_from_bytes(complete)
    assert 1 <= len(rows_before) < N_FRAMES
    assert all(len(row) == len(COLUMNS) for row in csv.reader(io.StringIO(complete.decode())))
    torn = len(data) - len(complete)
    from wildid import batch

    monkeypatch.setattr(batch, "open_results", original)
    # Space freed: a resume drops any torn tail, keeps the complete rows byte for byte, finishes the rest.
    run_batch(root, load_predictor("tiny"), out, recursive=True, resume=True, batch_size=4)
    final = out.read_bytes()
    assert final.startswith(complete)
    rows = _rows(out)
    assert len(rows) == N_FRAMES and len({r["path"] for r in rows}) == N_FRAMES
    assert {r["path"] for r in rows} == {str(p) for p in frames}
    print(f"\ndisk full: {len(rows_before)} complete rows kept, torn tail {torn} bytes, resume -> {len(rows)} rows")


def _rows_from_bytes(data: bytes) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(data.decode("utf-8"))))


def test_disk_full_is_one_line_and_leaves_no_torn_row(models_root, tmp_path, monkeypatch, capsys):
    from wildid.cli import main

    root = tmp_path / "frames"
    _frames(root)
    out = tmp_path / "results.csv"
    _full_disk_after(monkeypatch, 1500)
    code = main(["batch", str(root), "--model", "tiny", "--out", str(out), "--recursive", "--batch-size", "4", "--quiet"])
    assert code == 1  # the run started and failed: exit 1, what was written is resumable
    assert capsys.readouterr().err.startswith("error: ")
    assert out.read_bytes().endswith(b"\n")
