"""Crash consistency of the writers that RELIABILITY.md lists and tests/test_faults.py does not cover.

Each test kills (or fails) a writer at the moments that matter and checks what the next
reader and the retry see: galleries (``wildid gallery add``) and the sorted copies of
``wildid batch --sort-into``.  The results CSV, the review journal, trained models, caches and
Camtrap DP packages are covered by tests/test_faults.py, tests/test_review.py,
tests/test_exit_codes.py and tests/test_staged.py; the last test here checks that every test the
writers table names exists.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from tests.imagegen import class_image, write
from tests.reidgen import write_individuals
from tests.test_reid import MODEL, _handcrafted_master, reid_env  # noqa: F401 - fixtures
from wildid import batch, cli, reid

PROJECT_ROOT = Path(__file__).resolve().parent.parent


def check_gallery(folder: Path) -> dict[tuple[str, str], int]:
    """What a reader relies on: every index row points at a stored image with that sha1 and at an
    embedding row that exists.  Returns (individual, sha1) -> number of index rows."""
    gallery = reid.Gallery(folder)
    embeddings = gallery.embeddings  # raises when a row points past the stored embeddings
    assert len(embeddings) == len(gallery.entries)
    counts: dict[tuple[str, str], int] = {}
    for entry in gallery.entries:
        image = folder / entry.image
        assert image.is_file(), entry
        assert hashlib.sha1(image.read_bytes()).hexdigest() == entry.sha1, entry
        counts[(entry.individual, entry.sha1)] = counts.get((entry.individual, entry.sha1), 0) + 1
    return counts


def expected_images(folder: Path) -> set[tuple[str, str]]:
    return {(p.parent.name, hashlib.sha1(p.read_bytes()).hexdigest()) for p in folder.rglob("*.jpg")}


def _index_rows(path: Path) -> int:
    return max(0, path.read_bytes().count(b"\n") - 1) if path.is_file() else 0


def test_gallery_add_killed_with_kill_9_then_rerun_files_each_image_once(reid_env, tmp_path):
    """kill -9 at several moments of `wildid gallery add` (before the gallery exists, mid-way, late);
    after each kill the gallery opens and every index row is whole; the rerun completes with
    exit 0 and files every image exactly once."""
    folder = write_individuals(tmp_path / "known", range(25), range(4), size=128)
    wanted = expected_images(folder)
    gallery_dir = reid_env / "lynx"
    index = gallery_dir / reid.INDEX_FILE
    cmd = [sys.executable, "-m", "wildid.cli", "gallery", "add", str(folder), "--gallery", "lynx", "--model", MODEL, "-q"]
    env = dict(os.environ)
    kills = []
    for rows_before_kill in (None, 12, 48):  # None: as soon as the gallery folder appears (mid-create)
        proc = subprocess.Popen(cmd, cwd=PROJECT_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 180

        def waiting() -> bool:
            if rows_before_kill is None:
                return not gallery_dir.exists()
            return _index_rows(index) <= rows_before_kill

        while waiting() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.002)
        if proc.poll() is not None:
            pytest.fail(f"gallery add ended before the kill: {proc.stderr.read().decode()[-1500:]}")
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
        assert proc.returncode == -signal.SIGKILL
        if (gallery_dir / reid.GALLERY_FILE).is_file():
            counts = check_gallery(gallery_dir)
            assert all(n == 1 for n in counts.values()) and set(counts) <= wanted
            kills.append(len(counts))
        else:
            kills.append(0)
    assert kills[-1] < len(wanted), "the last kill must land before the end"
    done = subprocess.run(cmd, cwd=PROJECT_ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-1500:]
    counts = check_gallery(gallery_dir)
    assert set(counts) == wanted and all(n == 1 for n in counts.values())
    print(f"\ngallery add killed with {kills} of {len(wanted)} images filed; the rerun filed all, each once")


def test_gallery_torn_index_line_is_ignored_and_the_next_add_repairs_it(reid_env, tmp_path):
    folder = write_individuals(tmp_path / "known", range(3), range(2), size=96)
    embedder = reid.load_embedder(MODEL)
    gallery = reid.Gallery.create("g", embedder.card)
    reid.add_folder(gallery, folder, embedder)
    index = gallery.folder / reid.INDEX_FILE
    whole = index.read_bytes()
    last = whole[: -1].rfind(b"\n") + 1
    index.write_bytes(whole[: last + (len(whole) - last) // 2])  # the last row half-written
    counts = check_gallery(gallery.folder)  # the torn row is not a row yet: 5 whole ones
    assert sum(counts.values()) == 5
    again = reid.add_folder(reid.Gallery.open("g"), folder, embedder)
    assert len(again.added) == 1 and len(again.skipped) == 5
    counts = check_gallery(gallery.folder)
    assert set(counts) == expected_images(folder) and all(n == 1 for n in counts.values())
    assert index.read_bytes().startswith(whole[:last])  # rows before the torn one: unchanged bytes


def test_gallery_add_interrupted_after_writing_images_does_not_block_the_retry(reid_env, tmp_path, monkeypatch):
    """An add that dies after copying its images but before storing their embeddings leaves image
    files no index row refers to; the retry writes over them instead of failing."""
    folder = write_individuals(tmp_path / "known", range(2), range(3), size=96)
    embedder = reid.load_embedder(MODEL)
    gallery = reid.Gallery.create("g", embedder.card)

    def killed(*args, **kwargs):
        raise KeyboardInterrupt  # stands in for the kill: nothing after this point runs

    with monkeypatch.context() as patch:
        patch.setattr(np, "save", killed)
        with pytest.raises(KeyboardInterrupt):
            reid.add_folder(gallery, folder, embedder)
    orphans = list((gallery.folder / "images").rglob("*.jpg"))
    assert orphans and not reid.Gallery.open("g").entries
    reid.add_folder(reid.Gallery.open("g"), folder, embedder)
    counts = check_gallery(gallery.folder)
    assert set(counts) == expected_images(folder) and all(n == 1 for n in counts.values())


def test_sort_into_copy_killed_mid_file_leaves_no_truncated_copy(models_root, tmp_path, monkeypatch):
    root = tmp_path / "frames"
    for i in range(6):
        write(root / "cam1" / f"IMG_{i:04d}.jpg", class_image(("dark", "bright", "striped")[i % 3], i, (160, 120)))
    out = tmp_path / "results.csv"
    assert cli.main(["batch", str(root), "--model", "tiny", "--out", str(out), "-q", "--empty-threshold", "off"]) == 0
    dest = tmp_path / "sorted"
    real_copy = shutil.copy2
    calls = {"n": 0}

    def copy_then_die(source, target, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:  # the third file: half of it written, then the process is gone
            Path(target).write_bytes(Path(source).read_bytes()[:100])
            raise KeyboardInterrupt
        return real_copy(source, target, *args, **kwargs)

    with monkeypatch.context() as patch:
        patch.setattr(shutil, "copy2", copy_then_die)
        with pytest.raises(KeyboardInterrupt):
            batch.sort_into(out, dest)
    visible = [p for p in dest.rglob("*") if p.is_file() and not p.name.startswith(".")]
    assert len(visible) == 2  # the two finished copies; the torn third is under a hidden .part name
    batch.sort_into(out, dest)  # the rerun (sorting after a resume, say) completes the tree
    copies = sorted(p for p in dest.rglob("*.jpg") if not p.name.startswith("."))
    assert len(copies) == 6
    originals = {p.name: p.read_bytes() for p in root.rglob("*.jpg")}
    assert all(copy.read_bytes() == originals[copy.name] for copy in copies)  # none truncated


def test_json_export_interrupted_keeps_the_previous_file(models_root, tmp_path, monkeypatch):
    root = tmp_path / "frames"
    for i in range(4):
        write(root / f"IMG_{i:04d}.jpg", class_image(("dark", "bright", "striped")[i % 3], i, (160, 120)))
    out, js = tmp_path / "results.csv", tmp_path / "results.json"
    assert cli.main(["batch", str(root), "--model", "tiny", "--out", str(out), "-q", "--json-out", str(js)]) == 0
    before = js.read_bytes()
    real_dumps = batch.json.dumps
    calls = {"n": 0}

    def dumps_then_die(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:  # two images written to the new file, then the process is gone
            raise KeyboardInterrupt
        return real_dumps(*args, **kwargs)

    with monkeypatch.context() as patch:
        patch.setattr(batch.json, "dumps", dumps_then_die)
        with pytest.raises(KeyboardInterrupt):
            batch.export_json(out, js)
    assert js.read_bytes() == before  # the reader sees the old export whole, never half a new one
    batch.export_json(out, js)
    assert not (tmp_path / "results.json.tmp").exists()


def test_review_export_killed_mid_copy_leaves_no_truncated_image(tmp_path, monkeypatch):
    from tests.test_review import make_results
    from wildid import review

    results = make_results(tmp_path)
    frame = review.read_results(results)
    for path in frame["path"][:4]:
        review.append_label(results, path, "bobcat", "ana")
    dest = tmp_path / "export"
    real = shutil.copyfileobj
    calls = {"n": 0}

    def copy_then_die(src, dst, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:  # the third image: half of it, then the process is gone
            dst.write(src.read()[:50])
            raise KeyboardInterrupt
        return real(src, dst, *args, **kwargs)

    with monkeypatch.context() as patch:
        patch.setattr(shutil, "copyfileobj", copy_then_die)
        with pytest.raises(KeyboardInterrupt):
            review.export_training_set(results, dest)
    visible = [p for p in dest.rglob("*") if p.is_file() and not p.name.startswith(".")]
    assert len(visible) == 2 and not (dest / "labels.csv").exists()
    summary = review.export_training_set(results, dest)  # the retry completes the export
    copies = sorted(p for p in dest.rglob("*") if p.is_file() and not p.name.startswith(".") and p.suffix != ".csv")
    assert summary.n_images == 4 and len(copies) == 4  # no "-1" duplicate of a torn copy
    originals = {Path(p).name: Path(p).read_bytes() for p in frame["path"][:4]}
    assert sorted(c.read_bytes() for c in copies) == sorted(originals.values())


def test_every_test_named_in_the_writers_table_exists():
    """RELIABILITY.md's writers table names a test per row; each named test is a real test function."""
    import re

    root = Path(__file__).resolve().parent.parent
    rows = [line for line in (root / "RELIABILITY.md").read_text(encoding="utf-8").splitlines()
            if line.startswith("| ") and not line.startswith("| writer") and "`tests/" in line]
    assert len(rows) >= 9, "the writers table lists every writer"
    named = []
    for row in rows:
        current = None
        for file, name in re.findall(r"`(tests/[\w/]+\.py)?::(\w+)`", row):
            current = file or current
            assert current, f"{name} is named without its file"
            named.append((current, name))
    missing = [f"{file}::{name}" for file, name in named
               if not re.search(rf"^def {name}\(", (root / file).read_text(encoding="utf-8"), re.M)]
    assert not missing, missing
    assert len(named) >= 20
