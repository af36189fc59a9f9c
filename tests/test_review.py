"""Review core: journal durability and replay, queues, live metrics, merge, export (originals untouched)."""

from __future__ import annotations

import csv
import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from tests.imagegen import CLASS_STYLES, class_image
from wildid import review
from wildid.errors import DataError

CLASSES = list(CLASS_STYLES)  # gray fox, bobcat, coyote
# (true class, predicted label, confidence): three per confidence region, some wrong.
ROWS = [
    ("gray fox", "gray fox", 0.97), ("bobcat", "bobcat", 0.95), ("coyote", "coyote", 0.92),
    ("gray fox", "gray fox", 0.85), ("bobcat", "coyote", 0.81), ("coyote", "coyote", 0.75),
    ("gray fox", "bobcat", 0.65), ("bobcat", "bobcat", 0.62), ("coyote", "gray fox", 0.55),
    ("gray fox", "gray fox", 0.45), ("bobcat", "gray fox", 0.41), ("coyote", "coyote", 0.38),
]
THRESHOLD = 0.7


def make_results(folder: Path, rows=ROWS, name: str = "run.csv", with_error: bool = True) -> Path:
    """A batch-style results CSV (the brief's column order) over generated images in folder/images."""
    images = folder / "images"
    writer_rows = []
    for index, (truth, label, confidence) in enumerate(rows):
        relpath = f"cam{index % 2 + 1}/img{index:03d}.jpg"
        path = images / relpath
        path.parent.mkdir(parents=True, exist_ok=True)
        class_image(CLASS_STYLES[truth], seed=300 + index).save(path, quality=90)
        others = [c for c in CLASSES if c != label]
        rest = (1 - confidence) / 2
        top_k = [[label, confidence], [others[0], rest + 0.01], [others[1], rest - 0.01]]
        writer_rows.append({
            "path": str(path), "relpath": relpath, "label": label, "confidence": confidence,
            "top_k": json.dumps(top_k), "status": "accepted" if confidence >= THRESHOLD else "review",
            "error": "", "empty_score": 0.1, "width": 96, "height": 80, "mean_intensity": 100.0,
            "laplacian_var": 50.0, "dark": False, "overexposed": False, "blurry": False,
            "datetime": f"2024-05-01T10:{index:02d}:00", "camera": f"cam{index % 2 + 1}",
            "sequence_id": f"seq{index // 3}", "model": "tiny", "model_version": "1",
        })
    if with_error:
        broken = images / "broken.jpg"
        broken.write_bytes(b"not a jpeg")
        writer_rows.append({**writer_rows[0], "path": str(broken), "relpath": "broken.jpg", "label": "",
                            "confidence": "", "top_k": "[]", "status": "error", "error": "not an image"})
    out = folder / name
    with open(out, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=review.RESULTS_COLUMNS)
        writer.writeheader()
        writer.writerows(writer_rows)
    return out


def sha256_tree(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture()
def results(tmp_path) -> Path:
    return make_results(tmp_path)


def paths(results_path: Path) -> list[str]:
    return list(review.read_results(results_path)["path"])


def test_read_results_types_and_torn_row(tmp_path, results):
    frame = review.read_results(results)
    assert len(frame) == 13 and frame["confidence"].dtype == float
    assert frame.loc[0, "label"] == "gray fox" and frame.loc[12, "status"] == "error"
    assert review.parse_top_k(frame.loc[4, "top_k"])[0] == ("coyote", 0.81)
    # batch still writing: a half row at the end is not a row yet
    torn = tmp_path / "torn.csv"
    torn.write_bytes(results.read_bytes() + b"/x/half.jpg,half,bob")
    assert len(review.read_results(torn)) == 13
    with pytest.raises(DataError, match="missing column"):
        (tmp_path / "bad.csv").write_text("a,b\n1,2\n")
        review.read_results(tmp_path / "bad.csv")
    with pytest.raises(DataError, match="journal"):
        review.read_results(review.journal_path(results))


def test_journal_append_and_replay_last_wins(results):
    p = paths(results)
    review.append_label(results, p[0], "gray fox", "ana", "gray fox", 0.97)
    review.append_label(results, p[4], "coyote", "ana", "coyote", 0.81)
    review.append_label(results, p[4], "bobcat", "ben", "coyote", 0.81)  # corrected later
    journal = review.journal_path(results)
    assert journal.name == "run.reviewed.csv" and journal.parent == results.parent
    lines = journal.read_text().splitlines()
    assert lines[0] == ",".join(review.JOURNAL_COLUMNS) and len(lines) == 4
    replay = review.replay_journal(results)
    assert len(replay.entries) == 3 and replay.labels == {p[0]: "gray fox", p[4]: "bobcat"}
    assert replay.latest.set_index("path").loc[p[4], "reviewer"] == "ben"
    assert replay.skipped_lines == 0 and not replay.torn_tail
    # readable with plain pandas (the dashboard's view of the contract)
    assert list(pd.read_csv(journal).columns) == list(review.JOURNAL_COLUMNS)


def test_journal_replay_after_crash_with_torn_last_line(results):
    p = paths(results)
    review.append_label(results, p[0], "gray fox", "ana", "gray fox", 0.97)
    review.append_label(results, p[1], "bobcat", "ana", "bobcat", 0.95)
    journal = review.journal_path(results)
    # a crash in the middle of writing the third entry: half a line, no newline
    with open(journal, "ab") as handle:
        handle.write(f"{p[2]},coy".encode())
    replay = review.replay_journal(results)
    assert replay.labels == {p[0]: "gray fox", p[1]: "bobcat"}
    assert replay.torn_tail and replay.skipped_lines == 1
    # the app restarts and the reviewer labels the image again: the fragment stays apart
    review.append_label(results, p[2], "coyote", "ana", "coyote", 0.92)
    replay = review.replay_journal(results)
    assert replay.labels == {p[0]: "gray fox", p[1]: "bobcat", p[2]: "coyote"}
    assert not replay.torn_tail and replay.skipped_lines == 1
    assert journal.read_text().splitlines()[3] == f"{p[2]},coy"


def test_journal_crash_kill_9_loses_nothing_committed(results, tmp_path):
    """A real process appends labels and is killed: every acknowledged label is in the journal."""
    p = paths(results)[:6]
    script = tmp_path / "writer.py"
    script.write_text(
        "import os, sys\nfrom wildid import review\n"
        f"paths = {p!r}\n"
        "for i, path in enumerate(paths):\n"
        "    review.append_label(sys.argv[1], path, 'bobcat', 'robot', 'gray fox', 0.5)\n"
        "    print(i, flush=True)\n"
        "    if i == 3:\n"
        "        os.kill(os.getpid(), 9)\n"
    )
    proc = subprocess.run([sys.executable, str(script), str(results)], capture_output=True, text=True,
                          cwd=Path(__file__).resolve().parents[1], timeout=60)
    assert proc.returncode == -9
    acknowledged = proc.stdout.split()
    assert acknowledged == ["0", "1", "2", "3"]
    assert set(review.replay_journal(results).labels) == set(p[:4])


def test_torn_header_only_file_starts_over(results):
    journal = review.journal_path(results)
    journal.write_bytes(b"path,true_la")
    assert review.replay_journal(results).latest.empty
    review.append_label(results, paths(results)[0], "bobcat")
    assert journal.read_text().splitlines()[0] == ",".join(review.JOURNAL_COLUMNS)
    assert review.replay_journal(results).latest.loc[0, "reviewer"] == review.ANONYMOUS


def test_append_rejects_empty_and_multiline(results):
    with pytest.raises(DataError, match="empty"):
        review.append_label(results, "x.jpg", "  ")
    with pytest.raises(DataError, match="one line"):
        review.append_label(results, "x.jpg", "a\nb")
    assert not review.journal_path(results).exists()


def test_queues(results):
    frame = review.read_results(results)
    below = review.build_queue(frame, review.QueueSpec(review.QUEUE_BELOW_THRESHOLD))
    assert list(below["confidence"]) == [0.38, 0.41, 0.45, 0.55, 0.62, 0.65]  # status review, hardest first
    below8 = review.build_queue(frame, review.QueueSpec(review.QUEUE_BELOW_THRESHOLD, threshold=0.8))
    assert len(below8) == 7 and below8["confidence"].max() < 0.8
    per_class = review.build_queue(frame, review.QueueSpec(review.QUEUE_PER_CLASS, label="coyote"))
    assert list(per_class["confidence"]) == [0.38, 0.75, 0.81, 0.92]
    spec = review.QueueSpec(review.QUEUE_RANDOM, n=5, seed=7)
    first, again = review.build_queue(frame, spec), review.build_queue(frame, spec)
    assert list(first["path"]) == list(again["path"]) and len(first) == 5
    assert "error" not in set(first["status"])
    assert list(review.build_queue(frame, review.QueueSpec(review.QUEUE_RANDOM, n=5, seed=8))["path"]) != list(first["path"])
    per_bin = review.build_queue(frame, review.QueueSpec(review.QUEUE_PER_BIN, per_bin=1, seed=0, bins=(0, 0.5, 0.7, 0.9, 1)))
    bins = list(review.confidence_bin(per_bin["confidence"], (0, 0.5, 0.7, 0.9, 1)).astype(str))
    assert bins == ["0.00-0.50", "0.50-0.70", "0.70-0.90", "0.90-1.00"]
    assert len(review.build_queue(frame, review.QueueSpec(review.QUEUE_PER_BIN, per_bin=10))) == 12
    with pytest.raises(DataError):
        review.build_queue(frame, review.QueueSpec(review.QUEUE_PER_CLASS))


def test_class_options(results):
    frame = review.read_results(results)
    assert review.class_options(frame) == sorted(CLASSES)
    assert review.class_options(frame, ["coyote", "bobcat", "gray fox"]) == ["coyote", "bobcat", "gray fox"]
    many = [f"c{i}" for i in range(12)] + ["coyote"]
    assert review.class_options(frame, many)[0] == "coyote"  # the most predicted first when > 9


def label_truthfully(results: Path, indices) -> None:
    frame = review.read_results(results)
    for i in indices:
        truth, label, confidence = ROWS[i]
        review.append_label(results, frame.loc[i, "path"], truth, "ana", label, confidence)


def test_live_metrics(results):
    frame = review.read_results(results)
    empty = review.review_metrics(frame, review.replay_journal(results))
    assert empty.n_reviewed == 0 and empty.accuracy is None
    label_truthfully(results, range(12))
    metrics = review.review_metrics(frame, review.replay_journal(results), bins=(0, 0.5, 0.7, 0.9, 1))
    # wrong predictions: rows 4, 6, 8, 10 -> 8 of 12 right
    assert metrics.n_reviewed == 12 and metrics.n_correct == 8 and metrics.accuracy == pytest.approx(8 / 12)
    per_bin = metrics.per_bin.set_index("bin")
    assert per_bin.loc["0.90-1.00", "accuracy"] == 1.0 and per_bin.loc["0.00-0.50", "n"] == 3
    assert per_bin.loc["0.70-0.90", "accuracy"] == pytest.approx(2 / 3)
    assert per_bin.loc["0.50-0.70", "accuracy"] == pytest.approx(1 / 3)
    assert per_bin["share"].sum() == pytest.approx(1.0)
    assert metrics.estimated_accuracy == pytest.approx(8 / 12)
    assert metrics.accepted_accuracy == pytest.approx(5 / 6)  # rows 0-5 accepted, row 4 wrong
    assert metrics.corrections["n"].sum() == 4
    q = review.build_queue(frame, review.QueueSpec(review.QUEUE_BELOW_THRESHOLD))
    assert review.progress(q, review.replay_journal(results)) == (6, 6)


def test_merge_final(results):
    frame = review.read_results(results)
    label_truthfully(results, [4, 6, 9])  # accepted-but-wrong, review-wrong, review-right
    review.append_label(results, "/elsewhere/old.jpg", "coyote", "ana", "bobcat", 0.3)  # not in results
    final = review.merge_final(frame, review.replay_journal(results))
    assert list(final.columns) == list(review.FINAL_COLUMNS)
    by_path = final.set_index("path")
    # accepted rows 0-5: auto, except 4 which a human corrected
    for i in (0, 1, 2, 3, 5):
        row = by_path.loc[frame.loc[i, "path"]]
        assert (row["label"], row["label_source"], row["reviewer"]) == (ROWS[i][1], "auto", "")
    corrected = by_path.loc[frame.loc[4, "path"]]
    assert (corrected["label"], corrected["label_source"], corrected["predicted_label"]) == ("bobcat", "manual", "coyote")
    assert corrected["reviewer"] == "ana" and corrected["reviewed_at"].startswith("20")
    assert by_path.loc[frame.loc[6, "path"], "label"] == "gray fox"
    assert by_path.loc[frame.loc[9, "path"], "label_source"] == "manual"
    # unreviewed review rows (7, 8, 10, 11) and the error row are left out; the orphan label is kept
    for i in (7, 8, 10, 11, 12):
        assert frame.loc[i, "path"] not in by_path.index
    assert by_path.loc["/elsewhere/old.jpg", "label"] == "coyote"
    assert len(final) == 5 + 3 + 1
    assert (by_path.loc[frame.loc[0, "path"], ["camera", "sequence_id", "datetime"]] == ["cam1", "seq0", "2024-05-01T10:00:00"]).all()
    out, written = review.write_final(results)
    assert out.name == "run.final.csv" and len(pd.read_csv(out)) == len(written) == 9
    with pytest.raises(DataError, match="never replaced"):
        review.write_final(results, results)


def test_export_never_changes_originals(results, tmp_path):
    before = sha256_tree(tmp_path)
    label_truthfully(results, [4, 6, 9, 10])
    frame = review.read_results(results)
    journal_hash = hashlib.sha256(review.journal_path(results).read_bytes()).hexdigest()
    summary = review.export_training_set(results, tmp_path / "train-set")
    assert summary.n_images == 4 and summary.per_class == {"bobcat": 2, "gray fox": 2}
    copies = sorted(p.relative_to(tmp_path / "train-set").as_posix() for p in (tmp_path / "train-set").rglob("*.jpg"))
    assert copies == ["bobcat/cam1__img004.jpg", "bobcat/cam1__img010.jpg", "gray fox/cam1__img006.jpg",
                      "gray fox/cam2__img009.jpg"]
    labels = pd.read_csv(summary.labels_csv)
    assert sorted(labels["label"]) == ["bobcat", "bobcat", "gray fox", "gray fox"]
    assert set(labels["group"]) == {"seq1", "seq2", "seq3"}
    # copies are byte-identical to their originals
    original = Path(frame.loc[4, "path"])
    assert (tmp_path / "train-set/bobcat/cam1__img004.jpg").read_bytes() == original.read_bytes()
    # exporting again reuses identical files instead of duplicating; a clashing file is never overwritten
    clash = tmp_path / "train-set/gray fox/cam1__img006.jpg"
    clash.write_bytes(b"someone else's file")
    again = review.export_training_set(results, tmp_path / "train-set")
    assert again.n_images == 4 and clash.read_bytes() == b"someone else's file"
    assert (tmp_path / "train-set/gray fox/cam1__img006-1.jpg").is_file()
    assert len(list((tmp_path / "train-set").rglob("*.jpg"))) == 5
    # CSV layout: no copies, paths point at the originals
    csv_summary = review.export_training_set(results, tmp_path / "train.csv", layout="csv", include_auto=True)
    table = pd.read_csv(tmp_path / "train.csv")
    assert csv_summary.n_images == 9 and set(table["path"]) <= {str(Path(p).resolve()) for p in frame["path"]}
    review.write_final(results)
    # exporting into the image folder itself is refused
    with pytest.raises(DataError, match="contains the original images"):
        review.export_training_set(results, tmp_path / "images")
    after = sha256_tree(tmp_path)
    for name, digest in before.items():
        assert after[name] == digest, f"{name} changed"
    assert hashlib.sha256(review.journal_path(results).read_bytes()).hexdigest() == journal_hash


def test_relative_paths_resolve_from_results_folder(tmp_path):
    results = make_results(tmp_path, with_error=False)
    frame = review.read_results(results)
    text = results.read_text().replace(str(tmp_path / "images") + "/", "images/")
    moved = tmp_path / "relative.csv"
    moved.write_text(text)
    rel = review.read_results(moved)
    assert rel.loc[0, "path"] == "images/cam1/img000.jpg"
    assert review.resolve_image_path(rel.loc[0, "path"], rel.loc[0, "relpath"], tmp_path) == tmp_path / frame.loc[0, "path"]
    review.append_label(moved, rel.loc[0, "path"], "gray fox")
    assert review.export_training_set(moved, tmp_path / "out").n_images == 1


def test_allowed_root(tmp_path, monkeypatch):
    from wildid.guard import check_path

    monkeypatch.setenv("WILDID_ALLOWED_ROOT", str(tmp_path))
    assert check_path(tmp_path / "a" / "b.csv", must_exist=False) == (tmp_path / "a" / "b.csv").resolve()
    with pytest.raises(DataError, match="outside the allowed folder"):
        check_path(tmp_path.parent / "x.csv", must_exist=False)
    with pytest.raises(DataError):
        check_path(tmp_path / ".." / "x.csv", must_exist=False)
    folder = tmp_path / "session" / "review"
    stored = review.store_upload("run.csv", b"path,label\n", folder)
    assert stored.parent == folder and review.store_upload("run.csv", b"path,label\n", folder) == stored


def test_cli_merge_export_stats(results, tmp_path, capsys):
    from wildid.cli import main

    label_truthfully(results, [4, 6])
    assert main(["review", "merge", str(results), "--out", str(tmp_path / "final.csv")]) == 0
    assert len(pd.read_csv(tmp_path / "final.csv")) == 7
    assert main(["review", "export", str(results), "--out", str(tmp_path / "ds")]) == 0
    assert sorted(p.parent.name for p in (tmp_path / "ds").rglob("*.jpg")) == ["bobcat", "gray fox"]
    assert main(["review", "stats", str(results)]) == 0
    out = capsys.readouterr().out
    assert "reviewed 2" in out and "accuracy 0.0%" in out
    assert main(["review", "merge", str(results), "--out", str(results)]) == 2
    assert main(["review", "export", str(results), "--out", str(tmp_path / "by-camera.csv"), "--layout", "csv",
                 "--group-by", "folder"]) == 0
    assert list(pd.read_csv(tmp_path / "by-camera.csv")["group"]) == ["cam1", "cam1"]


def test_replay_with_quoted_fields_and_torn_quote(results):
    """Paths or labels with commas are quoted; a torn quoted fragment never swallows later lines."""
    review.append_label(results, "/data/a,b.jpg", 'odd "label", really', "ana")
    journal = review.journal_path(results)
    with open(journal, "ab") as handle:
        handle.write(b'"/data/c.jpg,bob')  # crash inside a quoted field
    review.append_label(results, "/data/d.jpg", "coyote", "ana")
    replay = review.replay_journal(results)
    assert replay.labels == {"/data/a,b.jpg": 'odd "label", really', "/data/d.jpg": "coyote"}
    assert replay.skipped_lines == 1


def with_empty_scores(results: Path, scores: dict[int, float]) -> Path:
    """The same results with some rows' empty_score set (row index -> score)."""
    frame = pd.read_csv(results, dtype=str, keep_default_na=False)
    for index, score in scores.items():
        frame.loc[index, "empty_score"] = str(score)
    frame.to_csv(results, index=False)
    return results


def test_likely_empty_queue_then_the_rest_in_file_order(results):
    # rows 0 (accepted), 9 and 11 (review) look empty; row 9 is flagged "not empty" by a reviewer
    with_empty_scores(results, {0: 0.99, 9: 0.95, 11: 0.97, 3: 0.5})
    frame = review.read_results(results)
    spec = review.QueueSpec(review.QUEUE_LIKELY_EMPTY, empty_threshold=0.9)
    assert list(review.build_queue(frame, spec).index) == [0, 11, 9]  # most certainly empty first
    flagged = {frame.loc[9, "path"]}
    assert list(review.build_queue(frame, spec, not_empty=flagged).index) == [0, 11]
    rest = review.build_queue(frame, review.QueueSpec(review.QUEUE_TO_LABEL, empty_threshold=0.9), not_empty=flagged)
    # status review, not likely empty, plus the flagged frame; in file order (cam1 before cam2, by name)
    assert set(rest.index) == {6, 7, 8, 9, 10}
    assert list(rest["relpath"]) == sorted(rest["relpath"])
    # a higher threshold moves frames back to labelling
    strict = review.build_queue(frame, review.QueueSpec(review.QUEUE_TO_LABEL, empty_threshold=0.98))
    assert set(strict.index) == {6, 7, 8, 9, 10, 11}
    # with the project's own labels, frames accepted under a label outside them need one too
    own = review.build_queue(frame, review.QueueSpec(review.QUEUE_TO_LABEL, empty_threshold=0.9, labels=("coyote", "empty")))
    assert set(own.index) == {1, 3, 6, 7, 8, 10}  # 0, 9, 11 likely empty; 2, 4, 5 accepted as coyote
    assert review.QueueSpec(review.QUEUE_LIKELY_EMPTY, empty_threshold=0.9).describe() == "likely empty at empty_score 0.9"


def test_append_labels_is_one_durable_write(results):
    frame = review.read_results(results)
    items = [(frame.loc[i, "path"], "empty", frame.loc[i, "label"], frame.loc[i, "confidence"]) for i in (0, 1, 2)]
    entries = review.append_labels(results, items, "ana")
    assert [e["true_label"] for e in entries] == ["empty"] * 3
    assert len({e["reviewed_at"] for e in entries}) == 1
    replay = review.replay_journal(results)
    assert replay.labels == {frame.loc[i, "path"]: "empty" for i in (0, 1, 2)}
    assert review.append_labels(results, [], "ana") == []
    with pytest.raises(DataError):
        review.append_labels(results, [(frame.loc[3, "path"], " ", "", None)], "ana")
    assert len(review.replay_journal(results).entries) == 3  # a bad entry writes nothing


def test_training_export_grouped_by_camera_folder(results, tmp_path):
    label_truthfully(results, [0, 1, 2, 3])
    summary = review.export_training_set(results, tmp_path / "set.csv", layout="csv", group_by="folder")
    table = pd.read_csv(summary.labels_csv)
    assert list(table["group"]) == ["cam1", "cam2", "cam1", "cam2"]
    assert review.camera_folder("/x/site/cam9/a.jpg", "") == "cam9"
    assert review.camera_folder("/x/a.jpg", "a.jpg") == "x"
    with pytest.raises(DataError, match="grouping"):
        review.export_training_set(results, tmp_path / "bad.csv", layout="csv", group_by="moon")
