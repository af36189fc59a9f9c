"""Batch: a generated camera-trap folder -> one results row per file; resume; exports; sort."""

from __future__ import annotations

import csv
import io
import json
import os
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest
from PIL import Image

from tests.imagegen import CLASS_STYLES, class_image, truncated_jpeg, write
from wildid import batch
from wildid.batch import COLUMNS, export_json, extract_zip, iter_batch, run_batch, sort_into
from wildid.guard import check_path
from wildid.errors import DataError
from wildid.registry import load_predictor

PROJECT_ROOT = Path(__file__).resolve().parent.parent
STYLE_OF = {style: label for label, style in CLASS_STYLES.items()}


def with_exif(img: Image.Image, stamp: str, model: str = "TrailCam X") -> Image.Exif:
    exif = Image.Exif()
    exif[272] = model
    exif.get_ifd(0x8769)[36867] = stamp
    return exif


@pytest.fixture()
def camera_folder(tmp_path) -> tuple[Path, dict[str, str]]:
    """Nested folder: expected label (or error reason) per relative path."""
    root = tmp_path / "frames"
    expected: dict[str, str] = {}

    def image(rel: str, style: str, seed: int, fmt: str | None = None, stamp: str | None = None):
        img = class_image(style, seed, (160, 120))
        kwargs = {"exif": with_exif(img, stamp)} if stamp else {}
        write(root / rel, img, fmt, **kwargs)
        expected[rel] = STYLE_OF[style]

    # cam1: a burst of three (10 s apart), then a frame 5 minutes later
    image("cam1/IMG_0001.jpg", "dark", 1, stamp="2024:02:10 22:00:00")
    image("cam1/IMG_0002.jpg", "dark", 2, stamp="2024:02:10 22:00:10")
    image("cam1/IMG_0003.jpg", "bright", 3, stamp="2024:02:10 22:00:20")
    image("cam1/IMG_0004.jpg", "striped", 4, stamp="2024:02:10 22:05:20")
    # cam2/day1: duplicate names of cam1 files, other formats
    image("cam2/day1/IMG_0001.jpg", "bright", 5, stamp="2024:02:11 01:00:00")
    image("cam2/day1/IMG_0002.png", "striped", 6, "PNG")
    image("cam2/day1/frame.tif", "dark", 7, "TIFF")
    image("cam2/day1/frame.webp", "bright", 8, "WEBP")
    image("cam2/frame.bmp", "striped", 9, "BMP")
    image("top.jpg", "bright", 10)
    write(root / "cam1" / "IMG_0005.jpg", truncated_jpeg())
    expected["cam1/IMG_0005.jpg"] = "error:truncated"
    write(root / "cam2" / "notes.txt", b"battery changed 2024-02-11\n")
    expected["cam2/notes.txt"] = "error:not an image"
    write(root / "cam2" / "day1" / "empty.jpg", b"")
    expected["cam2/day1/empty.jpg"] = "error:empty file"
    write(root / ".hidden.jpg", class_image("dark", 11))  # hidden: not a frame
    return root, expected


def read_rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        assert tuple(reader.fieldnames) == COLUMNS
        return list(reader)


def test_generated_folder_one_row_per_file_with_statuses(models_root, camera_folder, tmp_path):
    root, expected = camera_folder
    predictor = load_predictor("tiny")
    out = tmp_path / "results.csv"
    summary = run_batch(root, predictor, out, recursive=True, batch_size=4, workers=2)
    rows = read_rows(out)
    by_rel = {row["relpath"]: row for row in rows}
    assert len(rows) == len(expected) == summary.processed == summary.total
    assert set(by_rel) == set(expected)
    assert summary.statuses == {"accepted": 10, "error": 3}
    for rel, want in expected.items():
        row = by_rel[rel]
        assert row["path"] == str(root / rel)
        if want.startswith("error:"):
            assert row["status"] == "error" and want.split(":", 1)[1] in row["error"], row
            assert row["label"] == "" and row["confidence"] == ""
        else:
            assert row["status"] == "accepted" and row["label"] == want, (rel, row)
            assert float(row["confidence"]) >= 0.5
            top = json.loads(row["top_k"])
            assert top[0][0] == want and len(top) == 3 and abs(sum(p for _, p in top) - 1) < 1e-3
            assert (row["width"], row["height"]) == ("160", "120")
            mean = float(row["mean_intensity"])
            assert mean < 60 if want == "gray fox" else mean > 100
            assert row["dark"] == row["overexposed"] == "False" and float(row["laplacian_var"]) > 0
        assert row["model"] == "tiny" and row["model_version"] == predictor.card.version
    # EXIF timestamps, camera, sequences per camera folder
    assert by_rel["cam1/IMG_0001.jpg"]["datetime"] == "2024-02-10T22:00:00"
    assert by_rel["cam1/IMG_0001.jpg"]["camera"] == "TrailCam X"
    seq = {rel: by_rel[rel]["sequence_id"] for rel in by_rel}
    assert seq["cam1/IMG_0001.jpg"] == seq["cam1/IMG_0002.jpg"] == seq["cam1/IMG_0003.jpg"] == "cam1#0001"
    assert seq["cam1/IMG_0004.jpg"] == "cam1#0002"
    assert seq["cam2/day1/IMG_0001.jpg"].startswith("cam2/day1#")
    assert by_rel["top.jpg"]["datetime"] == "" and by_rel["cam2/day1/IMG_0002.png"]["camera"] == ""


def test_dark_flag_and_threshold_review(models_root, camera_folder, tmp_path):
    root, expected = camera_folder
    out = tmp_path / "r.csv"
    summary = run_batch(root, load_predictor("tiny"), out, threshold=0.999, recursive=False)  # top level only
    rows = read_rows(out)
    assert [row["relpath"] for row in rows] == ["top.jpg"]
    assert rows[0]["status"] == "review" and summary.statuses == {"review": 1}


def test_existing_results_need_resume_or_overwrite(models_root, camera_folder, tmp_path):
    root, _ = camera_folder
    out = tmp_path / "r.csv"
    run_batch(root, load_predictor("tiny"), out, recursive=False)
    with pytest.raises(DataError, match="--resume"):
        run_batch(root, load_predictor("tiny"), out, recursive=False)
    run_batch(root, load_predictor("tiny"), out, overwrite=True, recursive=False)
    assert len(read_rows(out)) == 1
    (tmp_path / "other.csv").write_text("a,b\n1,2\n")
    with pytest.raises(DataError, match="not a wildid results file"):
        run_batch(root, load_predictor("tiny"), tmp_path / "other.csv", resume=True)
    with pytest.raises(DataError, match="not a folder"):
        run_batch(tmp_path / "nope", load_predictor("tiny"), tmp_path / "x.csv")


def test_interrupted_generator_then_resume_completes_without_duplicates(models_root, camera_folder, tmp_path):
    root, expected = camera_folder
    out = tmp_path / "r.csv"
    steps = iter_batch(root, load_predictor("tiny"), out, recursive=True, batch_size=2)
    # the totals, then two batches (batches stop at folder ends: top.jpg alone is the first)
    written = sum(len(next(steps).rows) for _ in range(3))
    steps.close()
    assert written == 3 and len(read_rows(out)) == written
    with out.open("a") as handle:  # a row cut off mid-write by a crash
        handle.write(str(root / "cam2" / "frame.bmp") + ",cam2/frame.bmp,cof")
    summary = run_batch(root, load_predictor("tiny"), out, recursive=True, resume=True, batch_size=3)
    rows = read_rows(out)
    assert summary.skipped == written and summary.processed == len(expected) - written
    assert sorted(row["relpath"] for row in rows) == sorted(expected)
    again = run_batch(root, load_predictor("tiny"), out, recursive=True, resume=True)
    assert again.processed == 0 and len(read_rows(out)) == len(expected)


def test_kill_and_resume_cli_loses_and_duplicates_nothing(models_root, tmp_path):
    root = tmp_path / "frames"
    styles = list(CLASS_STYLES.values())
    for i in range(24):
        write(root / f"cam{i % 2}" / f"IMG_{i:04d}.jpg", class_image(styles[i % 3], i, (128, 96)))
    out = tmp_path / "results.csv"
    cmd = [sys.executable, "-m", "wildid.cli", "batch", str(root), "--model", "tiny", "--out", str(out),
           "--recursive", "--batch-size", "2", "--quiet"]
    env = dict(os.environ, **{batch.DELAY_ENV: "0.25"})
    proc = subprocess.Popen(cmd, cwd=PROJECT_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if out.exists() and len(out.read_text().splitlines()) >= 1 + 6:
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=10)
    written = read_rows(out)
    assert 6 <= len(written) < 24, "the kill must land mid-way"
    done = subprocess.run(cmd + ["--resume"], cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert f"{len(written)} already done" in done.stdout
    rows = read_rows(out)
    paths = [row["path"] for row in rows]
    assert len(paths) == len(set(paths)) == 24
    assert set(paths) == {str(p) for p in root.rglob("*.jpg")}
    assert rows[: len(written)] == written  # earlier rows untouched
    assert all(row["status"] == "accepted" for row in rows)


def test_cli_batch_json_and_sort(models_root, camera_folder, tmp_path):
    from wildid.cli import main

    root, expected = camera_folder
    out, js, sorted_dir = tmp_path / "res.csv", tmp_path / "res.json", tmp_path / "sorted"
    code = main(["batch", str(root), "--model", "tiny", "--out", str(out), "-r", "--json-out", str(js),
                 "--sort-into", str(sorted_dir), "--quiet", "--empty-threshold", "off"])
    assert code == 0  # the run completed; the files that could not be read are error rows
    data = json.loads(js.read_text())
    assert data["info"]["format_version"] == "1.4" and data["info"]["classifier"] == "tiny"
    assert data["detection_categories"]["1"] == "animal"
    categories = data["classification_categories"]
    assert sorted(categories.values()) == sorted(CLASS_STYLES)
    images = {image["file"]: image for image in data["images"]}
    assert set(images) == set(expected)
    assert "failure" in images["cam2/notes.txt"]
    top = images["cam1/IMG_0004.jpg"]
    assert categories[top["classifications"][0][0]] == "coyote"
    assert top["detections"] == [] or top["detections"][0]["classifications"] == top["classifications"]
    # copies keep the sub-folders, so equal names from two cameras do not collide; originals stay
    copied = sorted(p.relative_to(sorted_dir).as_posix() for p in sorted_dir.rglob("*") if p.is_file())
    assert "gray fox/cam1/IMG_0001.jpg" in copied and "bobcat/cam2/day1/IMG_0001.jpg" in copied
    assert len(copied) == 10 and all((root / rel).is_file() for rel in expected)
    assert main(["batch", str(root), "--model", "tiny", "--out", str(out)]) == 2  # exists, no --resume
    # with an empty threshold, frames like the background go to _empty/ and lose their detection
    assert main(["batch", str(root), "--model", "tiny", "--out", str(out), "-r", "--resume", "--quiet",
                 "--json-out", str(js), "--empty-threshold", "0.0", "--sort-into", str(tmp_path / "s2")]) == 0
    assert len(list((tmp_path / "s2" / "_empty").rglob("*.jpg"))) >= 4
    again = {image["file"]: image for image in json.loads(js.read_text())["images"]}
    assert again["cam1/IMG_0001.jpg"]["detections"] == [] and again["cam1/IMG_0001.jpg"]["max_detection_conf"] == 0.0
    assert again["top.jpg"]["detections"]  # a lone frame has no background, so no empty_score


def test_sort_symlink_and_empty_bucket(models_root, camera_folder, tmp_path):
    root, _ = camera_folder
    out = tmp_path / "r.csv"
    run_batch(root, load_predictor("tiny"), out, recursive=True)
    counts = sort_into(out, tmp_path / "links", "symlink", empty_threshold=0.0)  # every scored frame "empty"
    links = [p for p in (tmp_path / "links").rglob("*") if p.is_symlink()]
    assert len(links) == sum(counts.values()) == 10
    assert all(link.resolve().is_relative_to(root) for link in links)
    assert counts["_empty"] >= 4  # the frames of cam1 have a background (>= 3 frames)
    assert sort_into(out, tmp_path / "links", "symlink", empty_threshold=0.0) == {}  # idempotent
    with pytest.raises(DataError):
        sort_into(out, tmp_path / "x", "move")


def test_export_json_finds_classes_from_results(models_root, camera_folder, tmp_path):
    root, _ = camera_folder
    out = tmp_path / "r.csv"
    run_batch(root, load_predictor("tiny"), out, recursive=False)
    data = json.loads(export_json(out, tmp_path / "r.json", empty_threshold=None).read_text())
    assert sorted(data["classification_categories"].values()) == sorted(CLASS_STYLES)
    [image] = data["images"]
    assert image["file"] == "top.jpg" and image["detections"][0]["bbox"] == [0.0, 0.0, 1.0, 1.0]


def test_results_frame_types(models_root, camera_folder, tmp_path):
    root, _ = camera_folder
    out = tmp_path / "r.csv"
    run_batch(root, load_predictor("tiny"), out, recursive=True)
    frame = batch.results_frame(out)
    assert len(frame) == 13 and frame["confidence"].dtype.kind == "f"
    assert frame.loc[frame["status"] == "error", "confidence"].isna().all()
    assert set(frame["dark"].dropna()) <= {True, False}


def test_allowed_folder_and_safe_zip(tmp_path):
    allowed = tmp_path / "allowed"
    (allowed / "frames").mkdir(parents=True)
    assert check_path("frames", allowed, kind="folder", what="folder") == (allowed / "frames").resolve()
    assert check_path(str(allowed / "frames"), allowed, kind="folder", what="folder") == (allowed / "frames").resolve()
    for bad in ("../", "/etc", str(tmp_path), "frames/../../"):
        with pytest.raises(DataError, match="outside"):
            check_path(bad, allowed, kind="folder", what="folder")
    with pytest.raises(DataError, match="no such folder"):
        check_path("missing", allowed, kind="folder", what="folder")

    def zipped(entries: dict[str, bytes]) -> io.BytesIO:
        buffer = io.BytesIO()
        with zipfile.ZipFile(buffer, "w") as archive:
            for name, data in entries.items():
                archive.writestr(name, data)
        buffer.seek(0)
        return buffer

    good = extract_zip(zipped({"a/x.jpg": b"1", "b/x.jpg": b"2"}), tmp_path / "good")
    assert (good / "a" / "x.jpg").read_bytes() == b"1" and (good / "b" / "x.jpg").read_bytes() == b"2"
    for name in ("../evil.jpg", "/abs/evil.jpg", "a/../../evil.jpg"):
        with pytest.raises(DataError, match="outside"):
            extract_zip(zipped({"ok.jpg": b"1", name: b"2"}), tmp_path / "bad")
        assert not (tmp_path / "bad").exists() and not (tmp_path / "evil.jpg").exists()
    with pytest.raises(DataError, match="limit"):
        extract_zip(zipped({"big.bin": b"0" * 5000}), tmp_path / "big", max_bytes=1000)
    with pytest.raises(DataError, match="not a readable zip"):
        extract_zip(io.BytesIO(b"nope"), tmp_path / "nozip")


def test_resume_refuses_results_of_another_model(models_root, camera_folder, tmp_path):
    root, _ = camera_folder
    out = tmp_path / "r.csv"
    run_batch(root, load_predictor("tiny"), out, recursive=False)
    with pytest.raises(DataError, match="written by model 'tiny'"):
        run_batch(root, load_predictor("tiny-vit"), out, resume=True, recursive=False)


def test_save_uploads_keeps_equal_names_apart(tmp_path):
    class Upload(io.BytesIO):
        def __init__(self, name: str, data: bytes):
            super().__init__(data)
            self.name = name

    folder = batch.save_uploads([Upload("a.jpg", b"1"), Upload("../a.jpg", b"2"), Upload("a.jpg", b"3")], tmp_path / "up")
    assert sorted(p.name for p in folder.iterdir()) == ["a.jpg", "a_1.jpg", "a_2.jpg"]
    assert sorted(p.read_bytes() for p in folder.iterdir()) == [b"1", b"2", b"3"]


def test_broken_and_looping_symlinks_get_an_error_row(models_root, tmp_path):
    """A dangling link, a two-link loop and a self-loop are one error row each ("broken symbolic
    link"); a good link to a frame is classified, a link to a folder is not followed."""
    root = tmp_path / "frames"
    write(root / "IMG_0001.jpg", class_image("bright", 1, (96, 72)))
    (tmp_path / "elsewhere").mkdir()
    os.symlink("missing.jpg", root / "dangling.jpg")
    os.symlink("loop_b.jpg", root / "loop_a.jpg")
    os.symlink("loop_a.jpg", root / "loop_b.jpg")
    os.symlink("loop_self.jpg", root / "loop_self.jpg")
    os.symlink("IMG_0001.jpg", root / "good_link.jpg")
    os.symlink(tmp_path / "elsewhere", root / "folder_link", target_is_directory=True)
    out = tmp_path / "results.csv"
    summary = run_batch(root, load_predictor("tiny"), out, recursive=True, batch_size=2)
    by_rel = {row["relpath"]: row for row in read_rows(out)}
    assert sorted(by_rel) == ["IMG_0001.jpg", "dangling.jpg", "good_link.jpg", "loop_a.jpg", "loop_b.jpg",
                              "loop_self.jpg"]
    assert summary.statuses == {"accepted": 2, "error": 4}
    for name in ("dangling.jpg", "loop_a.jpg", "loop_b.jpg", "loop_self.jpg"):
        row = by_rel[name]
        assert row["status"] == "error" and row["label"] == "", row
        assert row["error"] == f"{name}: broken symbolic link (its target is missing or loops)"
    assert by_rel["good_link.jpg"]["label"] == by_rel["IMG_0001.jpg"]["label"] == "bobcat"
    # A resume finds every row already there (the links are in the done set too).
    again = run_batch(root, load_predictor("tiny"), out, recursive=True, resume=True)
    assert again.processed == 0 and again.skipped == 6
