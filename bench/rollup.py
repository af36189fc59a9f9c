"""Taxonomic roll-up of the general model on real photos: chance-corrected rule vs the plain sum.

    .venv/bin/python bench/rollup.py                 # all sets below
    .venv/bin/python bench/rollup.py --footprints 0  # without the 500 footprint photos
    .venv/bin/python bench/rollup.py --footprints 0 --sweep 0.3,0.4,0.5,0.6,0.7,0.8
                                                     # the general model's threshold, chosen from this table

Sets (all real photos available offline):
- cat crops: 86 square crops (100-200 px) of scikit-image's cat photo; the model knows domestic cats.
- cat crops, no cat classes: the same crops with the five domestic-cat classes taken out of the
  model's output and the rest renormalised: an animal the model has no class for (like an elk or
  a deer for ImageNet). A species answer is then always wrong; Felidae, Carnivora or Mammalia right.
- photos without animals: scikit-image's coffee, astronaut, rocket, camera man, bricks, grass,
  gravel, coins, moon, page, text, Hubble deep field. Any taxon answer is wrong.
- footprints: the 500 track photos of shared/data/tracks-families (not pictures of an animal at
  all for this model). Counted: confident species answers and group answers.

For each set and rule: confident species answers (right / wrong), rolled-up answers (right at
their rank / wrong), uncertain. "Plain" answers with the lowest taxon whose summed probability
reaches the threshold; "corrected" (wildid.taxonomy.RollUp) scores a taxon holding a share s of
the classes as (p - s) / (1 - s).
"""

from __future__ import annotations

import argparse
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from wildid.registry import load_predictor  # noqa: E402
from wildid.taxonomy import ROLLUP_RANKS, RollUp, hiker_lineages  # noqa: E402

FOOTPRINTS = Path("/work/shared/data/tracks-families")


def plain_answers(rollup: RollUp, probs: np.ndarray, threshold: float) -> list[tuple[str, str, bool]]:
    """(rank, taxon, rolled_up) by the plain-sum rule (the same levels, no chance correction)."""
    out = []
    for row in probs:
        top = int(np.argmax(row))
        if row[top] >= threshold:
            lineage = rollup.own[top]
            out.append((lineage.rank, lineage.name, False) if lineage else ("", "", False))
            continue
        answer = ("", "", False)
        for rank, taxa, matrix, _ in rollup.levels:
            sums = matrix @ row
            best = int(np.argmax(sums))
            if sums[best] >= threshold:
                answer = (rank, taxa[best], True)
                break
        out.append(answer)
    return out


def corrected_answers(rollup: RollUp, probs: np.ndarray, threshold: float) -> list[tuple[str, str, bool]]:
    return [(a.rank, a.taxon, a.rolled_up) for a in rollup.answers(probs, threshold)]


def tally(answers, right_taxa: set[str] | None) -> Counter:
    """right_taxa: taxa that are right answers (None: nothing is right, the photo shows no animal)."""
    counts: Counter = Counter()
    for rank, taxon, rolled in answers:
        if not taxon:
            counts["uncertain"] += 1
            continue
        right = right_taxa is not None and taxon in right_taxa
        counts[f"{'group' if rolled else 'species'} {'right' if right else 'wrong'}"] += 1
        if rolled:
            counts[f"rank {rank}"] += 1
    return counts


def cat_crops():
    import skimage.data
    from PIL import Image

    cat = Image.fromarray(skimage.data.chelsea())
    crops = []
    for side in (100, 150, 200):
        for x in range(0, cat.width - side + 1, 50):
            for y in range(0, cat.height - side + 1, 50):
                crops.append(cat.crop((x, y, x + side, y + side)))
    return crops


def no_animal_photos():
    import skimage.data
    from PIL import Image

    names = ["coffee", "astronaut", "rocket", "camera", "brick", "grass", "gravel", "coins", "moon", "page", "text",
             "hubble_deep_field"]
    return [Image.fromarray(getattr(skimage.data, name)()).convert("RGB") for name in names]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="general-animals")
    parser.add_argument("--footprints", type=int, default=500, help="how many footprint photos (0 = none)")
    parser.add_argument("--sweep", default="", help="comma-separated thresholds: answers on the cat sets at each")
    args = parser.parse_args()

    predictor = load_predictor(args.model)
    card, rollup = predictor.card, predictor.rollup
    threshold = card.threshold
    print(f"model {card.name} (threshold {threshold}), {len(card.classes)} classes; rules: plain sum vs chance-corrected")

    def probs_of(images) -> np.ndarray:
        import torch

        rows = []
        for start in range(0, len(images), 16):
            batch = torch.stack([predictor.preprocess(img) for img in images[start:start + 16]])
            rows.append(predictor.predict_proba(batch))
        return np.concatenate(rows)

    started = time.perf_counter()
    sets = []
    crops = cat_crops()
    cat_probs = probs_of(crops)
    cat_right = {"Felis catus", "Felis", "Felidae", "Carnivora", "Mammalia"}
    sets.append(("cat crops", rollup, cat_probs, cat_right))

    cats = [i for i, c in enumerate(card.classes) if rollup.own[i] is not None and rollup.own[i].name == "Felis catus"]
    keep = [i for i in range(len(card.classes)) if i not in cats]
    outside = hiker_lineages() if rollup.taxonomy.open_world else ()
    without = RollUp([card.classes[i] for i in keep], rollup.taxonomy, outside)
    reduced = cat_probs[:, keep] / cat_probs[:, keep].sum(axis=1, keepdims=True)
    sets.append(("cat crops, no cat classes", without, reduced, {"Felidae", "Carnivora", "Mammalia"}))

    sets.append(("photos without animals", rollup, probs_of(no_animal_photos()), None))

    if args.footprints and FOOTPRINTS.is_dir():
        from wildid.imaging import load_image

        paths = sorted(FOOTPRINTS.glob("*/*.jpg"))[: args.footprints]
        sets.append((f"footprints ({len(paths)})", rollup, probs_of([load_image(p) for p in paths]), None))
    print(f"(forward passes: {time.perf_counter() - started:.0f} s)\n")

    if args.sweep:
        sweep(sets[:2], [float(t) for t in args.sweep.split(",")])

    keys = ["species right", "species wrong", "group right", "group wrong", "uncertain"]
    print(f"{'set':28s} {'rule':9s} " + " ".join(f"{k:>13s}" for k in keys) + "  group ranks")
    for name, level_rollup, probs, right in sets:
        for rule, answers in (("plain", plain_answers(level_rollup, probs, threshold)),
                              ("corrected", corrected_answers(level_rollup, probs, threshold))):
            counts = tally(answers, right)
            ranks = ", ".join(f"{r} {counts[f'rank {r}']}" for r in ROLLUP_RANKS if counts[f"rank {r}"])
            print(f"{name:28s} {rule:9s} " + " ".join(f"{counts[k]:13d}" for k in keys) + f"  {ranks}")


def sweep(cat_sets, thresholds: list[float]) -> None:
    """Per threshold: answers right at the species rank on the cat crops (a class, or several
    classes of one species summed) against confident wrong species answers and right group
    answers on the crops with no cat class.  Raising the threshold turns species answers into
    group answers; it pays while it removes more wrong species answers than right ones."""
    (_, known_rollup, known, known_right), (_, unknown_rollup, unknown, unknown_right) = cat_sets
    print(f"{'threshold':>9s} {'cat: right at species rank':>27s} {'cat: wrong':>10s} "
          f"{'no cat class: species (all wrong)':>34s} {'group right':>11s} {'group wrong':>11s}")
    for threshold in thresholds:
        known_answers = corrected_answers(known_rollup, known, threshold)
        right = sum(1 for rank, taxon, _ in known_answers if rank == "species" and taxon in known_right)
        wrong = sum(1 for _, taxon, _ in known_answers if taxon and taxon not in known_right)
        counts = tally(corrected_answers(unknown_rollup, unknown, threshold), unknown_right)
        print(f"{threshold:9.2f} {right:27d} {wrong:10d} {counts['species wrong']:34d} "
              f"{counts['group right']:11d} {counts['group wrong']:11d}")
    print()


if __name__ == "__main__":
    main()
