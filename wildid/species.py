"""Species facts: one TOML file per species in ``species_info/``, keyed by scientific name.

A file is named after the scientific name in snake case (``castor_canadensis.toml``) and
holds the keys of :class:`SpeciesInfo`; the optional ``[tracks]`` table holds the keys of
:class:`TrackInfo`; the required ``[taxonomy]`` table gives the entry's rank and the taxa
above it (see :mod:`wildid.taxonomy`). Group-level entries (a genus, family, order or class
used as a model label or as a rolled-up answer, such as ``Microtus`` for "vole" or
``Cervidae`` for the deer) follow the same schema. ``regions`` (optional) lists where a
hiker meets the animal: "North America", "Europe".

Model class labels are matched to a file by :func:`find_species`, which compares the label
with each file's scientific name, common name and aliases, ignoring case, ``_``, ``-`` and
extra spaces.

The folder is ``species_info/`` at the project root, or ``$WILDID_SPECIES_DIR`` if set.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from wildid.errors import WildidError
from wildid.taxonomy import HIKER_REGIONS, Lineage, TaxonomyError, parse_lineage

SPECIES_DIR_ENV = "WILDID_SPECIES_DIR"
DEFAULT_SPECIES_DIR = Path(__file__).resolve().parent.parent / "species_info"
GROUPS = ("mammal", "bird", "reptile", "amphibian", "fish", "invertebrate")
MAX_TOES = 5


class SpeciesInfoError(WildidError, ValueError):
    """A species file is malformed or incomplete; the message names the file."""


@dataclass(frozen=True)
class TrackInfo:
    """What a species' footprints look like.

    Toe counts are the toes that normally register in a print. Birds have no front and
    hind feet, so for a bird both counts give the toes of one foot.
    """

    print_size: str
    toes_front: int
    toes_hind: int
    claw_marks: str
    gait: str
    description: str

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class SpeciesInfo:
    scientific_name: str
    common_name: str
    aliases: tuple[str, ...]
    group: str
    habitat: str
    range: str
    size: str
    notable_fact: str
    look_alikes: tuple[str, ...]
    tracks: TrackInfo | None = None
    taxonomy: Lineage | None = None
    regions: tuple[str, ...] = ()

    @property
    def rank(self) -> str | None:
        """The entry's taxonomic rank ("species", "genus", "family", ...), e.g. for Camtrap DP's taxonRank."""
        return self.taxonomy.rank if self.taxonomy is not None else None

    @property
    def names(self) -> tuple[str, ...]:
        """Every name a model label may use for this species."""
        return (self.scientific_name, self.common_name, *self.aliases)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-friendly dict (lists, not tuples; ``tracks`` is None when absent)."""
        return {
            "scientific_name": self.scientific_name,
            "common_name": self.common_name,
            "aliases": list(self.aliases),
            "group": self.group,
            "habitat": self.habitat,
            "range": self.range,
            "size": self.size,
            "notable_fact": self.notable_fact,
            "look_alikes": list(self.look_alikes),
            "tracks": self.tracks.to_dict() if self.tracks is not None else None,
            "taxonomy": self.taxonomy.to_dict() if self.taxonomy is not None else None,
            "regions": list(self.regions),
        }


_STRING_KEYS = ("scientific_name", "common_name", "group", "habitat", "range", "size", "notable_fact")
_LIST_KEYS = ("aliases", "look_alikes")
_SPECIES_KEYS = frozenset((*_STRING_KEYS, *_LIST_KEYS, "tracks", "taxonomy", "regions"))
_TRACK_STRING_KEYS = ("print_size", "claw_marks", "gait", "description")
_TRACK_INT_KEYS = ("toes_front", "toes_hind")
_TRACK_KEYS = frozenset((*_TRACK_STRING_KEYS, *_TRACK_INT_KEYS))


def normalize_label(label: str) -> str:
    """``"Gray_Fox "`` -> ``"gray fox"``: lower case, ``_``/``-`` as spaces, single spaces."""
    return " ".join(label.replace("_", " ").replace("-", " ").lower().split())


def file_stem(scientific_name: str) -> str:
    """The file name (without ``.toml``) a species with this scientific name must have."""
    return "_".join(scientific_name.lower().split())


def species_dir() -> Path:
    """The default species folder: ``$WILDID_SPECIES_DIR`` or ``species_info/`` at the project root."""
    override = os.environ.get(SPECIES_DIR_ENV, "").strip()
    return Path(override).expanduser() if override else DEFAULT_SPECIES_DIR


def load_species(directory: Path | str | None = None) -> dict[str, SpeciesInfo]:
    """Read every ``*.toml`` in the folder; returns {scientific name: SpeciesInfo}.

    The default folder is read once and cached (see :func:`clear_cache`); an explicit
    ``directory`` is read afresh each call.
    """
    if directory is None:
        return dict(_load_cached(species_dir().resolve()))
    return _load_directory(Path(directory))


def find_species(label: str, directory: Path | str | None = None) -> SpeciesInfo | None:
    """The species a model class label refers to, or None (e.g. for "empty").

    Matches the scientific name, common name or any alias, ignoring case, ``_``, ``-`` and
    extra spaces, so "gray_fox", "Gray Fox" and "Urocyon cinereoargenteus" all match.
    """
    key = normalize_label(label)
    if not key:
        return None
    if directory is None:
        index = _index_cached(species_dir().resolve())
    else:
        index = _build_index(_load_directory(Path(directory)))
    return index.get(key)


def clear_cache() -> None:
    """Forget the cached default folder (after editing files or changing the env var)."""
    _load_cached.cache_clear()
    _index_cached.cache_clear()


@functools.lru_cache(maxsize=4)
def _load_cached(directory: Path) -> dict[str, SpeciesInfo]:
    return _load_directory(directory)


@functools.lru_cache(maxsize=4)
def _index_cached(directory: Path) -> dict[str, SpeciesInfo]:
    return _build_index(_load_cached(directory))


def _build_index(species: dict[str, SpeciesInfo]) -> dict[str, SpeciesInfo]:
    # Duplicates were rejected at load time, so each normalized name maps to one species.
    return {normalize_label(name): info for info in species.values() for name in info.names}


def _load_directory(directory: Path) -> dict[str, SpeciesInfo]:
    if not directory.is_dir():
        raise SpeciesInfoError(
            f"species folder not found: {directory}; create it or set {SPECIES_DIR_ENV} to the folder holding the species TOML files"
        )
    species: dict[str, SpeciesInfo] = {}
    owner_of_name: dict[str, tuple[str, Path]] = {}
    for path in sorted(directory.glob("*.toml")):
        info = _load_file(path)
        if info.scientific_name in species:
            raise SpeciesInfoError(f"{path}: scientific_name {info.scientific_name!r} is already used by another file")
        for name in info.names:
            key = normalize_label(name)
            previous = owner_of_name.get(key)
            if previous is not None and previous[0] != info.scientific_name:
                raise SpeciesInfoError(
                    f"{path}: name {name!r} also belongs to {previous[0]} ({previous[1].name}); "
                    "each label must map to one species"
                )
            owner_of_name[key] = (info.scientific_name, path)
        species[info.scientific_name] = info
    return species


def _load_file(path: Path) -> SpeciesInfo:
    try:
        with path.open("rb") as handle:
            data = tomllib.load(handle)
    except tomllib.TOMLDecodeError as err:
        raise SpeciesInfoError(f"{path}: not valid TOML ({err})") from err
    except UnicodeDecodeError as err:
        raise SpeciesInfoError(f"{path}: not UTF-8 text ({err.reason})") from err
    except OSError as err:
        raise SpeciesInfoError(f"{path}: cannot be read ({err.strerror or err})") from err

    _check_keys(path, data, _SPECIES_KEYS, required=_SPECIES_KEYS - {"tracks", "regions"}, where="")
    fields: dict[str, Any] = {key: _string(path, data, key) for key in _STRING_KEYS}
    for key in _LIST_KEYS:
        fields[key] = _string_list(path, data, key)

    if fields["group"] not in GROUPS:
        raise SpeciesInfoError(f"{path}: group must be one of {', '.join(GROUPS)}, not {fields['group']!r}")
    expected_stem = file_stem(fields["scientific_name"])
    if path.stem != expected_stem:
        raise SpeciesInfoError(
            f"{path}: file name does not match scientific_name {fields['scientific_name']!r}; rename it to {expected_stem}.toml"
        )
    if "tracks" in data:
        fields["tracks"] = _tracks(path, data["tracks"])
    try:
        fields["taxonomy"] = parse_lineage(data["taxonomy"], f"{path}: [taxonomy]", own_name=fields["scientific_name"])
    except TaxonomyError as err:
        raise SpeciesInfoError(str(err)) from None
    if "regions" in data:
        regions = _string_list(path, data, "regions")
        unknown = sorted(set(regions) - set(HIKER_REGIONS))
        if unknown:
            raise SpeciesInfoError(f"{path}: regions {', '.join(unknown)} not one of {', '.join(HIKER_REGIONS)}")
        fields["regions"] = regions
    return SpeciesInfo(**fields)


def _tracks(path: Path, table: Any) -> TrackInfo:
    if not isinstance(table, dict):
        raise SpeciesInfoError(f"{path}: 'tracks' must be a table ([tracks]), not {type(table).__name__}")
    _check_keys(path, table, _TRACK_KEYS, required=_TRACK_KEYS, where="tracks.")
    fields: dict[str, Any] = {key: _string(path, table, key, where="tracks.") for key in _TRACK_STRING_KEYS}
    for key in _TRACK_INT_KEYS:
        value = table[key]
        # bool is an int subclass; "toes_front = true" is a mistake, not 1.
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_TOES:
            raise SpeciesInfoError(f"{path}: tracks.{key} must be an integer from 0 to {MAX_TOES}, not {value!r}")
        fields[key] = value
    return TrackInfo(**fields)


def _check_keys(path: Path, data: dict, allowed: frozenset, required: frozenset, where: str) -> None:
    missing = sorted(required - data.keys())
    if missing:
        raise SpeciesInfoError(f"{path}: missing required key(s) {', '.join(where + k for k in missing)}")
    unknown = sorted(data.keys() - allowed)
    if unknown:
        raise SpeciesInfoError(
            f"{path}: unknown key(s) {', '.join(where + k for k in unknown)}; allowed: {', '.join(sorted(allowed))}"
        )


def _string(path: Path, data: dict, key: str, where: str = "") -> str:
    value = data[key]
    if not isinstance(value, str):
        raise SpeciesInfoError(f"{path}: {where}{key} must be a string, not {type(value).__name__}")
    value = " ".join(value.split())
    if not value:
        raise SpeciesInfoError(f"{path}: {where}{key} is empty")
    return value


def _string_list(path: Path, data: dict, key: str) -> tuple[str, ...]:
    value = data[key]
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise SpeciesInfoError(f"{path}: {key} must be a list of strings")
    items = tuple(" ".join(item.split()) for item in value)
    if not items or not all(items):
        raise SpeciesInfoError(f"{path}: {key} must be a non-empty list of non-empty strings")
    return items
