"""Grad-CAM and workshop pictures, on models where we know where the evidence is."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from wildid import explain
from wildid.cards import ModelCard
from wildid.errors import WildidError
from wildid.predictor import TorchPredictor


class BlobNet(nn.Module):
    """Class 0 ("blob") is the amount of bright pixels, class 1 ("plain") the amount of dark ones.

    Hand-set weights, so the evidence for "blob" is exactly where the bright blob is.
    """

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 2, 3, padding=1), nn.ReLU(), nn.AvgPool2d(4))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.head = nn.Linear(2, 2)
        with torch.no_grad():
            conv = self.features[0]
            conv.weight.zero_()
            conv.weight[0, :, 1, 1] = 1.0 / 3  # brightness above 0.5
            conv.bias[0] = -0.5
            conv.weight[1, :, 1, 1] = -1.0 / 3  # darkness below 0.5
            conv.bias[1] = 0.5
            self.head.weight.copy_(torch.tensor([[80.0, 0.0], [0.0, 1.0]]))
            self.head.bias.zero_()

    def forward(self, x):
        return self.head(self.flatten(self.pool(self.features(x))))


def blob_predictor() -> TorchPredictor:
    card = ModelCard(
        name="blob", arch="custom-blob", classes=("blob", "plain"), input_size=(3, 64, 64),
        mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0), crop_pct=1.0, interpolation="bilinear",
    )
    return TorchPredictor(card, BlobNet(), device="cpu")


def blob_image(center: tuple[int, int], size=(128, 96), radius=9) -> Image.Image:
    width, height = size
    yy, xx = np.mgrid[0:height, 0:width]
    array = np.full((height, width, 3), 25, np.uint8)
    array[(xx - center[0]) ** 2 + (yy - center[1]) ** 2 <= radius**2] = 240
    return Image.fromarray(array)


def quadrant(point_xy, size) -> tuple[int, int]:
    return int(point_xy[0] >= size[0] / 2), int(point_xy[1] >= size[1] / 2)


@pytest.mark.parametrize("center", [(38, 26), (92, 70), (90, 24)])
def test_grad_cam_follows_the_blob(center):
    predictor = blob_predictor()
    image = blob_image(center)
    [prediction] = predictor.predict([image])
    assert prediction.label == "blob"
    result = explain.grad_cam(predictor, image)
    assert result.label == "blob" and result.layer == "features"
    assert result.heatmap.shape == (image.height, image.width)
    assert result.heatmap.dtype == np.float32
    assert 0.0 <= result.heatmap.min() and result.heatmap.max() <= 1.0 and result.heatmap.max() > 0.9
    y, x = np.unravel_index(np.argmax(result.heatmap), result.heatmap.shape)
    assert quadrant((x, y), image.size) == quadrant(center, image.size)
    assert abs(x - center[0]) <= 12 and abs(y - center[1]) <= 12
    # Far from the blob the map is cold.
    far = (image.width - 1 - center[0], image.height - 1 - center[1])
    assert result.heatmap[far[1], far[0]] < 0.1


def test_grad_cam_for_the_other_class_points_away_from_the_blob():
    predictor = blob_predictor()
    image = blob_image((38, 26))
    result = explain.grad_cam(predictor, image, target="plain")
    assert result.label == "plain"
    assert result.heatmap[26, 38] < 0.2  # the blob itself is no evidence for "plain"
    assert result.heatmap[70, 92] > 0.5


def test_grad_cam_equals_cam_for_a_pooled_linear_head(models_root):
    """For global-average-pool + linear, Grad-CAM reduces to CAM (Zhou et al.): sum_k W[c,k] A_k."""
    from tests.imagegen import class_image
    from wildid.registry import load_predictor

    predictor = load_predictor("tiny")
    model = predictor.model
    batch = predictor.preprocess(class_image("striped", seed=3, size=(160, 160))).unsqueeze(0)
    cam, index, score, layer = explain.grad_cam_tensor(model, batch)
    assert layer == "layer4"
    with torch.inference_mode():
        features = model.forward_features(batch)[0]
        direct = torch.relu(torch.einsum("k,khw->hw", model.get_classifier().weight[index], features)).numpy()
    direct = explain._normalise(explain._resize_map(explain._normalise(direct), (160, 160)))
    np.testing.assert_allclose(cam, direct, atol=1e-4)
    assert score == pytest.approx(float(predictor.predict_proba(batch)[0, index]), abs=1e-5)


@pytest.mark.parametrize("name", ["tiny", "tiny-vit", "tiny-nir"])
def test_grad_cam_on_the_tiny_models(models_root, name):
    from tests.imagegen import class_image
    from wildid.registry import load_predictor

    predictor = load_predictor(name)
    image = class_image("striped", seed=5, size=(200, 150))
    result = explain.grad_cam(predictor, image)
    assert result.heatmap.shape == (150, 200)
    assert 0.0 <= result.heatmap.min() and result.heatmap.max() <= 1.0
    assert result.label == predictor.predict([image])[0].label
    if name == "tiny-vit":
        assert result.layer == "blocks.5.norm1"
        assert result.heatmap.max() > 0.9
    # The strips left and right of the centre crop were never seen by the model.
    left, top, width, height = explain.crop_geometry(image.size, predictor.card)
    assert left > 0 and np.all(result.heatmap[:, : int(left)] == 0)
    # No hooks are left behind on the shared model.
    assert all(not module._forward_hooks for module in predictor.model.modules())


def test_crop_geometry_matches_timm_centre_crop():
    card = ModelCard(name="x", arch="resnet18", classes=("a", "b"))  # 224, crop_pct 0.875
    left, top, width, height = explain.crop_geometry((4000, 3000), card)
    assert (width, height) == pytest.approx((2625.0, 2625.0))
    assert (left, top) == pytest.approx((687.5, 187.5))


def test_explanations_need_a_torch_model():
    class Onnxish:
        card = blob_predictor().card

    with pytest.raises(WildidError, match="torch back end"):
        explain.grad_cam(Onnxish(), blob_image((30, 30)))


def test_overlay_keeps_size_and_marks_the_hot_region():
    image = blob_image((38, 26))
    heatmap = np.zeros((96, 128), np.float32)
    heatmap[16:36, 28:48] = 1.0
    blended = np.asarray(explain.overlay(image, heatmap)).astype(int)
    assert blended.shape == (96, 128, 3)
    # Jet's hot end is red: the hot region turns redder than the cold one.
    hot, cold = blended[26, 38], blended[80, 110]
    assert hot[0] - hot[2] > cold[0] - cold[2] + 50


def test_first_layer_filters_of_a_cnn_and_a_vit():
    import timm

    sheet, text = explain.first_layer_filters(timm.create_model("test_resnet", num_classes=3))
    assert text.startswith("conv1.0: 16 filters of 3x3")
    assert sheet.width > 300 and sheet.mode == "RGB"
    sheet, text = explain.first_layer_filters(timm.create_model("test_vit", num_classes=3), max_filters=16)
    assert "64 filters of 16x16" in text and "(showing 16)" in text
    assert sheet.size == (8 * 42 + 2, 2 * 42 + 2)
    # Symmetric scaling: a hand-set kernel shows +w light, -w dark, 0 mid-grey.
    net = BlobNet()
    sheet, _ = explain.first_layer_filters(net, cell=3)
    pixels = np.asarray(sheet)
    assert tuple(pixels[2 + 1, 2 + 1]) == (255, 255, 255)  # filter 0 centre: +1/3
    assert tuple(pixels[2 + 0, 2 + 0]) == (128, 128, 128)  # filter 0 corner: 0
    assert tuple(pixels[2 + 1, 2 + 5 + 1]) == (0, 0, 0)  # filter 1 centre: -1/3


def test_activation_maps_shallow_and_deep_layers():
    import timm

    model = timm.create_model("test_resnet", num_classes=3).eval()
    layers = explain.layer_choices(model, (3, 160, 160))
    assert layers == ["act1", "layer1", "layer2", "layer3", "layer4"]
    batch = torch.randn(1, 3, 160, 160)
    sheet, text = explain.activation_maps(model, batch, "layer1", max_maps=8)
    assert text.startswith("layer1: 32 channels at 40x40")
    assert sheet.size == (4 * 98 + 2, 2 * 98 + 2)
    _, text = explain.activation_maps(model, batch, "layer4")
    assert "96 channels at 5x5" in text
    vit = timm.create_model("test_vit", num_classes=3).eval()
    assert explain.layer_choices(vit, (3, 160, 160))[:2] == ["patch_embed", "blocks.0"]
    _, text = explain.activation_maps(vit, batch, "blocks.2")
    assert text.startswith("blocks.2: 64 channels at 10x10")
