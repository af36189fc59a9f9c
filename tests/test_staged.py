"""Folders replaced whole (wildid.staged): trained models and Camtrap DP packages survive a kill at any point."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.imagegen import CLASS_STYLES, class_image
from wildid import staged
from wildid.errors import DataError

PROJECT_ROOT = Path(__file__).resolve().parent.parent


def _kill_points(kind: str, work: Path) -> int:
    done = subprocess.run([sys.executable, "-m", "tests.kill_points", kind, str(work)], cwd=PROJECT_ROOT,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout.strip().splitlines()[-1])["kill_points"]


def _hidden(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_model_save_killed_at_every_point_leaves_the_old_model_or_the_new_one(tmp_path, monkeypatch):
    from wildid.registry import clear_cache, load_predictor, save_model

    points = _kill_points("model", tmp_path)
    assert points >= 5, "the save renames weights, card, config and swaps the folder"
    seen = []
    for n in range(1, points + 2):  # the last folder holds the completed save
        folder = tmp_path / str(n) / "m"
        clear_cache()
        predictor = load_predictor(str(folder))  # card and weights load together, or this raises
        [prediction] = predictor.predict([class_image("bright", 5)])
        classes = predictor.card.classes
        assert classes in (tuple(CLASS_STYLES), ("cat", "dog")), classes
        assert prediction.label in classes
        assert (folder / "taxonomy.toml").read_text() == "# kept across saves\n"
        if classes == ("cat", "dog"):
            assert not (folder / "model.onnx").exists(), "the old generation's ONNX export is not carried over"
        seen.append("new" if classes == ("cat", "dog") else "old")
    print(f"\nmodel save killed before each of its {points} file-system changes, then completed: {' '.join(seen)}")
    assert seen[0] == "old" and seen[-1] == "new" and seen == sorted(seen, key=["old", "new"].index)
    # A later save of the same model removes what the killed writers left beside it.
    leftovers = _hidden(tmp_path / str(points))
    assert leftovers, "the last kill (while removing the previous generation) leaves a hidden folder"
    clear_cache()
    predictor = load_predictor(str(tmp_path / str(points) / "m"))
    save_model(predictor.model, predictor.card, tmp_path / str(points) / "m")
    assert _hidden(tmp_path / str(points)) == []


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_camtrap_package_killed_at_every_point_is_never_a_mix(tmp_path):
    points = _kill_points("camtrap", tmp_path)
    seen = []
    for n in range(1, points + 2):
        folder = tmp_path / str(n) / "package"
        files = {p.name: p.read_text() for p in folder.iterdir()}
        assert files.pop("notes.txt") == "mine\n", "the user's own file stays"
        generations = {"old" if text == "old\n" else "new" for text in files.values()}
        assert len(generations) == 1, f"kill point {n}: a mix of two packages: {files}"
        assert set(files) == {"datapackage.json", "deployments.csv", "media.csv", "observations.csv"}
        seen.append(generations.pop())
    print(f"\nCamtrap DP export killed before each of its {points} file-system changes, then completed: "
          f"{' '.join(seen)}")
    assert seen[0] == "old" and seen[-1] == "new"


def test_onnx_export_interrupted_mid_write_keeps_the_previous_export(tmp_path, monkeypatch):
    """The export goes to a file of this process's own, renamed at the end: an export that dies
    half-way (here: the exporter raises after writing part of its file) leaves the previous one."""
    import onnxruntime as ort
    import timm
    import torch

    from tests.conftest import make_tiny_model
    from wildid.predictor import export_onnx

    card = make_tiny_model(tmp_path / "models", "m")
    path = tmp_path / "model.onnx"
    export_onnx(timm.create_model(card.arch, num_classes=3), card, path)
    before = path.read_bytes()

    def dies_half_way(model, args, f, **kwargs):
        Path(f).write_bytes(before[: len(before) // 2])
        raise KeyboardInterrupt

    monkeypatch.setattr(torch.onnx, "export", dies_half_way)
    with pytest.raises(KeyboardInterrupt):
        export_onnx(timm.create_model(card.arch, num_classes=2), card.replace(classes=("a", "b")), path)
    assert path.read_bytes() == before
    assert ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).get_outputs()[0].shape[-1] == 3


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_feature_cache_flush_killed_at_every_point_leaves_the_old_cache_or_the_new_one(tmp_path):
    import numpy as np

    points = _kill_points("features", tmp_path)
    seen = []
    for n in range(1, points + 2):
        with np.load(tmp_path / str(n) / "features.npz", allow_pickle=False) as data:
            seen.append(",".join(str(k) for k in data["keys"]))
    print(f"\nfeature cache flush killed before each of its {points} file-system changes, then completed: keys {seen}")
    assert set(seen) <= {"a", "a,b"} and seen[0] == "a" and seen[-1] == "a,b"


def test_staged_folder_replaces_whole_and_keeps_other_files(tmp_path):
    target = tmp_path / "out"
    target.mkdir()
    (target / "a.txt").write_text("old a")
    (target / "keep.txt").write_text("mine")
    (target / "drop.tmp").write_text("stale")
    with staged.staged_folder(target, carry_over=lambda name: not name.endswith(".tmp")) as staging:
        assert staging.parent == tmp_path and staging.name.startswith(".out.new-")
        (staging / "a.txt").write_text("new a")
        (staging / "b.txt").write_text("new b")
    assert {p.name: p.read_text() for p in target.iterdir()} == {"a.txt": "new a", "b.txt": "new b", "keep.txt": "mine"}
    assert _hidden(tmp_path) == []


def test_staged_folder_leaves_the_target_alone_when_the_writer_fails(tmp_path):
    target = tmp_path / "out"
    target.mkdir()
    (target / "a.txt").write_text("old a")
    with pytest.raises(RuntimeError):
        with staged.staged_folder(target) as staging:
            (staging / "a.txt").write_text("half")
            raise RuntimeError("disk full")
    assert (target / "a.txt").read_text() == "old a"
    assert _hidden(tmp_path) == []


def test_staged_folder_without_an_exchange_call_uses_two_renames(tmp_path, monkeypatch):
    monkeypatch.setattr(staged, "exchange", lambda a, b: False)
    target = tmp_path / "out"
    target.mkdir()
    (target / "a.txt").write_text("old a")
    with staged.staged_folder(target) as staging:
        (staging / "a.txt").write_text("new a")
    assert (target / "a.txt").read_text() == "new a"
    assert _hidden(tmp_path) == []


def test_staged_folder_creates_a_new_target_and_refuses_a_file(tmp_path):
    with staged.staged_folder(tmp_path / "new" / "out") as staging:
        (staging / "x").write_text("1")
    assert (tmp_path / "new" / "out" / "x").read_text() == "1"
    (tmp_path / "file").write_text("not a folder")
    with pytest.raises(DataError, match="is not a folder"):
        with staged.staged_folder(tmp_path / "file"):
            pass


def test_leftovers_of_a_live_process_are_kept(tmp_path):
    target = tmp_path / "out"
    dead = tmp_path / f".out.new-{2**22 + 12345}-abcd"  # above Linux's default pid_max: no such process
    live = tmp_path / f".out.new-{os.getppid()}-abcd"
    dead.mkdir()
    live.mkdir()
    assert staged.remove_leftovers(target) == [dead]
    assert live.is_dir()


def test_exchange_swaps_two_folders(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    (a / "x").write_text("a")
    (b / "x").write_text("b")
    if not staged.exchange(a, b):
        pytest.skip("no renameat2(RENAME_EXCHANGE) here")
    assert (a / "x").read_text() == "b" and (b / "x").read_text() == "a"
