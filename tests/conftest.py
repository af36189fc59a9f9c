"""Shared fixtures: a private models root with tiny, really-trained models.

Heavy models are never downloaded: tiny timm architectures (``test_resnet``,
``test_vit``, ``test_efficientnet``) get a head fitted on generated images, so tests can
assert which class comes out.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.imagegen import CLASS_STYLES, class_image

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
PROJECT_ROOT = Path(__file__).resolve().parent.parent


def fit_head(model: torch.nn.Module, card, images_by_class: dict[str, list]) -> None:
    """Fit the classifier on pooled features with scikit-learn's logistic regression."""
    from sklearn.linear_model import LogisticRegression

    from wildid.predictor import build_transform

    transform = build_transform(card)
    feats, labels = [], []
    model.eval()
    with torch.inference_mode():
        for index, label in enumerate(card.classes):
            batch = torch.stack([transform(img) for img in images_by_class[label]])
            feats.append(model.forward_head(model.forward_features(batch), pre_logits=True).numpy())
            labels += [index] * len(batch)
    features = np.concatenate(feats)
    clf = LogisticRegression(C=10.0, max_iter=2000).fit(features, labels)
    head = model.get_classifier()
    with torch.no_grad():
        head.weight.copy_(torch.tensor(clf.coef_, dtype=torch.float32))
        head.bias.copy_(torch.tensor(clf.intercept_, dtype=torch.float32))


def make_tiny_model(root: Path, name: str = "tiny", arch: str = "test_resnet", threshold: float = 0.5, **card_fields):
    """A tiny model that really separates dark / bright / striped images (see CLASS_STYLES)."""
    import timm

    from wildid.backbones import default_data_config
    from wildid.cards import ModelCard
    from wildid.registry import save_model

    torch.manual_seed(0)
    classes = tuple(CLASS_STYLES)
    cfg = default_data_config(arch)
    card = ModelCard(
        name=name,
        title=f"Tiny {arch} test model",
        task="tracks",
        arch=arch,
        classes=classes,
        input_size=tuple(cfg["input_size"]),
        mean=tuple(cfg["mean"]),
        std=tuple(cfg["std"]),
        interpolation=cfg["interpolation"],
        crop_pct=float(cfg["crop_pct"]),
        threshold=threshold,
        provenance={"data": "generated test images", "command": "tests/conftest.py"},
        **card_fields,
    )
    model = timm.create_model(arch, num_classes=len(classes))
    images = {label: [class_image(style, seed) for seed in range(12)] for label, style in CLASS_STYLES.items()}
    fit_head(model, card, images)
    return save_model(model, card, root / name)


@pytest.fixture(autouse=True)
def _private_data_folders(tmp_path_factory, monkeypatch):
    """The allowed data folder and the session work folders in tmp, never in the real home
    (tests that check the defaults unset WILDID_ALLOWED_ROOT and point HOME elsewhere)."""
    if not os.environ.get("WILDID_ALLOWED_ROOT"):
        monkeypatch.setenv("WILDID_ALLOWED_ROOT", str(tmp_path_factory.mktemp("wildid-data")))
    if not os.environ.get("WILDID_SESSIONS"):
        monkeypatch.setenv("WILDID_SESSIONS", str(tmp_path_factory.mktemp("wildid-sessions")))


@pytest.fixture(autouse=True)
def _clear_streamlit_caches():
    """Every test starts without models or data cached by an earlier AppTest run."""
    import streamlit as st

    st.cache_resource.clear()
    st.cache_data.clear()
    yield
    st.cache_resource.clear()
    st.cache_data.clear()


@pytest.fixture(scope="session")
def _tiny_models_master(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("models-master")
    make_tiny_model(root, "tiny", "test_resnet")
    make_tiny_model(root, "tiny-vit", "test_vit")
    make_tiny_model(root, "tiny-nir", "test_efficientnet", channel_mode="nir")
    # A slot: card with classes, no weights.
    from wildid.cards import ModelCard

    ModelCard(name="empty-slot", arch="resnet18", classes=("a", "b"), task="custom").save(root / "empty-slot")
    return root


@pytest.fixture()
def models_root(_tiny_models_master, tmp_path, monkeypatch) -> Path:
    """A writable copy of the tiny models, first on WILDID_MODELS; the cache is cleared."""
    import shutil

    from wildid import registry

    root = tmp_path / "models"
    shutil.copytree(_tiny_models_master, root)
    monkeypatch.setenv("WILDID_MODELS", str(root))
    monkeypatch.setenv("WILDID_CACHE", str(tmp_path / "cache"))
    registry.clear_cache()
    yield root
    registry.clear_cache()


@pytest.fixture()
def class_images(tmp_path) -> dict[str, Path]:
    """One held-out JPEG per class (seeds not used in fitting)."""
    out = {}
    for label, style in CLASS_STYLES.items():
        path = tmp_path / "images" / f"{label.replace(' ', '_')}.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        class_image(style, seed=100).save(path, quality=92)
        out[label] = path
    return out
