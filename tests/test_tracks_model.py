"""The shipped track model: loads offline, calibrated, predicts over 8 views, attribution in its card."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from wildid.registry import find_card, load_predictor
from wildid.views import expand_views


def test_tracks_families_ships_with_a_calibrated_card():
    card = find_card("tracks-families")
    assert card.has_weights and card.task == "tracks"
    assert card.classes == ("bear", "canid", "deer", "felid", "mustelid")
    assert card.arch == "tf_efficientnet_lite0" and card.mean == (0.5, 0.5, 0.5)
    assert card.views == "d8" and 0.5 < card.temperature < 2
    m = card.metrics
    assert "grouped by photo" in m["measured_by"] and len(m["fold_accuracy"]) == 5
    assert m["accuracy"] > 0.4 and m["ece"] <= 0.05  # chance is 0.2
    assert "CC BY 4.0" in card.provenance["attribution"] and "iNaturalist" in card.provenance["attribution"]
    assert (card.folder / "model.safetensors").stat().st_size < 20 * 1024 * 1024


def test_tracks_families_prediction_is_the_mean_over_views_and_rotation_invariant():
    predictor = load_predictor("tracks-families")
    rng = np.random.default_rng(0)
    photo = Image.fromarray((rng.random((300, 300, 3)) * 255).astype(np.uint8))
    batch = predictor.preprocess(photo)[None]
    probs = predictor.predict_proba(batch)
    assert probs.shape == (1, 5) and abs(probs.sum() - 1) < 1e-9
    # the 8 views of a square are a group: predicting a rotated copy gives the same answer
    turned = torch.rot90(batch, 1, dims=(2, 3))
    np.testing.assert_allclose(predictor.predict_proba(turned), probs, atol=1e-5)
    logits = predictor.logits(expand_views(batch, "d8"))
    manual = np.exp(logits.mean(0) / predictor.card.temperature)
    np.testing.assert_allclose(probs[0], manual / manual.sum(), atol=1e-6)
