"""Training-file fingerprints: exact for small sets, a bottom-k sketch that estimates for large ones."""

from __future__ import annotations

import shutil

import pytest

from wildid import fingerprint


def write_files(folder, n, prefix="f"):
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        path = folder / f"{prefix}{i:04d}.jpg"
        path.write_bytes(f"{prefix} image {i}".encode() * 50)
        paths.append(path)
    return paths


def test_exact_fingerprint_finds_copies_renamed_and_moved(tmp_path):
    train = write_files(tmp_path / "train", 30)
    entry = fingerprint.sketch(train)
    assert entry["count"] == entry["stored"] == 30 and entry["hash"] == fingerprint.HASH_NAME
    assert len(entry["digests"]) == 4 * ((30 * 8 + 2) // 3)  # base64 of 8 bytes per file: small
    other = write_files(tmp_path / "new", 10, prefix="g")
    copy = tmp_path / "elsewhere" / "renamed.jpg"
    copy.parent.mkdir()
    shutil.copyfile(train[3], copy)
    found = fingerprint.overlap([*other, copy, train[0], tmp_path / "missing.jpg"], entry)
    assert (found.evaluated, found.matched, found.checked, found.exact) == (12, 2, 12, True)
    assert found.share == pytest.approx(2 / 12)
    assert set(found.examples) == {"renamed.jpg", "f0000.jpg"}
    assert fingerprint.overlap(other, entry).matched == 0


def test_large_training_sets_keep_a_sketch_that_estimates_the_overlap(tmp_path):
    train = write_files(tmp_path / "train", 400)
    entry = fingerprint.sketch(train, size=100)
    assert entry["count"] == 400 and entry["stored"] == 100
    sketch = fingerprint.read_sketch(entry)
    assert not sketch.exact and sketch.limit == max(sketch.values)
    # evaluate on 200 training files + 200 new ones: half of them overlap
    new = write_files(tmp_path / "new", 200, prefix="g")
    found = fingerprint.overlap(train[:200] + new, entry)
    assert found.evaluated == 400 and not found.exact
    assert 0 < found.checked < 400  # only files within the sketch's range can be decided
    assert found.share == pytest.approx(0.5, abs=0.2)
    # nothing in common: no match at all, whatever the sample
    assert fingerprint.overlap(new, entry).matched == 0


def test_unknown_or_missing_records_give_no_answer(tmp_path):
    files = write_files(tmp_path, 3)
    assert fingerprint.overlap(files, None) is None
    assert fingerprint.overlap(files, {"hash": "md5", "digests": ""}) is None
    assert fingerprint.overlap(files, {"hash": fingerprint.HASH_NAME, "digests": "not base64!"}) is None
    empty = fingerprint.sketch([])
    assert fingerprint.overlap(files, empty).matched == 0
