"""Training: data loading, grouped folds, linear probe, saved model == in-memory model, bad data."""

from __future__ import annotations

import csv
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tests.imagegen import CLASS_STYLES, class_image, truncated_jpeg, write
from wildid.errors import DataError
from wildid.train import (
    FeatureCache,
    TrainConfig,
    TrainingStopped,
    backbone_units,
    command_line,
    load_labelled,
    make_folds,
    resolve_weights,
    train,
)

TINY = dict(arch="test_resnet", weights="none", batch_size=16, workers=1)


def sequence_frame(style: str, sequence: int, frame: int) -> Image.Image:
    """Frames of one simulated camera-trap sequence: the same scene with a little noise."""
    base = np.asarray(class_image(style, seed=1000 + sequence), dtype=np.float64)
    rng = np.random.default_rng(sequence * 100 + frame)
    shift = rng.integers(-3, 4)
    noisy = np.roll(base, shift, axis=1) + rng.normal(0, 6, base.shape)
    return Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8), "RGB")


def make_csv_dataset(root: Path, sequences: int = 4, frames: int = 3, extra_rows: list[dict] | None = None) -> Path:
    """A CSV data set (path,label,sequence) of the 3 learnable classes; sequences are groups."""
    rows = []
    for c, (label, style) in enumerate(CLASS_STYLES.items()):
        for s in range(sequences):
            seq = c * 100 + s
            for f in range(frames):
                rel = f"img/{style}-{s}-{f}.jpg"
                write(root / rel, sequence_frame(style, seq, f), quality=90)
                rows.append({"path": rel, "label": label, "sequence": f"seq{seq}"})
    rows += extra_rows or []
    path = root / "labels.csv"
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["path", "label", "sequence"])
        writer.writeheader()
        writer.writerows(rows)
    return path


@pytest.fixture(scope="module")
def grouped_csv(tmp_path_factory) -> Path:
    return make_csv_dataset(tmp_path_factory.mktemp("grouped"), sequences=4, frames=3)


@pytest.fixture(autouse=True)
def _private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("WILDID_CACHE", str(tmp_path / "cache"))
    FeatureCache.clear_memory()
    yield
    FeatureCache.clear_memory()


def test_grouped_folds_never_share_a_group(grouped_csv):
    data = load_labelled(grouped_csv, groups="sequence")
    assert data.group_column == "sequence" and len(set(data.groups)) == 12
    splits = make_folds(data.labels, data.groups, folds=4, seed=0)
    assert len(splits) == 4
    groups = np.asarray(data.groups)
    labels = np.asarray(data.labels)
    seen_val = []
    for train_idx, val_idx in splits:
        assert not set(groups[train_idx]) & set(groups[val_idx])
        assert set(labels[val_idx]) == set(CLASS_STYLES)  # stratified: every class in every fold
        seen_val += list(val_idx)
    assert sorted(seen_val) == list(range(len(labels)))


def test_ungrouped_folds_are_stratified():
    labels = ["a"] * 10 + ["b"] * 5
    for train_idx, val_idx in make_folds(labels, None, folds=5):
        assert [labels[i] for i in val_idx].count("b") == 1


def test_linear_on_held_out_groups_and_reload(grouped_csv, models_root):
    from wildid.predictor import TorchPredictor
    from wildid.registry import list_cards, load_predictor

    data = load_labelled(grouped_csv, groups="sequence")
    config = TrainConfig(mode="linear", folds=4, **TINY)
    events = []
    result = train(data, config, out="tiny-trained", command="wildid train ...", progress=events.append)
    metrics = result.card.metrics
    # chance is 1/3; held-out sequences are still recognised
    assert metrics["accuracy"] >= 0.8, metrics
    assert len(metrics["fold_accuracy"]) == 4
    assert "group" in metrics["measured_by"] and "sequence" in metrics["measured_by"]
    matrix = np.array(metrics["confusion_matrix"]["matrix"])
    assert matrix.shape == (3, 3) and matrix.sum() == 36
    assert set(metrics["per_class"]) == set(CLASS_STYLES)
    assert all(0 <= v["f1"] <= 1 for v in metrics["per_class"].values())
    # progress: features, one head per fold and for the final fit, a saved event
    stages = [e.stage for e in events]
    assert stages[0] == "features" and stages[-1] == "saved"
    assert [e.fold for e in events if e.stage == "head"] == [1, 2, 3, 4, 0]
    # calibration: a temperature fitted on inner out-of-fold logits, ECE reported before and after
    assert 0 < card_temperature(result) < 20 and result.card.views in ("none", "flip", "d8")
    assert 0 <= metrics["ece"] <= 1 and 0 <= metrics["ece_uncalibrated"] <= 1
    assert result.card.provenance["fit"]["head"] == "logreg" and result.card.provenance["fit"]["C"] > 0

    folder = models_root / "tiny-trained"
    assert (folder / "card.toml").is_file() and (folder / "model.safetensors").is_file()
    assert "tiny-trained" in [c.name for c in list_cards()]
    card = result.card
    assert card.provenance["command"] == "wildid train ..."
    assert card.provenance["data_summary"]["images"] == 36
    assert card.provenance["data_summary"]["groups"] == 12
    # the card, as written, recognises its own training files (and nothing else)
    from wildid import fingerprint
    from wildid.cards import load_card

    saved = load_card(folder).provenance["training_files"]
    assert saved["count"] == 36
    assert fingerprint.overlap([s.path for s in data.samples], saved).matched == 36

    loaded = load_predictor("tiny-trained")
    in_memory = TorchPredictor(card, result.model)
    batch = torch.stack([loaded.preprocess(class_image(style, seed=500 + i)) for i, style in enumerate(CLASS_STYLES.values())])
    np.testing.assert_allclose(loaded.predict_proba(batch), in_memory.predict_proba(batch), atol=1e-5)
    predicted = [p.label for p in loaded.predict([class_image(style, seed=777) for style in CLASS_STYLES.values()])]
    assert predicted == list(CLASS_STYLES)


def card_temperature(result) -> float:
    return result.card.temperature


def test_unreadable_files_are_skipped_and_counted(tmp_path):
    root = tmp_path / "folder"
    for label, style in CLASS_STYLES.items():
        for seed in range(4):
            write(root / label / f"{seed}.jpg", class_image(style, seed=seed), quality=90)
    write(root / "bobcat" / "broken.jpg", truncated_jpeg())
    write(root / "coyote" / "notes.jpg", b"not an image at all")
    data = load_labelled(root)
    assert len(data.samples) == 14
    result = train(data, TrainConfig(mode="linear", folds=2, epochs=5, **TINY))
    assert len(result.data.samples) == 12
    assert len(result.data.skipped) == 2
    assert result.card.provenance["data_summary"]["skipped"] == 2
    assert any("skipped 2 unreadable" in w for w in result.warnings)


def test_feature_cache_reused_and_invalidated_by_mtime(tmp_path):
    import timm

    weights = tmp_path / "backbone.pth"
    torch.manual_seed(1)
    torch.save(timm.create_model("test_resnet", num_classes=3).state_dict(), weights)
    root = tmp_path / "data"
    for label, style in CLASS_STYLES.items():
        for seed in range(3):
            write(root / label / f"{seed}.png", class_image(style, seed=seed))
    config = TrainConfig(mode="linear", folds=0, views="none", **dict(TINY, weights=str(weights)))
    first = []
    train(load_labelled(root), config, progress=first.append)
    assert first[0].message == "0 cached"
    assert list((tmp_path / "cache" / "features").glob("*.npz"))
    FeatureCache.clear_memory()  # a new process: features come from disk
    second = []
    train(load_labelled(root), config, progress=second.append)
    assert second[0].message == "9 cached"
    # a changed file is recomputed
    changed = root / "bobcat" / "0.png"
    class_image("bright", seed=50).save(changed)
    import os

    os.utime(changed, ns=(changed.stat().st_atime_ns, changed.stat().st_mtime_ns + 10_000_000))
    third = []
    train(load_labelled(root), config, progress=third.append)
    assert third[0].message == "8 cached"


@pytest.mark.parametrize("mode", ["finetune", "progressive"])
def test_finetune_modes_train_and_unfreeze(tmp_path, mode, models_root):
    from wildid.registry import load_predictor

    root = tmp_path / "data"
    for label, style in CLASS_STYLES.items():
        for seed in range(4):
            write(root / label / f"{seed}.jpg", class_image(style, seed=seed), quality=90)
    events = []
    config = TrainConfig(mode=mode, folds=0, epochs=3, step=1, unfreeze=1, lr=3e-3, **TINY)
    result = train(load_labelled(root), config, out=f"ft-{mode}", progress=events.append)
    epochs = [e for e in events if e.stage == "epoch"]
    assert len(epochs) == 3 and all(np.isfinite(e.loss) for e in epochs)
    if mode == "progressive":
        assert [e.message for e in epochs] == ["0/4 blocks trained", "1/4 blocks trained", "2/4 blocks trained"]
    else:
        assert {e.message for e in epochs} == {"1/4 blocks trained"}
    assert load_predictor(f"ft-{mode}").card.provenance["mode"] == mode
    assert result.card.metrics["measured_by"].startswith("not validated")


def test_backbone_units_cover_the_supported_shapes():
    import timm

    assert len(backbone_units(timm.create_model("test_resnet", num_classes=2))) == 4
    assert len(backbone_units(timm.create_model("test_efficientnet", num_classes=2))) >= 3
    assert len(backbone_units(timm.create_model("test_vit", num_classes=2))) >= 2


def test_stop_flag_stops_and_writes_nothing(grouped_csv, tmp_path):
    stop = threading.Event()
    stop.set()
    with pytest.raises(TrainingStopped):
        train(load_labelled(grouped_csv), TrainConfig(mode="linear", folds=2, epochs=3, **TINY), out=tmp_path / "m", stop=stop)
    assert not (tmp_path / "m").exists()


# --- bad data -------------------------------------------------------------------------------------
def test_one_class_only(tmp_path):
    for seed in range(6):
        write(tmp_path / "d" / "bobcat" / f"{seed}.png", class_image("bright", seed=seed))
    with pytest.raises(DataError, match="only one class"):
        train(load_labelled(tmp_path / "d"), TrainConfig(mode="linear", folds=2, **TINY))


def test_class_with_fewer_images_than_folds(tmp_path):
    for seed in range(6):
        write(tmp_path / "d" / "bobcat" / f"{seed}.png", class_image("bright", seed=seed))
    for seed in range(2):
        write(tmp_path / "d" / "coyote" / f"{seed}.png", class_image("striped", seed=seed))
    with pytest.raises(DataError, match=r"'coyote' has 2 image\(s\), fewer than the 5 folds.*--folds 2"):
        train(load_labelled(tmp_path / "d"), TrainConfig(mode="linear", folds=5, **TINY))


def test_groups_column_missing(grouped_csv, tmp_path):
    with pytest.raises(DataError, match="groups column 'site' missing; columns are path, label, sequence"):
        load_labelled(grouped_csv, groups="site")
    (tmp_path / "d" / "a").mkdir(parents=True)
    with pytest.raises(DataError, match="groups column 'site' missing: an image folder has no columns"):
        load_labelled(tmp_path / "d", groups="site")


def test_no_readable_images(tmp_path):
    for label in ("a", "b"):
        for i in range(3):
            write(tmp_path / "d" / label / f"{i}.jpg", b"garbage")
    with pytest.raises(DataError, match=r"no readable images .* 6 file\(s\) skipped"):
        train(load_labelled(tmp_path / "d"), TrainConfig(mode="linear", folds=2, **TINY))


def test_csv_crops_and_missing_columns(tmp_path):
    big = Image.new("RGB", (200, 100), (255, 255, 255))
    big.paste(class_image("dark", seed=1, size=(50, 50)), (10, 10))
    write(tmp_path / "a.png", big)
    (tmp_path / "ok.csv").write_text("path,label,crop\na.png,gray fox,\"10,10,50,50\"\na.png,bobcat,\n")
    data = load_labelled(tmp_path / "ok.csv")
    assert data.samples[0].crop == (10.0, 10.0, 50.0, 50.0) and data.samples[1].crop is None
    from wildid.train import _load_sample

    cropped = _load_sample(data.samples[0], "rgb", 64)
    assert cropped.size == (50, 50) and np.asarray(cropped).mean() < 80
    (tmp_path / "bad.csv").write_text("file,species\na.png,x\n")
    with pytest.raises(DataError, match="missing column"):
        load_labelled(tmp_path / "bad.csv")
    (tmp_path / "badcrop.csv").write_text("path,label,crop\na.png,x,\"1,2,3\"\n")
    with pytest.raises(DataError, match="not 'x,y,w,h'"):
        load_labelled(tmp_path / "badcrop.csv")


def test_weights_messages():
    with pytest.raises(DataError, match="resnet18 has no offline ImageNet weights: give --weights PATH"):
        resolve_weights("resnet18", None)
    assert resolve_weights("efficientnet_lite0", None) == ("package", [])
    assert resolve_weights("tf_efficientnet_lite2", None) == ("package", [])
    source, warnings = resolve_weights("resnet18", "none")
    assert source == "none" and "random weights" in warnings[0]
    with pytest.raises(DataError, match="neither package, hub, none nor an existing file"):
        resolve_weights("resnet18", "/nope/weights.pth")


def test_existing_model_is_not_overwritten(models_root, grouped_csv):
    with pytest.raises(DataError, match="already holds a trained model.*--overwrite"):
        train(load_labelled(grouped_csv), TrainConfig(mode="linear", folds=2, **TINY), out="tiny")


def test_command_line_round_trips_through_the_parser():
    from wildid.cli import build_parser

    config = TrainConfig(mode="progressive", folds=3, epochs=4, step=2, nir=True, arch="test_resnet", weights="none")
    text = command_line("data/labels.csv", "models/x", config, groups="sequence")
    assert text.startswith("wildid train data/labels.csv --out models/x --arch test_resnet --mode progressive")
    args = build_parser().parse_args(text.split()[1:])
    assert (args.mode, args.epochs, args.folds, args.groups, args.nir, args.step) == ("progressive", 4, 3, "sequence", True, 2)
    # the default recipe is the bare command
    assert command_line("data", "models/x", TrainConfig()) == "wildid train data --out models/x"
    text = command_line("d", "m", TrainConfig(views="d8", head="adamw", calibrate=False, epochs=5))
    args = build_parser().parse_args(text.split()[1:])
    assert (args.views, args.head, args.no_calibration, args.epochs) == ("d8", "adamw", True, 5)


def test_cli_train(grouped_csv, models_root, capsys):
    from wildid.cli import main
    from wildid.registry import find_card

    code = main(["train", str(grouped_csv), "--out", "cli-model", "--arch", "test_resnet", "--weights", "none",
                 "--folds", "3", "--groups", "sequence", "--views", "flip", "--workers", "1"])
    out = capsys.readouterr()
    assert code == 0, out.err
    assert "mean accuracy" in out.out and "cli-model" in out.out and "calibration error (ECE)" in out.out
    card = find_card("cli-model")
    assert card.provenance["command"].startswith("wildid train ")
    assert "--groups sequence" in card.provenance["command"]
    assert card.metrics["accuracy"] >= 0.7

    code = main(["train", str(grouped_csv), "--out", "cli-2", "--arch", "test_resnet", "--weights", "none", "--groups", "site"])
    assert code == 2 and "groups column 'site' missing" in capsys.readouterr().err
