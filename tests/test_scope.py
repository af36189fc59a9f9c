"""Out-of-scope detection (wildid.scope): scores, calibration, the card, every back end, batch status."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import skimage
from PIL import Image

from tests.imagegen import CLASS_STYLES, class_image, nir_frame, noise_image
from wildid import scope
from wildid.cards import load_card
from wildid.errors import CardError, WildidError
from wildid.registry import clear_cache, load_predictor

SCOPED = "tiny-scoped"


def real_photos() -> list[Image.Image]:
    """Real photos the tiny model was never trained on: scikit-image's cat, coffee, astronaut, rocket."""
    return [Image.fromarray(getattr(skimage.data, name)()).convert("RGB")
            for name in ("chelsea", "coffee", "astronaut", "rocket")]


def make_scoped_model(models_root, kind: str = "knn", name: str = SCOPED):
    """The tiny test model with a scope check fitted on its own training images (seeds 0-11)."""
    shutil.copytree(models_root / "tiny", models_root / name)
    card = load_card(models_root / name).replace(name=name, title="Tiny scoped test model")
    card.save(models_root / name)
    clear_cache()
    predictor = load_predictor(name)
    labels = list(CLASS_STYLES)
    fit = [class_image(style, seed) for style in CLASS_STYLES.values() for seed in range(12)]
    fit_labels = [labels.index(label) for label in CLASS_STYLES for _ in range(12)]
    calib_in = [class_image(style, seed) for style in CLASS_STYLES.values() for seed in range(40, 46)]
    calib_out = [nir_frame(seed, size=(160, 120)) for seed in range(4)] + [noise_image(seed) for seed in range(4)]
    return scope.calibrate_model(predictor, kind, calib_in, calib_out, fit, fit_labels, measured_by="test fixture")


@pytest.fixture()
def scoped_model(models_root):
    card = make_scoped_model(models_root)
    clear_cache()
    return card


def test_logit_scores_have_their_closed_forms():
    logits = np.array([[0.0, 0.0], [3.0, 1.0]])
    np.testing.assert_allclose(scope.logit_score("msp", logits), [0.5, 1 / (1 + np.exp(-2.0))])
    np.testing.assert_allclose(scope.logit_score("max_logit", logits), [0.0, 3.0])
    np.testing.assert_allclose(scope.logit_score("energy", logits), [np.log(2.0), 3.0 + np.log(1 + np.exp(-2.0))])
    with pytest.raises(WildidError, match="unknown"):
        scope.logit_score("entropy", logits)


@pytest.mark.parametrize("kind", scope.FEATURE_SCORES)
def test_feature_scores_rank_near_above_far_and_survive_a_round_trip(kind, tmp_path):
    rng = np.random.default_rng(0)
    centres = np.array([[5.0] * 8, [-5.0] * 8])
    train = np.concatenate([c + rng.normal(0, 1, (40, 8)) for c in centres])
    labels = [0] * 40 + [1] * 40
    stats = scope.FeatureStats.fit(kind, train, labels)
    near = centres + rng.normal(0, 1, (2, 8))
    far = np.array([[5.0, -5.0] * 4, [0.0] * 8]) + rng.normal(0, 0.1, (2, 8))
    if kind == "knn":  # cosine: far means another direction, not another length
        far = np.array([[5.0, -5.0] * 4, [-5.0, 5.0] * 4])
    assert scope.FeatureStats.fit(kind, train, labels).score(near).min() > stats.score(far).max()
    stats.save(tmp_path / scope.SCOPE_FILE)
    loaded = scope.FeatureStats.load(tmp_path / scope.SCOPE_FILE)
    np.testing.assert_allclose(loaded.score(near), stats.score(near), rtol=1e-5)


def test_threshold_keeps_95_percent_in_scope_or_splits_a_clean_gap():
    in_scope = np.arange(100, dtype=float)  # 0..99
    overlapping = np.array([3.0, 50.0])
    assert scope.calibrate_threshold(in_scope, overlapping) == 4.0  # the 5th percentile, "lower"
    apart = np.array([-10.0, -3.0])
    assert scope.calibrate_threshold(in_scope, apart) == pytest.approx((-3.0 + 4.0) / 2)
    summary = scope.summary(in_scope, overlapping, 4.0)
    assert summary["in_scope_kept"] == 0.96 and summary["out_of_scope_rejected"] == 0.5


def test_calibrated_model_flags_real_photos_but_not_its_own_kind(scoped_model, models_root):
    card = load_card(models_root / SCOPED)
    assert card.scope["score"] == "knn" and card.scope["file"] == scope.SCOPE_FILE
    assert (models_root / SCOPED / scope.SCOPE_FILE).is_file()
    assert card.scope["calibration_auroc"] == 1.0
    predictor = load_predictor(SCOPED)
    held_out = [class_image(style, 300 + k) for k, style in enumerate(CLASS_STYLES.values())]
    predictions = predictor.predict(held_out + real_photos())
    states = [p.state for p in predictions]
    assert not any(p.out_of_scope for p in predictions[:3]), states
    assert all(p.out_of_scope for p in predictions[3:]), states
    assert all(p.uncertain for p in predictions[3:])
    row = predictions[3].to_dict()
    assert row["state"] == "out_of_scope" and row["scope_score"] < card.scope_threshold


def test_onnx_back_end_gives_the_same_scope_scores(scoped_model):
    images = [class_image("bright", 400), real_photos()[0]]
    torch_scores = [p.scope_score for p in load_predictor(SCOPED).predict(images)]
    onnx_scores = [p.scope_score for p in load_predictor(SCOPED, backend="onnx").predict(images)]
    np.testing.assert_allclose(onnx_scores, torch_scores, atol=1e-4)
    assert [s < scoped_model.scope_threshold for s in onnx_scores] == [False, True]


def test_a_card_without_scope_has_no_scope_state(models_root):
    [prediction] = load_predictor("tiny").predict([real_photos()[0]])
    assert prediction.scope_score is None and not prediction.out_of_scope
    assert prediction.to_dict()["scope_score"] is None


def test_better_fits_suggests_the_model_that_knows_the_image(scoped_model):
    photo = class_image("striped", 500)
    fits = scope.better_fits(photo, [load_predictor("tiny"), load_predictor(SCOPED)])
    assert [p.model for p in fits] == [SCOPED]  # the unscoped model cannot vouch for anything
    assert scope.better_fits(real_photos()[1], [load_predictor(SCOPED)]) == []


def test_batch_marks_out_of_scope_rows(scoped_model, tmp_path):
    from wildid.batch import run_batch, sort_into

    folder = tmp_path / "frames"
    folder.mkdir()
    class_image("dark", 600).save(folder / "a_dark.png")
    class_image("bright", 601).save(folder / "b_bright.png")
    real_photos()[0].save(folder / "c_cat.jpg", quality=92)
    out = tmp_path / "results.csv"
    summary = run_batch(folder, load_predictor(SCOPED), out, threshold=0.5)
    assert summary.statuses == {"accepted": 2, "out_of_scope": 1}
    import csv

    rows = {r["relpath"]: r for r in csv.DictReader(out.open())}
    assert rows["c_cat.jpg"]["status"] == "out_of_scope"
    counts = sort_into(out, tmp_path / "sorted")
    assert counts["_out_of_scope"] == 1 and (tmp_path / "sorted" / "_out_of_scope" / "c_cat.jpg").is_file()
    from wildid.batch import export_json

    images = json.loads(export_json(out, tmp_path / "r.json").read_text())["images"]
    assert {i["file"]: i["status"] for i in images}["c_cat.jpg"] == "out_of_scope"
    from wildid.camtrap import export_camtrap_dp

    export_camtrap_dp(out, tmp_path / "camtrap", utc_offset="+00:00")
    observations = list(csv.DictReader((tmp_path / "camtrap" / "observations.csv").open()))
    comments = [o["observationComments"] for o in observations if o["observationType"] == "unclassified"]
    assert len(comments) == 1 and comments[0].startswith("out of scope for the model; its guess:")


def test_card_rejects_an_unknown_scope_score(models_root):
    from wildid.errors import CardError

    card = load_card(models_root / "tiny")
    with pytest.raises(CardError, match="scope score"):
        card.replace(scope={"score": "vibes", "threshold": 1.0})


def test_calibrate_scope_command_then_predict_reports_the_state(models_root, tmp_path, capsys):
    from wildid.cli import main

    data = tmp_path / "labelled"
    for label, style in CLASS_STYLES.items():
        for seed in range(10):
            path = data / label / f"{seed}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            class_image(style, 700 + seed).save(path)
    outside = tmp_path / "outside"
    outside.mkdir()
    for seed in range(3):
        nir_frame(seed, size=(160, 120)).save(outside / f"nir{seed}.png")
    assert main(["calibrate-scope", "tiny", str(data), "--out-of-scope", str(outside)]) == 0
    assert "tiny: scope score knn, threshold" in capsys.readouterr().out
    card = load_card(models_root / "tiny")
    assert card.scope["calibration"] == "6 in-scope, 3 out-of-scope held-out images"
    cat = tmp_path / "cat.jpg"
    real_photos()[0].save(cat, quality=90)
    bright = tmp_path / "bright.png"
    class_image("bright", 900).save(bright)
    assert main(["predict", str(cat), str(bright), "--model", "tiny", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["state"] for r in rows] == ["out_of_scope", "confident"]
    assert main(["predict", str(cat), "--model", "tiny"]) == 0
    assert "(out of scope: not something this model was trained on)" in capsys.readouterr().out


# --- exclusions: a kind of image a model mistakes for its own --------------------------------------------------------
def make_excluding_model(models_root):
    """The scoped tiny model, told that noise pictures are not its kind (its bank: generated noise)."""
    make_scoped_model(models_root, kind="energy")
    clear_cache()
    predictor = load_predictor(SCOPED)
    return scope.calibrate_exclusion(
        predictor, "noise", fit_images=[noise_image(seed) for seed in range(12)],
        calib_excluded=[noise_image(seed) for seed in range(20, 26)],
        calib_kept=[class_image(style, seed) for style in CLASS_STYLES.values() for seed in range(40, 44)],
        suggest_task="static", measured_by="test fixture")


def test_exclusion_marks_its_kind_out_of_scope_and_keeps_the_rest(models_root):
    card = make_excluding_model(models_root)
    exclusion = card.scope_exclusion
    assert exclusion["name"] == "noise" and exclusion["suggest_task"] == "static"
    assert (models_root / SCOPED / exclusion["file"]).is_file()
    assert card.scope["score"] == "energy"  # the model's own score stays as it was
    clear_cache()
    images = [class_image(style, 600 + k) for k, style in enumerate(CLASS_STYLES.values())]
    images += [noise_image(seed) for seed in (700, 701)]
    for backend in ("torch", "onnx"):
        predictions = load_predictor(SCOPED, backend=backend).predict(images)
        assert [p.excluded_as for p in predictions] == [""] * 3 + ["noise"] * 2, backend
        assert [p.state for p in predictions[3:]] == ["out_of_scope"] * 2
        assert predictions[3].to_dict()["excluded_as"] == "noise" and not predictions[3].taxon


def test_recalibrating_the_score_keeps_the_exclusion(models_root):
    card = make_excluding_model(models_root)
    clear_cache()
    again = scope.calibrate_model(load_predictor(SCOPED), "msp", [class_image("bright", 41)])
    assert again.scope["score"] == "msp" and again.scope_exclusion == card.scope_exclusion


def test_card_rejects_an_exclusion_without_threshold(models_root):
    card = make_excluding_model(models_root)
    broken = dict(card.scope, exclude={k: v for k, v in card.scope_exclusion.items() if k != "threshold"})
    with pytest.raises(CardError, match="scope.exclude needs a numeric threshold"):
        card.replace(scope=broken)


def test_the_shipped_general_model_excludes_a_held_out_footprint_photo():
    """A real cat-family footprint from the test split of shared/data/tracks-families (never in the bank)
    is out of scope as footprints for the general model, by both back ends; the real cat photo is not."""
    clear_cache()
    examples = Path(__file__).resolve().parent.parent / "examples"
    images = [examples / "track_photo_felid.jpg", examples / "chelsea_cat.jpg"]
    for backend in ("torch", "onnx"):
        footprint, cat = load_predictor("general-animals", backend=backend).predict(images)
        assert footprint.excluded_as == "footprints" and footprint.state == "out_of_scope", backend
        assert not cat.out_of_scope and cat.taxon == "Felis catus", (backend, cat.state, cat.taxon)
