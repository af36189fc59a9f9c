"""Taxonomy of model classes and species facts, and the roll-up of uncertain predictions.

Every model class has a *lineage*: the taxon the class names (its rank and scientific name)
and the taxa above it, up to the biological class (``Mammalia``, ``Aves``, ``Insecta``...).
A class that is itself a genus or family (ImageNet's "hare" is the genus *Lepus*, "skunk"
the family *Mephitidae*) starts at that rank and says so with ``rank = "genus"``.

The lineages of a model's classes live beside its weights in ``models/<name>/taxonomy.toml``:

    [classes]
    "tabby" = { species = "Felis catus", genus = "Felis", family = "Felidae", order = "Carnivora", class = "Mammalia" }
    "hare" = { rank = "genus", genus = "Lepus", family = "Leporidae", order = "Lagomorpha", class = "Mammalia" }

    "empty" = { rank = "none" }  # not an animal: empty frame, bad quality
    [names]                      # common names of the taxa an answer may name
    "Felidae" = "cats"

A class missing from that file (or a model without one, e.g. a model you trained) takes
the lineage of its species facts (``species_info/*.toml``, table ``[taxonomy]``), found by
class name as for the facts card.

Roll-up (:class:`RollUp`): when the top class of a prediction is below the card's
threshold, the probabilities of the classes are summed within each taxon, walking up
species -> genus -> family -> order -> class, and the answer is the lowest taxon whose sum
reaches the threshold *after correcting for chance*.  A taxon holding a share ``s`` of the
model's classes gets a sum near ``s`` from a prediction that knows nothing (ImageNet's 119
dog breeds make "domestic dog" 30% of a flat prediction, Carnivora 40%), so the sum ``p``
is scored as ``(p - s) / (1 - s)``: the part of the way from chance to certainty, as in
Cohen's kappa.  For one class of many (``s`` near 0) this is the plain sum; a taxon holding
every class (``s = 1``) is never an answer.  The probability reported is the plain sum.

Open world (``[rollup] open_world = true`` in a model's ``taxonomy.toml``): photos of animals
outside the model's classes are expected (the ImageNet model has no deer, elk or raccoon).
Such a photo spreads its probability over the nearest classes the model has, all in a
*sibling* taxon: an elk's over ibex, gazelle and impala (Bovidae), a raccoon's over the
lesser panda and the bears.  So a group answer is not given at a rank where its parent holds
a taxon a hiker may meet (species facts with a region in ``HIKER_REGIONS``) that none of the
model's classes belongs to: "Bovidae" is not an answer, since Artiodactyla also holds the
deer (Cervidae) the model cannot see; the walk goes on to Artiodactyla.  A top class at or
above the threshold still answers with its own taxon.
"""

from __future__ import annotations

import functools
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from wildid.errors import WildidError

TAXONOMY_FILE = "taxonomy.toml"
# Lowest first. tribe / subfamily only name classes (ImageNet "otter" is the subfamily Lutrinae).
RANKS = ("species", "genus", "tribe", "subfamily", "family", "order", "class", "phylum")
# The ranks a roll-up walks and every lineage must reach, lowest first.
ROLLUP_RANKS = ("species", "genus", "family", "order", "class")
HIKER_REGIONS = ("North America", "Europe")
# The marker for a class that names no animal ("empty", "bad quality").
NOT_A_TAXON = "none"
CLOSEST = 3

RANK_WORDS = {"species": "species", "genus": "genus", "tribe": "tribe", "subfamily": "subfamily",
              "family": "family", "order": "order", "class": "class", "phylum": "phylum"}


class TaxonomyError(WildidError, ValueError):
    """A taxonomy file or table is malformed or inconsistent; the message names the file."""


@dataclass(frozen=True)
class Lineage:
    """A taxon and the taxa above it: ``taxa`` holds (rank, scientific name), lowest first."""

    taxa: tuple[tuple[str, str], ...]

    @property
    def rank(self) -> str:
        return self.taxa[0][0]

    @property
    def name(self) -> str:
        return self.taxa[0][1]

    def at(self, rank: str) -> str | None:
        """The scientific name at ``rank``, or None when the lineage has no such rank."""
        return next((name for r, name in self.taxa if r == rank), None)

    def contains(self, taxon: str) -> bool:
        return any(name == taxon for _, name in self.taxa)

    def to_dict(self) -> dict[str, str]:
        return {"rank": self.rank, **{r: name for r, name in self.taxa}}

    def describe(self) -> str:
        """``Felis catus < Felis < Felidae < Carnivora < Mammalia``."""
        return " < ".join(name for _, name in self.taxa)


def parse_lineage(table: Any, where: str, own_name: str | None = None) -> Lineage:
    """A lineage from a TOML table {rank: name, ..., optional "rank"}; raises TaxonomyError naming ``where``.

    ``own_name`` is the entry's scientific name when the table belongs to a species-facts file: the
    table then gives the ranks *above* it and ``rank`` (required) says which rank the entry itself is.
    """
    if not isinstance(table, dict):
        raise TaxonomyError(f"{where}: the taxonomy must be a table of rank = name, not {type(table).__name__}")
    unknown = sorted(set(table) - set(RANKS) - {"rank"})
    if unknown:
        raise TaxonomyError(f"{where}: unknown rank(s) {', '.join(unknown)}; ranks are {', '.join(RANKS)} (and 'rank')")
    for key, value in table.items():
        if not isinstance(value, str) or not value.strip():
            raise TaxonomyError(f"{where}: {key} must be a non-empty string")
    names = {rank: " ".join(table[rank].split()) for rank in RANKS if rank in table}
    declared = table.get("rank")
    if own_name is not None:
        if declared is None:
            raise TaxonomyError(f"{where}: rank is missing (the rank of this entry, e.g. rank = \"species\")")
        if declared in names:
            raise TaxonomyError(f"{where}: give the ranks above the entry; {declared} is the entry's own scientific name")
        if declared in RANKS:
            names[declared] = own_name
    if declared is not None and declared not in RANKS:
        raise TaxonomyError(f"{where}: rank {declared!r} is not one of {', '.join(RANKS)}")
    if not names:
        raise TaxonomyError(f"{where}: no ranks given")
    lowest = next(rank for rank in RANKS if rank in names)
    if declared is None and lowest != "species":
        raise TaxonomyError(
            f"{where}: no species given; if the class is itself a {lowest}, say so with rank = \"{lowest}\""
        )
    if declared is not None and declared != lowest:
        raise TaxonomyError(f"{where}: rank = {declared!r} but the lowest rank given is {lowest}")
    start = RANKS.index(lowest)
    if lowest != "phylum":
        missing = [r for r in ROLLUP_RANKS if RANKS.index(r) > start and r not in names]
        if missing:
            raise TaxonomyError(f"{where}: missing {', '.join(missing)} (every line reaches the class)")
    for rank, name in names.items():
        words = name.split()
        if rank == "species":
            if len(words) != 2 or not words[0][:1].isupper() or not words[1].islower():
                raise TaxonomyError(f"{where}: species {name!r} is not a binomial like 'Felis catus'")
            if "genus" in names and words[0] != names["genus"]:
                raise TaxonomyError(f"{where}: species {name!r} does not belong to genus {names['genus']!r}")
        elif len(words) != 1 or not name[:1].isupper():
            raise TaxonomyError(f"{where}: {rank} {name!r} must be one capitalised word")
    return Lineage(tuple((rank, names[rank]) for rank in RANKS if rank in names))


# --- a model's taxonomy ---------------------------------------------------------------------------
@dataclass(frozen=True)
class Taxonomy:
    """Lineages of class labels and common names of taxa (one model's ``taxonomy.toml``)."""

    lineages: Mapping[str, Lineage] = field(default_factory=dict)
    names: Mapping[str, str] = field(default_factory=dict)
    source: str = ""
    not_taxa: frozenset[str] = frozenset()  # classes marked rank = "none": no animal
    # [rollup] open_world: photos of animals outside the classes are expected (see the module docstring).
    open_world: bool = False

    def lineage(self, label: str) -> Lineage | None:
        return self.lineages.get(label)

    def common_name(self, taxon: str) -> str:
        """The common name of a taxon: this file's [names], else its species facts, else ''."""
        if taxon in self.names:
            return self.names[taxon]
        info = _facts(taxon)
        return info.common_name if info is not None else ""


def load_taxonomy_file(path: Path | str) -> Taxonomy:
    """Read and check a ``taxonomy.toml``; raises TaxonomyError with a one-line reason."""
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as err:
        raise TaxonomyError(f"{path}: not valid TOML ({err})") from None
    except OSError as err:
        raise TaxonomyError(f"{path}: cannot be read ({err.strerror or err})") from None
    unknown = sorted(set(data) - {"classes", "names", "rollup"})
    if unknown:
        raise TaxonomyError(f"{path}: unknown table(s) {', '.join(unknown)}; allowed: classes, names, rollup")
    classes = data.get("classes", {})
    names = data.get("names", {})
    rollup = data.get("rollup", {})
    if not isinstance(classes, dict) or not isinstance(names, dict) or not isinstance(rollup, dict):
        raise TaxonomyError(f"{path}: [classes], [names] and [rollup] must be tables")
    if set(rollup) - {"open_world"} or not isinstance(rollup.get("open_world", False), bool):
        raise TaxonomyError(f"{path}: [rollup] takes one key, open_world = true or false")
    not_taxa = frozenset(str(label) for label, table in classes.items() if table == {"rank": NOT_A_TAXON})
    lineages = {str(label): parse_lineage(table, f"{path}: class {label!r}")
                for label, table in classes.items() if str(label) not in not_taxa}
    check_consistent(lineages.items(), str(path))
    for taxon, common in names.items():
        if not isinstance(common, str) or not common.strip():
            raise TaxonomyError(f"{path}: [names] {taxon!r} must be a non-empty string")
    return Taxonomy(lineages, {str(k): " ".join(v.split()) for k, v in names.items()}, str(path), not_taxa,
                    bool(rollup.get("open_world", False)))


def check_consistent(items: Iterable[tuple[str, Lineage]], where: str) -> None:
    """Each taxon sits at one rank under one parent: 'Canis' is always a genus of Canidae."""
    seen: dict[str, tuple[str, tuple[tuple[str, str], ...], str]] = {}
    for label, lineage in items:
        for i, (rank, name) in enumerate(lineage.taxa):
            above = lineage.taxa[i + 1:]
            previous = seen.get(name)
            if previous is None:
                seen[name] = (rank, above, label)
                continue
            prev_rank, prev_above, prev_label = previous
            if prev_rank != rank:
                raise TaxonomyError(f"{where}: {name} is a {prev_rank} for {prev_label!r} but a {rank} for {label!r}")
            # One lineage may stop lower than the other (a phylum is optional): compare shared ranks.
            shared = {r for r, _ in above} & {r for r, _ in prev_above}
            if {p for p in above if p[0] in shared} != {p for p in prev_above if p[0] in shared}:
                raise TaxonomyError(
                    f"{where}: {name} has different parents for {prev_label!r} "
                    f"({' < '.join(n for _, n in prev_above)}) and {label!r} ({' < '.join(n for _, n in above)})"
                )


def taxonomy_for(card) -> Taxonomy:
    """The taxonomy of a model card: its folder's ``taxonomy.toml`` plus species-facts lineages for the rest."""
    folder = getattr(card, "folder", None)
    path = Path(folder) / TAXONOMY_FILE if folder is not None else None
    mtime = path.stat().st_mtime_ns if path is not None and path.is_file() else None
    return _taxonomy_cached(str(path) if mtime is not None else "", mtime, tuple(card.classes),
                            tuple(sorted(getattr(card, "species", {}).items())))


@functools.lru_cache(maxsize=32)
def _taxonomy_cached(path: str, mtime: int | None, classes: tuple[str, ...],
                     species_map: tuple[tuple[str, str], ...]) -> Taxonomy:
    base = load_taxonomy_file(path) if path else Taxonomy()
    lineages = dict(base.lineages)
    aliases = dict(species_map)
    for label in classes:
        if label not in lineages and label not in base.not_taxa:
            info = _facts(aliases.get(label, label))
            if info is not None and info.taxonomy is not None:
                lineages[label] = info.taxonomy
    return Taxonomy(lineages, base.names, base.source or "species_info", base.not_taxa, base.open_world)


def clear_cache() -> None:
    _taxonomy_cached.cache_clear()


def _facts(name: str):
    """Species facts by name, or None; a broken species folder never stops a prediction."""
    from wildid.species import find_species

    try:
        return find_species(name)
    except WildidError:
        return None


# --- roll-up ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Answer:
    """What a prediction answers: a taxon at a rank with its probability, or nothing (uncertain).

    For a confident top class, ``rank`` / ``taxon`` are the class's own lineage (empty when the
    model has no taxonomy for it) and ``closest`` is empty; for a rolled-up answer ``closest``
    lists the classes of the taxon with the highest probabilities.
    """

    rank: str = ""
    taxon: str = ""
    confidence: float = 0.0
    closest: tuple[str, ...] = ()
    rolled_up: bool = False


class RollUp:
    """Per-rank membership matrices for one class list, so a batch rolls up with one matrix product."""

    def __init__(self, classes: Sequence[str], taxonomy: Taxonomy, outside: Iterable[Lineage] = ()):
        """``outside``: lineages of animals photos may show that are not among the classes; a
        group whose parent also holds one of them at the group's rank is no answer (open world)."""
        self.classes = tuple(classes)
        self.taxonomy = taxonomy
        self.own = [taxonomy.lineage(label) for label in self.classes]
        n = len(self.classes)
        known = {rank: {lineage.at(rank) for lineage in self.own if lineage is not None} - {None}
                 for rank in ROLLUP_RANKS}
        known_any = set().union(*known.values())
        # rank -> taxa of the model that hold, at that rank, a taxon no class belongs to
        self.unseen: dict[str, set[str]] = {}
        for lineage in outside:
            for rank in ROLLUP_RANKS[:-1]:
                child, parent = lineage.at(rank), _parent(lineage, rank)
                if child is not None and parent in known_any and child not in known[rank]:
                    self.unseen.setdefault(rank, set()).add(parent)
        # (rank, taxa, membership matrix taxa x classes, each taxon's share of the classes)
        self.levels: list[tuple[str, list[str], np.ndarray, np.ndarray]] = []
        for rank in ROLLUP_RANKS:
            members: dict[str, list[int]] = {}
            for index, lineage in enumerate(self.own):
                name = lineage.at(rank) if lineage is not None else None
                if name is not None:
                    members.setdefault(name, []).append(index)
            # A taxon holding every class is no answer (its sum is always 1); neither is one with an
            # unseen sibling (open world).
            hidden = self.unseen.get(rank, set())
            taxa = [name for name, idx in members.items()
                    if len(idx) < n and _parent(self.own[idx[0]], rank) not in hidden]
            if not taxa:
                continue
            matrix = np.zeros((len(taxa), n), dtype=np.float64)
            for row, name in enumerate(taxa):
                matrix[row, members[name]] = 1.0
            self.levels.append((rank, taxa, matrix, matrix.sum(axis=1) / n))

    @classmethod
    def for_card(cls, card) -> "RollUp":
        taxonomy = taxonomy_for(card)
        return cls(card.classes, taxonomy, hiker_lineages() if taxonomy.open_world else ())

    def answers(self, probs: np.ndarray, threshold: float) -> list[Answer]:
        probs = np.asarray(probs, dtype=np.float64)
        sums = [probs @ matrix.T for _, _, matrix, _ in self.levels]
        out = []
        for i, row in enumerate(probs):
            top = int(np.argmax(row))
            if row[top] >= threshold:
                lineage = self.own[top]
                out.append(Answer(lineage.rank if lineage else "", lineage.name if lineage else "", float(row[top])))
                continue
            out.append(self._rolled(row, threshold, [level_sums[i] for level_sums in sums]))
        return out

    def _rolled(self, row: np.ndarray, threshold: float, sums_per_level: list[np.ndarray]) -> Answer:
        for (rank, taxa, matrix, share), taxon_sums in zip(self.levels, sums_per_level):
            score = (taxon_sums - share) / (1.0 - share)  # chance-corrected, see the module docstring
            best = int(np.argmax(score))  # first of equal scores: deterministic
            if score[best] >= threshold:
                members = np.flatnonzero(matrix[best])
                order = members[np.argsort(-row[members], kind="stable")]
                closest = tuple(self.classes[j] for j in order[:CLOSEST])
                return Answer(rank, taxa[best], float(taxon_sums[best]), closest, rolled_up=True)
        return Answer()

    def required_sum(self, taxon: str, threshold: float) -> float | None:
        """The summed probability ``taxon`` needs to be an answer: threshold corrected for its share of the classes."""
        for _, taxa, _, share in self.levels:
            if taxon in taxa:
                s = float(share[taxa.index(taxon)])
                return s + (1.0 - s) * threshold
        return None


def _parent(lineage: Lineage | None, rank: str) -> str | None:
    """The taxon above ``rank`` in ``lineage`` (the next roll-up rank it names), or None."""
    if lineage is None:
        return None
    above = ROLLUP_RANKS[ROLLUP_RANKS.index(rank) + 1:]
    return next((lineage.at(r) for r in above if lineage.at(r) is not None), None)


def hiker_lineages(regions: Sequence[str] = HIKER_REGIONS) -> tuple[Lineage, ...]:
    """Lineages of the species-facts entries a hiker of ``regions`` may meet (species rank)."""
    from wildid.species import load_species

    try:
        entries = load_species().values()
    except WildidError:
        return ()
    return tuple(info.taxonomy for info in entries
                 if info.taxonomy is not None and info.taxonomy.rank == "species" and set(info.regions) & set(regions))


# --- members and facts at every rank ------------------------------------------------------------------
def members(taxon: str, regions: Sequence[str] = HIKER_REGIONS, rank: str = "species") -> list:
    """Species facts entries inside ``taxon`` that live in any of ``regions``, by common name.

    These are what a hiker of North America or Europe is likely to meet when the model
    answers with a group; entries without regions (African lion) are left out.
    """
    from wildid.species import load_species

    try:
        entries = load_species().values()
    except WildidError:
        return []
    found = [
        info for info in entries
        if info.taxonomy is not None and info.taxonomy.rank == rank and info.taxonomy.contains(taxon)
        and info.scientific_name != taxon and set(info.regions) & set(regions)
    ]
    return sorted(found, key=lambda info: info.common_name.lower())


def group_facts(taxon: str):
    """The species-facts entry for a taxon of any rank (``Cervidae``, ``Artiodactyla``), or None."""
    return _facts(taxon)


def facts_for(label: str, card):
    """The facts for a model class: by the card's species map or the label's names, else by the taxon the class stands for.

    ImageNet's "badger" has no facts entry of its own, but it stands for the family
    Mustelidae, whose entry (and members) the person can use to finish by eye.
    """
    info = _facts(getattr(card, "species", {}).get(label, label))
    if info is not None:
        return info
    lineage = taxonomy_for(card).lineage(label)
    return _facts(lineage.name) if lineage is not None else None


def members_by_family(taxon: str, regions: Sequence[str] = HIKER_REGIONS) -> list[tuple[str, list]]:
    """:func:`members` grouped by family (in family order), for answers at order or class rank."""
    groups: dict[str, list] = {}
    for info in members(taxon, regions):
        groups.setdefault(info.taxonomy.at("family") or "", []).append(info)
    return sorted(groups.items())


def describe_rank(rank: str) -> str:
    return RANK_WORDS.get(rank, rank)


def taxon_title(taxon: str, taxonomy: Taxonomy | None = None) -> str:
    """``even-toed hoofed mammals (Artiodactyla)``, or the bare scientific name without a common name."""
    common = (taxonomy or Taxonomy()).common_name(taxon)
    return f"{common} ({taxon})" if common and common.lower() != taxon.lower() else taxon


def describe_answer(rank: str, taxon: str, confidence: float, closest: Sequence[str] = (),
                    taxonomy: Taxonomy | None = None) -> str:
    """``even-toed hoofed mammals (Artiodactyla), order, 81%: closest classes ibex, gazelle, impala``."""
    text = f"{taxon_title(taxon, taxonomy)}, {describe_rank(rank)}, {confidence:.0%}"
    return text + (f": closest classes {', '.join(closest)}" if closest else "")


def resolve_label(label: str, taxonomy: Taxonomy | None = None) -> Lineage | None:
    """The lineage of a (true) label: a model class, a species-facts name or alias, or a taxon name.

    Used by evaluation to decide whether an answer at a rank is right: a folder called
    "elk" or "Cervus canadensis" resolves through the species facts, one called
    "Cervidae" through any lineage that contains it.
    """
    if taxonomy is not None:
        lineage = taxonomy.lineage(label)
        if lineage is not None:
            return lineage
    info = _facts(label)
    if info is not None and info.taxonomy is not None:
        return info.taxonomy
    if taxonomy is not None:
        for lineage in taxonomy.lineages.values():
            for i, (_, name) in enumerate(lineage.taxa):
                if name == label:
                    return Lineage(lineage.taxa[i:])
    return None
