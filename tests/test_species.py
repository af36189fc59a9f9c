"""species_info/ files and the wildid.species loader."""

from __future__ import annotations

import dataclasses
import json
import shutil
import tomllib
from pathlib import Path

import pytest

from wildid import species, taxonomy
from wildid.species import SpeciesInfo, SpeciesInfoError, TrackInfo, find_species, load_species

SPECIES_DIR = Path(__file__).resolve().parent.parent / "species_info"

TRACK_LABELS = [
    "beaver", "black bear", "bobcat", "coyote", "elephant", "goose", "gray fox", "horse", "lion",
    "mink", "mouse", "mule deer", "otter", "raccoon", "rat", "skunk", "turkey", "western gray squirrel",
]
LEMMING_LABELS = ["brown lemming", "gray collared lemming", "white collared lemming"]
SMALL_MAMMAL_LABELS = ["vole", "lemming", "shrew", "stoat", "least weasel", "bird"]
ALL_LABELS = TRACK_LABELS + LEMMING_LABELS + SMALL_MAMMAL_LABELS

# Labels whose species facts must include a [tracks] table.
LABELS_WITH_TRACKS = TRACK_LABELS + ["vole", "lemming", "shrew", "stoat", "least weasel"]

EXPECTED_SCIENTIFIC = {
    "beaver": "Castor canadensis",
    "black bear": "Ursus americanus",
    "bobcat": "Lynx rufus",
    "coyote": "Canis latrans",
    "elephant": "Loxodonta africana",
    "goose": "Branta canadensis",
    "gray fox": "Urocyon cinereoargenteus",
    "horse": "Equus caballus",
    "lion": "Panthera leo",
    "mink": "Neogale vison",
    "mouse": "Peromyscus maniculatus",
    "mule deer": "Odocoileus hemionus",
    "otter": "Lontra canadensis",
    "raccoon": "Procyon lotor",
    "rat": "Rattus norvegicus",
    "skunk": "Mephitis mephitis",
    "turkey": "Meleagris gallopavo",
    "western gray squirrel": "Sciurus griseus",
    "brown lemming": "Lemmus trimucronatus",
    "gray collared lemming": "Dicrostonyx groenlandicus",
    "white collared lemming": "Dicrostonyx groenlandicus",
    "vole": "Microtus",
    "lemming": "Lemmini",
    "shrew": "Sorex",
    "stoat": "Mustela erminea",
    "least weasel": "Mustela nivalis",
    "bird": "Aves",
}

SPECIES_FILES = sorted(SPECIES_DIR.glob("*.toml"))
STRING_KEYS = ("scientific_name", "common_name", "group", "habitat", "range", "size", "notable_fact")
TRACK_STRING_KEYS = ("print_size", "claw_marks", "gait", "description")

VALID_TOML = """\
scientific_name = "Testus minimus"
common_name = "Test animal"
aliases = ["test animal"]
group = "mammal"
habitat = "Test habitat."
range = "Test range."
size = "Small."
notable_fact = "Only exists in tests."
look_alikes = ["Other animal: bigger."]

[taxonomy]
rank = "species"
genus = "Testus"
family = "Testidae"
order = "Testiformes"
class = "Mammalia"
"""


@pytest.fixture
def species_copy(tmp_path: Path) -> Path:
    """A private copy of species_info/ that a test may break."""
    target = tmp_path / "species_info"
    shutil.copytree(SPECIES_DIR, target)
    return target


@pytest.fixture(autouse=True)
def fresh_cache():
    species.clear_cache()
    yield
    species.clear_cache()


def _raw(path: Path) -> dict:
    with path.open("rb") as handle:
        return tomllib.load(handle)


# --- the data files ---------------------------------------------------------------------


def test_every_model_label_has_its_own_file():
    stems = {path.stem for path in SPECIES_FILES}
    assert {species.file_stem(name) for name in EXPECTED_SCIENTIFIC.values()} <= stems


@pytest.mark.parametrize("label", ALL_LABELS)
def test_every_model_label_resolves(label):
    info = find_species(label)
    assert isinstance(info, SpeciesInfo), label
    assert info.scientific_name == EXPECTED_SCIENTIFIC[label]


@pytest.mark.parametrize("label", TRACK_LABELS)
def test_track_labels_are_aliases(label):
    info = find_species(label)
    assert label in info.aliases


@pytest.mark.parametrize("label", LABELS_WITH_TRACKS)
def test_track_species_have_tracks(label):
    assert isinstance(find_species(label).tracks, TrackInfo)


@pytest.mark.parametrize("path", SPECIES_FILES, ids=lambda p: p.name)
def test_file_has_every_key_filled(path):
    data = _raw(path)
    for key in STRING_KEYS:
        assert isinstance(data[key], str) and data[key].strip(), key
    for key in ("aliases", "look_alikes"):
        assert isinstance(data[key], list) and data[key], key
        assert all(isinstance(item, str) and item.strip() for item in data[key]), key
    assert data["group"] in ("mammal", "bird", "reptile", "amphibian", "fish", "invertebrate")
    assert all(alias == alias.lower() for alias in data["aliases"])
    # "Name: how to tell apart"
    assert all(": " in item for item in data["look_alikes"])
    assert set(data) <= set(STRING_KEYS) | {"aliases", "look_alikes", "tracks", "taxonomy", "regions"}
    assert data["taxonomy"]["rank"] in ("species", "genus", "tribe", "subfamily", "family", "order", "class")
    assert set(data.get("regions", [])) <= {"North America", "Europe"}
    if "tracks" in data:
        tracks = data["tracks"]
        assert set(tracks) == set(TRACK_STRING_KEYS) | {"toes_front", "toes_hind"}
        for key in TRACK_STRING_KEYS:
            assert isinstance(tracks[key], str) and tracks[key].strip(), key
        for key in ("toes_front", "toes_hind"):
            assert type(tracks[key]) is int and 1 <= tracks[key] <= 5, key


def test_scientific_names_unique_and_match_file_names():
    names = [_raw(path)["scientific_name"] for path in SPECIES_FILES]
    assert len(names) == len(set(names))
    for path, name in zip(SPECIES_FILES, names):
        assert path.stem == name.lower().replace(" ", "_")


def test_aliases_unique_across_files():
    owner: dict[str, str] = {}
    for path in SPECIES_FILES:
        data = _raw(path)
        for name in (data["scientific_name"], data["common_name"], *data["aliases"]):
            key = species.normalize_label(name)
            assert owner.setdefault(key, data["scientific_name"]) == data["scientific_name"], (
                f"{name!r} maps to {owner[key]} and {data['scientific_name']}"
            )


def test_lion_entry_warns_about_cougar():
    lion = find_species("lion")
    assert any("cougar" in item.lower() for item in lion.look_alikes)


def test_collared_lemming_mentions_winter_white_coat():
    collared = find_species("white collared lemming")
    text = " ".join((collared.notable_fact, *collared.look_alikes)).lower()
    assert "white" in text and "nir" in text


# --- the loader -----------------------------------------------------------------------


def test_load_species_keyed_by_scientific_name():
    loaded = load_species()
    assert set(loaded) >= set(EXPECTED_SCIENTIFIC.values())
    assert len(loaded) == len(SPECIES_FILES)
    beaver = loaded["Castor canadensis"]
    assert beaver.common_name == "North American beaver"
    assert beaver.tracks.toes_front == 5 and beaver.tracks.toes_hind == 5
    assert loaded["Aves"].tracks is None


def test_default_load_is_cached_and_returns_copies():
    first = load_species()
    first.clear()
    second = load_species()
    assert second and second == load_species()
    assert species._load_cached.cache_info().hits >= 1


@pytest.mark.parametrize(
    "label",
    ["gray_fox", "Gray Fox", "GRAY-FOX", "  gray   fox ", "Urocyon cinereoargenteus", "urocyon_cinereoargenteus", "grey fox"],
)
def test_find_species_normalizes_labels(label):
    assert find_species(label).scientific_name == "Urocyon cinereoargenteus"


@pytest.mark.parametrize("label", ["empty", "bad quality", "bad_quality", "", "   ", "unicorn"])
def test_unknown_labels_return_none(label):
    assert find_species(label) is None


def test_to_dict_is_json_friendly():
    info = find_species("beaver")
    as_dict = info.to_dict()
    assert as_dict["aliases"][0] == "beaver"
    assert as_dict["tracks"]["toes_hind"] == 5
    assert json.loads(json.dumps(as_dict)) == as_dict
    assert find_species("bird").to_dict()["tracks"] is None
    assert set(as_dict) == {f.name for f in dataclasses.fields(SpeciesInfo)}


def test_species_info_is_frozen():
    info = find_species("beaver")
    with pytest.raises(dataclasses.FrozenInstanceError):
        info.common_name = "other"  # type: ignore[misc]


def test_env_var_overrides_default_folder(tmp_path, monkeypatch):
    (tmp_path / "testus_minimus.toml").write_text(VALID_TOML, encoding="utf-8")
    monkeypatch.setenv(species.SPECIES_DIR_ENV, str(tmp_path))
    assert list(load_species()) == ["Testus minimus"]
    assert find_species("Test_Animal").scientific_name == "Testus minimus"
    assert find_species("beaver") is None


def test_explicit_directory(tmp_path):
    (tmp_path / "testus_minimus.toml").write_text(VALID_TOML, encoding="utf-8")
    assert find_species("testus minimus", directory=tmp_path).common_name == "Test animal"
    assert find_species("beaver", directory=tmp_path) is None


def test_malformed_toml_names_the_file(species_copy):
    broken = species_copy / "castor_canadensis.toml"
    broken.write_text('scientific_name = "Castor canadensis\ncommon_name = \n', encoding="utf-8")
    with pytest.raises(SpeciesInfoError) as excinfo:
        load_species(species_copy)
    message = str(excinfo.value)
    assert "castor_canadensis.toml" in message and "TOML" in message
    assert "\n" not in message
    assert isinstance(excinfo.value, ValueError)


@pytest.mark.parametrize(
    ("edit", "expected"),
    [
        (lambda text: text.replace('habitat = "Test habitat."\n', ""), "missing required key(s) habitat"),
        (lambda text: text.replace('"Test habitat."', '""'), "habitat is empty"),
        (lambda text: text.replace('"Test habitat."', "3"), "habitat must be a string"),
        (lambda text: text.replace('group = "mammal"', 'group = "plant"'), "group must be one of"),
        (lambda text: text.split("[taxonomy]")[0], "missing required key(s) taxonomy"),
        (lambda text: text.replace('family = "Testidae"\n', ""), "[taxonomy]: missing family"),
        (lambda text: text.replace('rank = "species"\n', ""), "[taxonomy]: rank is missing"),
        (lambda text: text.replace('genus = "Testus"', 'genus = "Otherus"'), "does not belong to genus 'Otherus'"),
        (lambda text: text.replace('look_alikes = [', 'regions = ["Asia"]\nlook_alikes = ['), "regions Asia not one of"),
        (lambda text: text.replace('aliases = ["test animal"]', "aliases = []"), "aliases must be a non-empty list"),
        (lambda text: text.replace("[taxonomy]", 'colour = "brown"\n\n[taxonomy]'), "unknown key(s) colour"),
        (lambda text: text.replace("Testus minimus", "Testus maximus"), "rename it to testus_maximus.toml"),
        (
            lambda text: text + '[tracks]\nprint_size = "1 cm"\ntoes_front = 4\nclaw_marks = "no"\ngait = "walk"\ndescription = "d"\n',
            "missing required key(s) tracks.toes_hind",
        ),
        (
            lambda text: text
            + '[tracks]\nprint_size = "1 cm"\ntoes_front = 6\ntoes_hind = 4\nclaw_marks = "no"\ngait = "walk"\ndescription = "d"\n',
            "tracks.toes_front must be an integer",
        ),
        (
            lambda text: text
            + '[tracks]\nprint_size = "1 cm"\ntoes_front = "four"\ntoes_hind = 4\nclaw_marks = "no"\ngait = "walk"\ndescription = "d"\n',
            "tracks.toes_front must be an integer",
        ),
    ],
)
def test_bad_content_names_file_and_problem(tmp_path, edit, expected):
    path = tmp_path / "testus_minimus.toml"
    path.write_text(edit(VALID_TOML), encoding="utf-8")
    with pytest.raises(SpeciesInfoError) as excinfo:
        load_species(tmp_path)
    message = str(excinfo.value)
    assert "testus_minimus.toml" in message
    assert expected in message
    assert "\n" not in message


def test_alias_claimed_by_two_files_is_rejected(tmp_path):
    (tmp_path / "testus_minimus.toml").write_text(VALID_TOML, encoding="utf-8")
    (tmp_path / "testus_secundus.toml").write_text(
        VALID_TOML.replace("Testus minimus", "Testus secundus").replace('"Test animal"', '"Second animal"'),
        encoding="utf-8",
    )
    with pytest.raises(SpeciesInfoError, match="test animal.*each label must map to one species"):
        load_species(tmp_path)


def test_missing_folder_is_a_clear_error(tmp_path):
    with pytest.raises(SpeciesInfoError, match="WILDID_SPECIES_DIR"):
        load_species(tmp_path / "nowhere")


def test_species_module_stays_light():
    source = Path(species.__file__).read_text(encoding="utf-8")
    assert "streamlit" not in source and "torch" not in source


# --- facts for the animals people photograph (issue 15) ----------------------------------------------
# The general model's classes that are wild vertebrates a hiker of North America or Europe can meet:
# native or widely established there, on land, in fresh water or seen from the shore. Domestic animals
# (dog breeds, cats, cattle), pets and animals of other continents or of the open sea are left out.
# Before this list got its entries, 9 of these 111 classes had facts.
GENERAL_HIKER_CLASSES = [
    "tench", "coho", "sturgeon", "eel", "gar", "European fire salamander", "common newt", "eft",
    "spotted salamander", "bullfrog", "tree frog", "tailed frog", "loggerhead", "leatherback turtle",
    "mud turtle", "terrapin", "box turtle", "banded gecko", "American chameleon", "whiptail",
    "alligator lizard", "Gila monster", "green lizard", "American alligator", "thunder snake", "ringneck snake",
    "hognose snake", "green snake", "king snake", "garter snake", "water snake", "night snake", "diamondback",
    "sidewinder", "brambling", "goldfinch", "house finch", "junco", "indigo bunting", "robin", "jay", "magpie",
    "chickadee", "water ouzel", "kite", "bald eagle", "vulture", "great grey owl", "black grouse", "ptarmigan",
    "ruffed grouse", "prairie chicken", "quail", "partridge", "bee eater", "hummingbird", "drake",
    "red-breasted merganser", "goose", "white stork", "black stork", "spoonbill", "flamingo",
    "little blue heron", "American egret", "bittern", "crane", "limpkin", "European gallinule", "American coot",
    "bustard", "ruddy turnstone", "red-backed sandpiper", "redshank", "dowitcher", "oystercatcher", "pelican",
    "grey whale", "killer whale", "sea lion", "timber wolf", "white wolf", "red wolf", "coyote", "red fox",
    "kit fox", "Arctic fox", "grey fox", "cougar", "lynx", "brown bear", "American black bear", "ice bear",
    "wood rabbit", "hare", "porcupine", "fox squirrel", "marmot", "beaver", "wild boar", "bison", "bighorn",
    "ibex", "weasel", "mink", "polecat", "black-footed ferret", "otter", "skunk", "badger", "armadillo",
]


def test_general_model_wild_vertebrates_have_facts():
    from wildid.registry import find_card

    card = find_card("general-animals")
    assert len(GENERAL_HIKER_CLASSES) == len(set(GENERAL_HIKER_CLASSES)) == 111
    assert set(GENERAL_HIKER_CLASSES) <= set(card.classes)
    missing = [label for label in GENERAL_HIKER_CLASSES if taxonomy.facts_for(label, card) is None]
    assert missing == [], f"{len(missing)} of {len(GENERAL_HIKER_CLASSES)} classes still without facts: {missing}"


@pytest.mark.parametrize("label", GENERAL_HIKER_CLASSES)
def test_facts_of_a_class_belong_to_the_taxon_it_stands_for(label):
    from wildid.registry import find_card

    card = find_card("general-animals")
    info = taxonomy.facts_for(label, card)
    lineage = taxonomy.taxonomy_for(card).lineage(label)
    # At the class's own taxon or below it (ImageNet "goose" -> Canada goose, inside the geese), never beside it.
    assert info.taxonomy.contains(lineage.name), (label, lineage.describe(), info.taxonomy.describe())
    assert info.regions or info.taxonomy.rank != "species"
