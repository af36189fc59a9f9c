"""A stand-in for models/tracks-families (5 footprint families) for tests that need a real
footprint model before the shipped one is installed: the packaged EfficientNet-Lite0 ImageNet
backbone (timm's tf_efficientnet_lite0, the TensorFlow-trained weights' own architecture) with a
logistic-regression head fitted on part of the real footprint photos' train split, and a kNN
scope check (the score bench/scope.py found best for the track model) calibrated on the valid split.
"""

from __future__ import annotations

import csv
from pathlib import Path

import torch

TRACKS = Path("/work/shared/data/tracks-families")
FAMILIES = ("bear", "canid", "deer", "felid", "mustelid")


def split_rows(split: str, per_class: int | None = None) -> list[dict]:
    rows = [r for r in csv.DictReader((TRACKS / "labels.csv").open(newline="")) if r["split"] == split]
    if per_class is None:
        return rows
    kept, counts = [], {}
    for row in rows:
        if counts.get(row["label"], 0) < per_class:
            counts[row["label"]] = counts.get(row["label"], 0) + 1
            kept.append(row)
    return kept


def installed_tracks_model() -> Path | None:
    """models/tracks-families when it is installed with weights and a scope check."""
    from wildid.registry import PROJECT_ROOT

    folder = PROJECT_ROOT / "models" / "tracks-families"
    if not (folder / "card.toml").is_file():
        return None
    from wildid.cards import load_card

    card = load_card(folder)
    return folder if card.has_weights and card.scope_kind else None


def make_tracks_standin(root: Path, name: str = "tracks-families", per_class: int = 20) -> Path:
    import timm
    from sklearn.linear_model import LogisticRegression

    from tests.imagegen import nir_frame, noise_image
    from wildid import scope
    from wildid.backbones import lite0_package_state_dict
    from wildid.cards import ModelCard
    from wildid.registry import load_predictor, save_model

    card = ModelCard(
        name=name, title="Animal tracks, 5 families (test stand-in)", task="tracks", arch="tf_efficientnet_lite0",
        classes=FAMILIES, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), interpolation="bicubic", crop_pct=0.875,
        threshold=0.5, provenance={"data": str(TRACKS), "command": "tests/trackstandin.py"},
    )
    model = timm.create_model("tf_efficientnet_lite0", num_classes=1000)
    model.load_state_dict(lite0_package_state_dict())
    torch.manual_seed(0)
    model.reset_classifier(len(FAMILIES))
    folder = root / name
    save_model(model, card, folder)
    predictor = load_predictor(folder)
    train = split_rows("train", per_class)
    _, features = scope.logits_and_features(predictor, [TRACKS / r["path"] for r in train])
    labels = [FAMILIES.index(r["label"]) for r in train]
    head = LogisticRegression(C=1.0, max_iter=3000).fit(features, labels)
    with torch.no_grad():
        model.classifier.weight.copy_(torch.tensor(head.coef_, dtype=torch.float32))
        model.classifier.bias.copy_(torch.tensor(head.intercept_, dtype=torch.float32))
    card = save_model(model, card, folder)
    predictor = load_predictor(folder)
    calib_in = [TRACKS / r["path"] for r in split_rows("valid", 8)]
    calib_out = [nir_frame(seed) for seed in range(6)] + [noise_image(seed, (256, 192)) for seed in range(4)]
    # The head does not change the pooled features: reuse those computed for fitting it.
    scope.calibrate_model(predictor, "knn", calib_in, calib_out, fit_labels=labels, fit_features=features,
                          measured_by="test stand-in (tests/trackstandin.py)")
    return folder
