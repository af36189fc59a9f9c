"""Temperature scaling and test-time views: fitted on held-out logits, applied the same by both back ends."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tests.imagegen import CLASS_STYLES, class_image
from wildid.metrics import expected_calibration_error
from wildid.predictor import OnnxPredictor, TorchPredictor, export_onnx, softmax
from wildid.training.head import fit_logistic_head, fit_temperature, nll
from wildid.views import VIEW_SETS, expand_views, mean_over_views


def overconfident_logits(n: int = 4000, classes: int = 5, true_temperature: float = 2.5, seed: int = 0):
    """Logits whose labels were drawn from softmax(logits / T): a model that is T times too sure."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(0, 4, size=(n, classes))
    probs = softmax(logits / true_temperature)
    y = np.array([rng.choice(classes, p=row) for row in probs])
    return logits, y


def test_fit_temperature_recovers_the_true_temperature_and_lowers_ece():
    logits, y = overconfident_logits()
    t = fit_temperature(logits, y)
    assert abs(t - 2.5) < 0.25
    assert nll(logits, y, t) < nll(logits, y, 1.0)
    correct = logits.argmax(1) == y
    before = expected_calibration_error(correct, softmax(logits).max(1))
    after = expected_calibration_error(correct, softmax(logits, t).max(1))
    assert before > 0.15 and after < 0.03
    # a calibrated model keeps T close to 1
    fair_logits, fair_y = overconfident_logits(true_temperature=1.0, seed=1)
    assert abs(fit_temperature(fair_logits, fair_y) - 1.0) < 0.1


def test_logistic_head_picks_C_by_inner_cv_and_calibrates():
    rng = np.random.default_rng(0)
    n, d = 300, 40
    y = np.arange(n) % 3
    x = rng.normal(size=(n, d)) * 3 + 10  # raw, unstandardised features
    x[:, :3] += np.eye(3)[y] * 4.0
    groups = [f"g{i // 3}" for i in range(n)]
    head, summary = fit_logistic_head(x, y, 3, groups)
    assert summary["inner_folds"] == 5 and len(summary["inner_log_loss"]) == 9
    # the C kept is the one with the lowest inner out-of-fold log loss
    assert min(summary["inner_log_loss"].values()) == summary["inner_log_loss"][f"{head.C:.3g}"]
    assert 0.05 < head.temperature < 20
    # the head acts on raw features (standardisation folded in) and separates the classes
    assert (head.logits(x).argmax(1) == y).mean() > 0.7  # chance is 1/3
    # binary problems give two softmax rows equal to the sigmoid
    yb = (y == 0).astype(int)
    head_b, _ = fit_logistic_head(x, yb, 2, groups)
    assert head_b.weight.shape == (2, d) and (head_b.logits(x).argmax(1) == yb).mean() > 0.8


def test_views_average_in_view_major_order():
    batch = torch.arange(2 * 3 * 4 * 4, dtype=torch.float32).reshape(2, 3, 4, 4)
    expanded = expand_views(batch, "d8")
    assert expanded.shape == (16, 3, 4, 4)
    assert torch.equal(expanded[:2], batch)  # view 0 is the image itself
    assert torch.equal(expanded[2:4], torch.flip(batch, dims=(3,)))
    # averaging the 8 symmetries of a square gives a symmetric image
    mean = mean_over_views(expanded, "d8")
    assert torch.allclose(mean, torch.rot90(mean, 1, dims=(2, 3))) and torch.allclose(mean, torch.flip(mean, dims=(3,)))
    assert len(VIEW_SETS["flip"]) == 2 and expand_views(batch, "none") is batch


@pytest.mark.parametrize("views", ["none", "d8"])
def test_torch_and_onnx_give_the_same_calibrated_probabilities(models_root, tmp_path, views):
    from wildid.registry import load_predictor

    base = load_predictor("tiny")
    images = [class_image(style, seed=300 + i) for i, style in enumerate(CLASS_STYLES.values())]
    batch = torch.stack([base.preprocess(img) for img in images])
    onnx_path = export_onnx(base.model, base.card, tmp_path / "tiny.onnx")
    hot = base.card.replace(temperature=0.5, views=views)
    cool = base.card.replace(temperature=3.0, views=views)
    p_torch_hot, p_onnx_hot = TorchPredictor(hot, base.model).predict_proba(batch), OnnxPredictor(hot, onnx_path).predict_proba(batch)
    p_torch_cool, p_onnx_cool = TorchPredictor(cool, base.model).predict_proba(batch), OnnxPredictor(cool, onnx_path).predict_proba(batch)
    np.testing.assert_allclose(p_torch_hot, p_onnx_hot, atol=1e-5)
    np.testing.assert_allclose(p_torch_cool, p_onnx_cool, atol=1e-5)
    # temperature changes the confidence, never the top-1
    assert (p_torch_hot.argmax(1) == p_torch_cool.argmax(1)).all()
    assert (p_torch_hot.max(1) > p_torch_cool.max(1)).all()
    # the calibrated probabilities are the softmax of the view-averaged logits over T
    logits = TorchPredictor(hot, base.model).view_logits(batch)
    np.testing.assert_allclose(p_torch_hot, softmax(logits / 0.5), atol=1e-9)
    if views == "d8":
        manual = np.mean([base.logits(expand_views(batch, "d8")[i * 3:(i + 1) * 3]) for i in range(8)], axis=0)
        np.testing.assert_allclose(logits, manual, atol=1e-5)
