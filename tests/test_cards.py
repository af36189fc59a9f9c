"""Model cards: round trip, validation messages, timm compatibility of model folders."""

from __future__ import annotations

import pytest

from wildid.cards import ModelCard, load_card
from wildid.errors import CardError
from wildid.registry import find_card, list_cards


def test_round_trip_with_metrics_and_classes_file(tmp_path):
    card = ModelCard(
        name="voles", arch="resnet18", classes=tuple(f"c{i}" for i in range(40)), task="small-mammals",
        channel_mode="nir", metrics={"accuracy": 0.91, "folds": [0.9, 0.92], "confusion": [[1, 2], [3, 4]]},
        provenance={"command": "wildid train data --out models/voles"},
    )
    card.save(tmp_path / "voles", classes_file=True)
    assert (tmp_path / "voles" / "classes.txt").read_text().splitlines()[0] == "c0"
    loaded = load_card(tmp_path / "voles")
    assert loaded == card.replace(folder=tmp_path / "voles")
    assert loaded.metrics["confusion"] == [[1, 2], [3, 4]]


@pytest.mark.parametrize(
    "text, fragment",
    [
        ('name = "x"\narch = "resnet18"\nclasses = ["a"]\n', "at least 2 classes"),
        ('name = "x"\nclasses = ["a", "b"]\n', "required key 'arch'"),
        ('name = "x"\narch = "r"\nclasses = ["a", "a"]\n', "duplicate class names: a"),
        ('name = "x"\narch = "r"\nclasses = ["a", "b"]\nchannel_mode = "ir"\n', "channel_mode"),
        ('name = "x"\narch = "r"\nclasses = ["a", "b"]\ncolour = 1\n', "unknown keys: colour"),
        ('name = "x\narch = ', "not valid TOML"),
        ('name = "x"\narch = "r"\nclasses = "classes.txt"\n', "classes file 'classes.txt', which is missing"),
    ],
)
def test_bad_cards_give_one_line(text, fragment, tmp_path):
    (tmp_path / "card.toml").write_text(text)
    with pytest.raises(CardError) as err:
        load_card(tmp_path)
    assert fragment in str(err.value) and "\n" not in str(err.value)


def test_bundled_cards_are_valid():
    names = {card.name for card in list_cards()}
    assert {"general-animals", "tracks", "lemmings", "small-mammals"} <= names
    tracks = find_card("tracks")
    assert tracks.num_classes == 18 and "western gray squirrel" in tracks.classes and not tracks.has_weights
    assert find_card("lemmings").channel_mode == "nir"
    assert find_card("small-mammals").classes[-2:] == ("empty", "bad quality")


def test_every_slot_species_has_facts():
    from wildid.species import find_species

    for name in ("tracks", "lemmings", "small-mammals"):
        for label in find_card(name).classes:
            if label in ("empty", "bad quality"):
                continue
            assert find_species(label) is not None, (name, label)


def test_model_folder_loads_with_plain_timm():
    import timm

    model = timm.create_model(f"local-dir:{find_card('general-animals').folder}", pretrained=True)
    assert model.num_classes == 398
