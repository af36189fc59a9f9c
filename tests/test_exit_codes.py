"""Exit status scripts can trust, failed runs that leave nothing behind, one set of defaults.

    0  the run completed (files that could not be read are rows / warnings, counted)
    1  the run itself failed after it had started; with --strict also any unreadable file
    2  bad usage, found before any work began

A `wildid batch ... && next-step` chain must survive one corrupt frame in a season, and a
run that fails at its start must not leave a results file that refuses the corrected rerun.
"""

from __future__ import annotations

import csv
import errno
import os
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.imagegen import CLASS_STYLES, class_image, truncated_jpeg, write
from tests.test_reid import MODEL as REID_MODEL
from tests.test_reid import _handcrafted_master, known_folder, reid_env  # noqa: F401 - fixtures
from wildid import batch, cli, defaults
from wildid.batch import COLUMNS, HEADER_LINE
from wildid.cli import EXIT_OK, EXIT_RUN_FAILED, EXIT_USAGE, main

PROJECT_ROOT = Path(__file__).resolve().parent.parent
STYLES = list(CLASS_STYLES.values())


def rows_of(path: Path) -> list[dict[str, str]]:
    with path.open(newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        assert tuple(reader.fieldnames) == COLUMNS
        return list(reader)


def summary_line(text: str) -> str:
    [line] = [line for line in text.splitlines() if " files classified (" in line]
    return line


@pytest.fixture()
def nested(tmp_path) -> Path:
    """site/camera folders only: nothing directly in the top folder (a typical card dump)."""
    root = tmp_path / "season"
    for i in range(9):
        write(root / "site1" / f"cam{i % 2}" / f"IMG_{i:04d}.jpg", class_image(STYLES[i % 3], i, (96, 72)), quality=85)
    return root


@pytest.fixture()
def damaged(tmp_path) -> Path:
    """40 damaged JPEGs (truncated, garbage, empty), no good frame at all."""
    root = tmp_path / "damaged"
    for i in range(40):
        data = (truncated_jpeg(class_image(STYLES[i % 3], i, (128, 96))), b"\xff\xd8\xff not a jpeg", b"")[i % 3]
        write(root / f"cam{i % 4}" / f"IMG_{i:04d}.jpg", data)
    return root


# --- wildid batch: 0 ----------------------------------------------------------------------------------------
def test_batch_exit_0_when_the_run_completes(models_root, nested, tmp_path, capsys):
    out = tmp_path / "results.csv"
    assert main(["batch", str(nested), "--model", "tiny", "--out", str(out), "--quiet"]) == EXIT_OK
    assert len(rows_of(out)) == 9  # recursive by default: the frames in site1/cam0 and site1/cam1
    assert summary_line(capsys.readouterr().out).startswith("9 files classified (")


def test_batch_40_damaged_files_exit_0_with_40_error_rows_and_strict_exit_1(models_root, damaged, tmp_path, capsys):
    out = tmp_path / "results.csv"
    assert main(["batch", str(damaged), "--model", "tiny", "--out", str(out), "--quiet"]) == EXIT_OK
    rows = rows_of(out)
    assert len(rows) == 40 and {row["status"] for row in rows} == {"error"}
    assert all(row["error"] and "\n" not in row["error"] for row in rows)
    assert "0 accepted, 0 review, 40 error" in summary_line(capsys.readouterr().out)

    strict_out = tmp_path / "strict.csv"
    assert main(["batch", str(damaged), "--model", "tiny", "--out", str(strict_out), "--quiet", "--strict"]) == EXIT_RUN_FAILED
    captured = capsys.readouterr()
    assert len(rows_of(strict_out)) == 40  # --strict changes the status only: the results are all there
    assert "--strict: 40 file(s) could not be read" in captured.err
    # --strict after a resume counts the error rows of the earlier run too
    assert main(["batch", str(damaged), "--model", "tiny", "--out", str(out), "--quiet", "--resume",
                 "--strict"]) == EXIT_RUN_FAILED
    # ... and a clean folder stays 0 under --strict
    good = tmp_path / "good"
    write(good / "a.jpg", class_image("dark", 1, (96, 72)))
    assert main(["batch", str(good), "--model", "tiny", "--out", str(tmp_path / "g.csv"), "-q", "--strict"]) == EXIT_OK


# --- wildid batch: 2 (bad usage, nothing written) -----------------------------------------------------------
def test_batch_bad_usage_exit_2_and_nothing_written(models_root, nested, tmp_path, capsys):
    out = tmp_path / "results.csv"
    assert main(["batch", str(tmp_path / "missing"), "--model", "tiny", "--out", str(out)]) == EXIT_USAGE
    assert "not a folder" in capsys.readouterr().err
    assert main(["batch", str(nested), "--model", "no-such-model", "--out", str(out)]) == EXIT_USAGE
    assert main(["batch", str(nested), "--model", "tiny", "--out", str(tmp_path)]) == EXIT_USAGE  # a folder
    assert "is a folder" in capsys.readouterr().err
    for bad in (["--empty-threshold", "2"], ["--no-such-option"]):
        with pytest.raises(SystemExit) as exit_info:  # argparse: usage line + exit 2
            main(["batch", str(nested), "--model", "tiny", "--out", str(out), *bad])
        assert exit_info.value.code == EXIT_USAGE
        assert "usage: wildid" in capsys.readouterr().err
    assert not out.exists()

    assert main(["batch", str(nested), "--model", "tiny", "--out", str(out), "-q"]) == EXIT_OK
    before = out.read_bytes()
    assert main(["batch", str(nested), "--model", "tiny", "--out", str(out), "-q"]) == EXIT_USAGE
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "already exists: add --resume" in err
    assert out.read_bytes() == before


def test_no_images_directly_in_folder_names_the_fix_and_leaves_no_file(models_root, nested, tmp_path, capsys):
    out = tmp_path / "results.csv"
    code = main(["batch", str(nested), "--model", "tiny", "--out", str(out), "--no-recursive", "-q"])
    assert code == EXIT_USAGE
    err = capsys.readouterr().err
    assert err == f"error: no files directly in {nested}; 9 in sub-folders: include sub-folders " \
                  f"(--recursive, or tick 'Include sub-folders')\n"
    assert not out.exists()  # nothing to refuse the corrected rerun
    assert main(["batch", str(nested), "--model", "tiny", "--out", str(out), "-q"]) == EXIT_OK
    assert len(rows_of(out)) == 9


def test_failed_start_with_overwrite_keeps_the_old_results(models_root, nested, tmp_path):
    out = tmp_path / "results.csv"
    assert main(["batch", str(nested), "--model", "tiny", "--out", str(out), "-q"]) == EXIT_OK
    before = out.read_bytes()
    empty = tmp_path / "empty-card"
    empty.mkdir()
    assert main(["batch", str(empty), "--model", "tiny", "--out", str(out), "--overwrite", "-q"]) == EXIT_USAGE
    assert out.read_bytes() == before  # --overwrite replaces the file with the first new rows, not before


# --- the header-only file of a failed start ----------------------------------------------------------------
@pytest.mark.parametrize("leftover", [HEADER_LINE, HEADER_LINE[:17], b""], ids=["header", "torn-header", "empty"])
def test_header_only_results_file_does_not_block_the_rerun(models_root, nested, tmp_path, capsys, leftover):
    """An older wildid wrote the header before counting files: a failed start left a header-only
    results.csv, and the corrected rerun was refused ("already exists: add --resume").  Such a
    file holds no row: a plain rerun replaces it."""
    out = tmp_path / "results.csv"
    out.write_bytes(leftover)
    assert main(["batch", str(nested), "--model", "tiny", "--out", str(out), "-q"]) == EXIT_OK
    rows = rows_of(out)
    assert len(rows) == 9 and len({row["path"] for row in rows}) == 9
    assert out.read_bytes().startswith(HEADER_LINE) and out.read_bytes().count(HEADER_LINE) == 1


def test_header_plus_torn_first_row_does_not_block_the_rerun(models_root, nested, tmp_path):
    out = tmp_path / "results.csv"
    out.write_bytes(HEADER_LINE + b"/data/IMG_0001.jpg,IMG_0001.jpg,bobc")  # killed mid-way through row 1
    assert main(["batch", str(nested), "--model", "tiny", "--out", str(out), "-q"]) == EXIT_OK
    assert len(rows_of(out)) == 9


def test_a_file_that_is_not_ours_is_never_replaced_without_overwrite(models_root, nested, tmp_path):
    out = tmp_path / "notes.csv"
    out.write_text("site,notes\n")  # one line, but not a wildid header
    assert main(["batch", str(nested), "--model", "tiny", "--out", str(out), "-q"]) == EXIT_USAGE
    assert out.read_text() == "site,notes\n"


# --- wildid batch: 1 (the run failed after it started) -------------------------------------------------------
class _FullDisk:
    """A results handle whose every row write fails with ENOSPC (the header went through)."""

    def __init__(self, handle):
        self.handle = handle

    def write(self, text):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    def __getattr__(self, name):
        return getattr(self.handle, name)


def test_batch_run_failure_exit_1_leaves_nothing_that_blocks_the_retry(models_root, nested, tmp_path, monkeypatch,
                                                                        capsys):
    out = tmp_path / "results.csv"
    original = batch.open_results
    monkeypatch.setattr(batch, "open_results", lambda *a, **k: _FullDisk(original(*a, **k)))
    code = main(["batch", str(nested), "--model", "tiny", "--out", str(out), "-q"])
    assert code == EXIT_RUN_FAILED
    err = capsys.readouterr().err
    assert err.startswith(f"error: could not write results to {out}: No space left on device; free space and rerun")
    assert not out.exists()  # the file this run started held no row: removed
    monkeypatch.setattr(batch, "open_results", original)
    assert main(["batch", str(nested), "--model", "tiny", "--out", str(out), "-q"]) == EXIT_OK
    assert len(rows_of(out)) == 9
    # A failure after some rows (disk full mid-run, exit 1, resumable): tests/test_faults.py
    # test_disk_full_is_one_line_and_leaves_no_torn_row.


def _read_until(proc: subprocess.Popen, marker: bytes, timeout: float) -> bytes:
    """Read the child's stderr until ``marker`` appears (tqdm writes without newlines)."""
    seen = b""
    deadline = time.monotonic() + timeout
    while marker not in seen:
        if time.monotonic() > deadline or proc.poll() is not None:
            pytest.fail(f"no {marker!r} from the batch (exit {proc.poll()}): {seen[-1500:]!r}")
        ready, _, _ = select.select([proc.stderr], [], [], 0.2)
        if ready:
            seen += os.read(proc.stderr.fileno(), 65536)
    return seen


def test_kill_9_before_the_first_row_leaves_no_results_file(models_root, nested, tmp_path):
    """The run has started (files counted, progress bar shown) but no row is ready: a kill -9 there
    leaves nothing, and the plain rerun (no --resume) is not refused."""
    out = tmp_path / "results.csv"
    env = dict(os.environ, WILDID_MODELS=str(models_root), WILDID_BATCH_DELAY="30")
    cmd = [sys.executable, "-m", "wildid.cli", "batch", str(nested), "--model", "tiny", "--out", str(out)]
    proc = subprocess.Popen(cmd, cwd=PROJECT_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        _read_until(proc, b"classifying", timeout=120)
        assert not out.exists()
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == -signal.SIGKILL
    assert not out.exists()
    done = subprocess.run(cmd + ["-q"], cwd=PROJECT_ROOT, env=dict(env, WILDID_BATCH_DELAY="0"),
                          capture_output=True, text=True, timeout=180)
    assert done.returncode == EXIT_OK, done.stderr[-1500:]
    assert len(rows_of(out)) == 9


# --- the same rule for evaluate, train, gallery add -------------------------------------------------------
@pytest.fixture()
def labelled_with_a_broken_file(tmp_path) -> Path:
    root = tmp_path / "labelled"
    for label, style in CLASS_STYLES.items():
        for seed in range(4):
            write(root / label / f"{seed}.jpg", class_image(style, seed=400 + seed), quality=90)
    write(root / "bobcat" / "broken.jpg", truncated_jpeg())
    return root


def test_evaluate_exit_codes(models_root, labelled_with_a_broken_file, tmp_path, capsys):
    data = str(labelled_with_a_broken_file)
    assert main(["evaluate", data, "--model", "tiny", "-q"]) == EXIT_OK
    assert "tiny: 12 images, accuracy" in capsys.readouterr().out
    assert main(["evaluate", data, "--model", "tiny", "-q", "--strict"]) == EXIT_RUN_FAILED
    assert "1 unreadable" in capsys.readouterr().out
    assert main(["evaluate", str(tmp_path / "missing"), "--model", "tiny"]) == EXIT_USAGE


TRAIN = ["--arch", "test_resnet", "--weights", "none", "--folds", "0", "--epochs", "3", "--workers", "1", "-q"]


def test_train_data_check_exit_codes(models_root, labelled_with_a_broken_file, tmp_path, capsys):
    data = str(labelled_with_a_broken_file)
    assert main(["train", data, "--out", str(tmp_path / "m1"), *TRAIN]) == EXIT_OK
    captured = capsys.readouterr()
    assert "12 images, 3 classes, 1 skipped" in captured.out and "skipped 1 unreadable" in captured.err
    assert main(["train", data, "--out", str(tmp_path / "m2"), *TRAIN, "--strict"]) == EXIT_RUN_FAILED
    assert (tmp_path / "m2" / "model.safetensors").is_file()  # --strict changes the status, not the output
    # Every image unreadable: the run reads them all, then has nothing to train on: it failed (1).
    broken = tmp_path / "all-broken"
    for label in ("a", "b"):
        for i in range(3):
            write(broken / label / f"{i}.jpg", truncated_jpeg())
    assert main(["train", str(broken), "--out", str(tmp_path / "m3"), *TRAIN]) == EXIT_RUN_FAILED
    assert "no readable images" in capsys.readouterr().err
    assert not (tmp_path / "m3" / "card.toml").exists()
    # Bad usage, before any image is read: 2.
    assert main(["train", str(tmp_path / "missing"), "--out", str(tmp_path / "m4"), *TRAIN]) == EXIT_USAGE


def test_gallery_add_exit_codes(reid_env, known_folder, capsys):  # noqa: F811 - fixtures from test_reid
    write(known_folder / "lynx-000" / "damaged.jpg", b"\xff\xd8\xff broken")
    assert main(["gallery", "add", str(known_folder), "--gallery", "g1", "--model", REID_MODEL, "-q"]) == EXIT_OK
    assert "1 unreadable" in capsys.readouterr().out
    assert main(["gallery", "add", str(known_folder), "--gallery", "g2", "--model", REID_MODEL, "-q",
                 "--strict"]) == EXIT_RUN_FAILED
    assert main(["gallery", "add", str(known_folder / "nope"), "--gallery", "g3", "--model", REID_MODEL]) == EXIT_USAGE


def test_help_documents_the_exit_status(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    assert "exit status (every command):" in text and "--strict" in text
    for code in ("  0 ", "  1 ", "  2 ", "  130 "):
        assert code in text
    with pytest.raises(SystemExit):
        main(["batch", "--help"])
    assert "exit status (every command):" in capsys.readouterr().out


# --- one set of defaults for the Batch page and the CLI ---------------------------------------------------
def _cli_batch_defaults(folder: str = "F") -> dict:
    args = cli.build_parser().parse_args(["batch", folder])
    return {"recursive": args.recursive, "empty_threshold": args.empty_threshold, "sequence_gap": args.sequence_gap,
            "batch_size": args.batch_size, "workers": args.workers, "top_k": args.top_k}


def _page_defaults(folder: Path) -> tuple[dict, "object"]:
    from streamlit.testing.v1 import AppTest

    at = AppTest.from_file(str(PROJECT_ROOT / "app_pages" / "batch.py"), default_timeout=120)
    at.session_state["model_name"] = "tiny"
    at.run()
    values = {
        "recursive": [c for c in at.checkbox if c.label == "Include sub-folders"][0].value,
        "accept": [s for s in at.slider if s.label.startswith("Accept at")][0].value,
        "sequence_gap": [n for n in at.number_input if n.label.startswith("Sequence gap")][0].value,
        "batch_size": [n for n in at.number_input if n.label == "Batch size"][0].value,
    }
    at.text_input[0].input(str(folder)).run()
    at.button[0].click().run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    values["empty_threshold"] = [s for s in at.slider if s.label.startswith("Likely empty")][0].value
    hide = [c for c in at.checkbox if c.label.startswith("Hide ")][0]
    values["hide_empty"] = hide.value
    values["likely_empty"] = int(hide.label.split()[1])
    values["files"] = int([m for m in at.metric if m.label == "Files"][0].value)
    return values, at


@pytest.mark.parametrize("changed", [False, True], ids=["as-shipped", "changed-in-defaults"])
def test_batch_page_and_cli_read_the_same_defaults(models_root, nested, tmp_path, monkeypatch, capsys, changed):
    """The page's widgets and the CLI's options start from wildid.defaults; changing a value there
    changes both (they read the module at run time, no copies)."""
    monkeypatch.setenv("WILDID_ALLOWED_ROOT", str(nested.parent))
    if changed:
        monkeypatch.setattr(defaults, "RECURSIVE", False)
        monkeypatch.setattr(defaults, "EMPTY_THRESHOLD", 0.35)
        monkeypatch.setattr(defaults, "HIDE_LIKELY_EMPTY", False)
        monkeypatch.setattr(defaults, "SEQUENCE_GAP", 15.0)
        monkeypatch.setattr(defaults, "BATCH_SIZE", 4)
        monkeypatch.setattr(defaults, "accept_threshold", lambda card=None: 0.85)
        write(nested / "top.jpg", class_image("dark", 99, (96, 72)))  # one frame directly in the folder
    else:  # the shipped values: nested camera-trap folders are read whole; 0.9 marks likely empty
        assert (defaults.RECURSIVE, defaults.EMPTY_THRESHOLD, defaults.HIDE_LIKELY_EMPTY) == (True, 0.9, True)
    cli_defaults = _cli_batch_defaults()
    page, _ = _page_defaults(nested)
    assert cli_defaults["recursive"] == page["recursive"] == defaults.RECURSIVE
    assert cli_defaults["empty_threshold"] == page["empty_threshold"] == defaults.EMPTY_THRESHOLD
    assert cli_defaults["sequence_gap"] == page["sequence_gap"] == defaults.SEQUENCE_GAP
    assert cli_defaults["batch_size"] == page["batch_size"] == defaults.BATCH_SIZE
    assert page["hide_empty"] == defaults.HIDE_LIKELY_EMPTY
    assert page["accept"] == pytest.approx(defaults.accept_threshold(None if changed else _tiny_card()))
    assert cli.build_parser().parse_args(["evaluate", "x"]).threshold == defaults.EVALUATE_THRESHOLD

    # The same folder through both with nothing set: the same files, accepted / likely-empty alike.
    out = tmp_path / "cli.csv"
    assert main(["batch", str(nested), "--model", "tiny", "--out", str(out), "-q"]) == EXIT_OK
    rows = rows_of(out)
    line = summary_line(capsys.readouterr().out)
    assert len(rows) == page["files"] == (1 if changed else 9)
    assert f"{page['likely_empty']} likely empty at empty_score >= {defaults.EMPTY_THRESHOLD}" in line
    accept = defaults.accept_threshold(None if changed else _tiny_card())
    assert all((row["status"] == "accepted") == (float(row["confidence"]) >= accept) for row in rows)


def _tiny_card():
    from wildid.registry import find_card

    return find_card("tiny")
