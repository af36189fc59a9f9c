"""Re-identification: `wildid gallery`, `identify`, `train-reid`, `evaluate-reid`."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from wildid.commands.common import finish, report_per_image, started
from wildid.errors import WildidError


# --- re-identification (gallery, identify, train-reid, evaluate-reid) --------------------------------
def _reid_model_card(model: str | None, gallery_name: str | None = None):
    """The embedding model: --model, else the gallery's, else the only one installed."""
    from wildid import reid
    from wildid.registry import find_card

    if model:
        return find_card(model)
    if gallery_name:
        try:
            return find_card(reid.Gallery.open(gallery_name).model)
        except WildidError:
            pass
    cards = reid.embedding_cards()
    if len(cards) == 1:
        return cards[0]
    names = ", ".join(c.name for c in cards) or "none installed (train one with `wildid train-reid`)"
    raise WildidError(f"give the embedding model with --model (embedding models: {names})")


def cmd_gallery(args: argparse.Namespace) -> int:
    from wildid import reid

    if args.gallery_command == "list":
        rows = [reid.Gallery.open(name).summary() for name in reid.list_galleries()]
        if args.json:
            print(json.dumps({"root": str(reid.galleries_root()), "galleries": rows}, indent=2))
            return 0
        if not rows:
            print(f"no galleries in {reid.galleries_root()}; create one with `wildid gallery add FOLDER --gallery NAME`")
            return 0
        for row in rows:
            threshold = "card" if row["threshold"] is None else f"{row['threshold']:.3f}"
            print(f"{row['name']}: {row['individuals']} individuals, {row['images']} images, "
                  f"model {row['model']}, threshold {threshold}")
        return 0
    from tqdm import tqdm

    card = _reid_model_card(args.model, args.gallery)
    embedder = reid.load_embedder(card.folder or card.name, backend=args.backend)
    folders = reid.individual_folders(args.folder)
    gallery = reid.Gallery.open_or_create(args.gallery, embedder.card)
    gallery.check_model(embedder.card)
    total = sum(len(v) for v in folders.values())
    started(args)
    with tqdm(total=total, unit="img", desc=f"gallery {gallery.name}", disable=args.quiet, dynamic_ncols=True) as bar:
        report = reid.add_folder(gallery, args.folder, embedder, progress=bar.update)
    for failure in report.failed:
        print(f"warning: skipped {failure}", file=sys.stderr)
    summary = gallery.summary()
    threshold = gallery.threshold(embedder.card)
    print(f"added {len(report.added)} images ({len(report.skipped)} already there, {len(report.failed)} unreadable) "
          f"to gallery {gallery.name}: {summary['individuals']} individuals, {summary['images']} images; "
          f"threshold {threshold:.3f} ({gallery.meta.get('threshold_source')})")
    return finish(args, len(report.failed))


def cmd_identify(args: argparse.Namespace) -> int:
    from wildid import reid

    gallery = reid.Gallery.open(args.gallery)
    card = _reid_model_card(args.model or gallery.model)
    embedder = reid.load_embedder(card.folder or card.name, backend=args.backend)
    if not gallery.entries:
        raise WildidError(f"gallery {gallery.name!r} is empty; add individuals with `wildid gallery add`")
    def describe(row: dict) -> str:
        verdict = row["label"] if row["known"] else "unknown (new individual?)"
        others = ", ".join(f"{m['individual']} {m['similarity']:.3f}" for m in row["matches"])
        return f"{verdict}  similarity {row['similarity']:.3f} (threshold {row['threshold']:.3f})  | {others}"

    def run(image) -> dict:
        [result] = reid.identify(embedder, gallery, [image], top_k=args.top_k, threshold=args.threshold,
                                 aggregate=args.aggregate)
        return result.to_dict()

    return report_per_image(args, run, describe)


def cmd_train_reid(args: argparse.Namespace) -> int:
    from wildid import reid
    from wildid.cards import CARD_FILE, load_card
    from wildid.registry import default_output_root

    out = Path(args.out).expanduser()
    if len(out.parts) == 1 and not out.exists():
        out = default_output_root() / out
    if (out / CARD_FILE).is_file() and load_card(out).has_weights and not args.overwrite:
        raise WildidError(f"{out} already holds a trained model; pick another --out or pass --overwrite")

    def progress(row: dict) -> None:
        started(args)
        if args.quiet:
            return
        loss = "-" if row["epoch"] == 0 else f"{row['loss']:.3f}"
        print(f"epoch {row['epoch']}/{args.epochs}: loss {loss}  val pair AUROC {row['val_pair_auroc']:.3f}  "
              f"val top-1 {row['val_top1']:.3f}  val open-set AUROC {row['val_open_set_auroc']:.3f}"
              + (f"  ({row['elapsed_s']:.0f} s)" if "elapsed_s" in row else "  (untrained)"), flush=True)

    result = reid.train_embedding(
        args.data, out, arch=args.arch, epochs=args.epochs, weights=args.weights, input_size=args.input_size,
        batch_individuals=args.individuals_per_batch, per_individual=args.images_per_individual, lr=args.lr,
        margin=args.margin, val_fraction=args.val_fraction, seed=args.seed, progress=progress,
    )
    m = result.card.metrics
    print(f"saved {result.card.name} ({result.card.arch}, embedding) to {result.card.folder}: val pair AUROC "
          f"{m['val_pair_auroc_untrained']:.3f} -> {m['val_pair_auroc']:.3f}, val top-1 {m['val_top1']:.3f}, "
          f"open-set AUROC {m['val_open_set_auroc']:.3f}, threshold {result.card.threshold:.3f}")
    return 0


def cmd_evaluate_reid(args: argparse.Namespace) -> int:
    from wildid import reid

    gallery = reid.Gallery.open(args.gallery) if args.gallery else None
    card = _reid_model_card(args.model or (gallery.model if gallery else None))
    embedder = reid.load_embedder(card.folder or card.name, backend=args.backend)
    result = reid.evaluate_reid(embedder, args.data, gallery=gallery, known_fraction=args.known_fraction,
                                gallery_fraction=args.gallery_fraction, threshold=args.threshold,
                                aggregate=args.aggregate, seed=args.seed)
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    print(f"model {result['model']}, gallery {result['gallery']}: {result['gallery_individuals']} known individuals "
          f"({result['gallery_images']} gallery images), {result['known_queries']} known + "
          f"{result['unknown_queries']} unknown queries")
    print(f"top-1 {result['top1']:.3f}  top-5 {result['top5']:.3f}  open-set rejection AUROC {result['open_set_auroc']:.3f}")
    if "threshold" in result:
        print(f"at threshold {result['threshold']:.3f}: {result['unknown_rejected']:.1%} of unknowns rejected, "
              f"{result['known_accepted']:.1%} of known accepted ({result['known_accepted_correct']:.1%} accepted and right)")
    return 0
