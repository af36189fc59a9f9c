"""`wildid` command line: the same core as the app.

    wildid predict IMAGE... [--model NAME|PATH] [--top-k K] [--json]
    wildid models [--json]
    wildid import CHECKPOINT --name NAME [--arch ARCH] [--classes FILE|a,b,c]
    wildid export-onnx --model NAME

Errors a user can cause print one line (``error: ...``) and exit with status 2.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Sequence

from wildid.errors import WildidError

EXIT_USER_ERROR = 2


def parse_classes(value: str | None) -> list[str] | None:
    """A classes.txt path (one per line) or a comma-separated list."""
    if not value:
        return None
    path = Path(value).expanduser()
    if path.is_file():
        return [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    return [part.strip() for part in value.split(",") if part.strip()]


def add_model_options(parser: argparse.ArgumentParser, default: str | None = "general-animals") -> None:
    parser.add_argument("--model", "-m", default=default, help="model name or folder, or a checkpoint file")
    parser.add_argument("--arch", help="architecture of a bare checkpoint (e.g. resnet18, torchvision:resnet50)")
    parser.add_argument("--classes", help="class list of a bare checkpoint: classes.txt or a,b,c")
    parser.add_argument("--backend", choices=("torch", "onnx"), default="torch")
    parser.add_argument(
        "--trust-checkpoint",
        action="store_true",
        help="allow whole pickled models (can run arbitrary code: only for files you trust)",
    )


def predictor_from_args(args: argparse.Namespace):
    from wildid.registry import load_predictor

    return load_predictor(
        args.model,
        backend=args.backend,
        trust=args.trust_checkpoint,
        arch=args.arch,
        classes=parse_classes(args.classes),
    )


# --- predict -------------------------------------------------------------------------------
def cmd_predict(args: argparse.Namespace) -> int:
    predictor = predictor_from_args(args)
    rows, failures = [], 0
    for image in args.images:
        try:
            [prediction] = predictor.predict([image], top_k=args.top_k)
            rows.append({"path": image, **prediction.to_dict()})
        except WildidError as exc:
            failures += 1
            rows.append({"path": image, "error": str(exc)})
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        for row in rows:
            if "error" in row:
                print(f"{row['path']}: error: {row['error']}")
                continue
            flag = "  (uncertain)" if row["uncertain"] else ""
            candidates = ", ".join(f"{c['label']} {c['score']:.3f}" for c in row["top_k"][1:])
            print(f"{row['path']}: {row['label']} {row['confidence']:.3f}{flag}" + (f"  | {candidates}" if candidates else ""))
    return 1 if failures else 0


# --- models --------------------------------------------------------------------------------
def cmd_models(args: argparse.Namespace) -> int:
    from wildid.registry import scan_models

    listing = scan_models()
    rows = [card.summary() for card in listing.cards]
    if args.json:
        print(json.dumps({"models": rows, "problems": listing.problems}, indent=2))
        return 0
    header = ("name", "task", "arch", "classes", "weights", "metrics")
    table = [header] + [tuple(str(row[h]) for h in header) for row in rows]
    widths = [max(len(r[i]) for r in table) for i in range(len(header))]
    for row in table:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip())
    for problem in listing.problems:
        print(f"warning: {problem}", file=sys.stderr)
    return 0


# --- import ----------------------------------------------------------------------------------
def cmd_import(args: argparse.Namespace) -> int:
    from wildid.registry import import_checkpoint

    card = import_checkpoint(
        args.checkpoint,
        name=args.name,
        arch=args.arch,
        classes=parse_classes(args.classes),
        root=Path(args.root) if args.root else None,
        trust=args.trust_checkpoint,
        task=args.task,
        title=args.title,
        channel_mode="nir" if args.nir else None,
    )
    print(f"imported {args.checkpoint} as {card.name} ({card.arch}, {card.num_classes} classes) in {card.folder}")
    return 0


# --- export-onnx -----------------------------------------------------------------------------
def cmd_export_onnx(args: argparse.Namespace) -> int:
    from wildid.registry import ensure_onnx, find_card

    card = find_card(args.model)
    path = ensure_onnx(card, trust=args.trust_checkpoint, force=True)
    if args.out:
        import shutil

        shutil.copyfile(path, args.out)
        path = Path(args.out)
    print(f"wrote {path}")
    return 0


# --- review ----------------------------------------------------------------------------------
def cmd_review(args: argparse.Namespace) -> int:
    from wildid import review

    results = Path(args.results)
    if args.review_command == "merge":
        out, final = review.write_final(results, args.out)
        sources = final["label_source"].value_counts()
        print(f"wrote {out}: {len(final)} labelled images "
              f"({int(sources.get('manual', 0))} manual, {int(sources.get('auto', 0))} auto)")
    elif args.review_command == "export":
        summary = review.export_training_set(results, args.out, layout=args.layout, include_auto=args.include_auto)
        classes = ", ".join(f"{label} {n}" for label, n in sorted(summary.per_class.items()))
        print(f"wrote {summary.out}: {summary.n_images} images ({classes}); labels in {summary.labels_csv}")
        for path in summary.missing:
            print(f"warning: image not found: {path}", file=sys.stderr)
    else:
        metrics = review.review_metrics(review.read_results(results), review.replay_journal(results))
        if not metrics.n_reviewed:
            print(f"reviewed 0 images (journal: {review.journal_path(results)})")
            return 0
        print(f"reviewed {metrics.n_reviewed}: accuracy {metrics.accuracy:.1%} ({metrics.n_correct} correct)")
        if metrics.estimated_accuracy is not None:
            print(f"estimated accuracy over all results (per-bin, weighted): {metrics.estimated_accuracy:.1%}")
        for row in metrics.per_bin.itertuples():
            accuracy = "-" if row.n == 0 else f"{row.accuracy:.1%}"
            print(f"  confidence {row.bin}: {row.n:4d} reviewed, accuracy {accuracy:>6}, {row.share:.0%} of results")
    return 0


# --- train -----------------------------------------------------------------------------------
def cmd_train(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from wildid.train import TrainConfig, command_line, load_labelled, train

    config = TrainConfig(
        arch=args.arch, mode=args.mode, weights=args.weights, epochs=args.epochs, folds=args.folds, nir=args.nir,
        batch_size=args.batch_size, lr=args.lr, unfreeze=args.unfreeze, step=args.step, seed=args.seed,
        task=args.task, title=args.title or "", workers=args.workers, cache=not args.no_cache,
    )
    data = load_labelled(args.data, groups=args.groups)
    command = command_line(args.data, args.out, config, groups=args.groups, overwrite=args.overwrite)
    bar = None

    def progress(p) -> None:
        nonlocal bar
        if p.stage == "features":
            if bar is None:
                bar = tqdm(total=p.total, initial=p.done, unit="img", desc="features" if args.mode == "linear"
                           else "reading", dynamic_ncols=True, disable=args.quiet)
            bar.update(p.done - bar.n)
            return
        if bar is not None:
            bar.close()
            bar = None
        if args.quiet:
            return
        if p.stage == "epoch" and (p.epoch == p.epochs or args.mode != "linear" or p.epoch % 10 == 0):
            where = f"fold {p.fold}/{p.folds}" if p.fold else "final"
            val = f"  val loss {p.val_loss:.3f} acc {p.val_acc:.3f}" if p.val_acc is not None else ""
            extra = f"  ({p.message})" if p.message else ""
            print(f"{where} epoch {p.epoch}/{p.epochs}: loss {p.loss:.3f} acc {p.acc:.3f}{val}{extra}")
        elif p.stage == "fold":
            print(f"fold {p.fold}/{p.folds}: held-out accuracy {p.val_acc:.3f}")

    result = train(data, config, out=args.out, command=command, progress=progress, overwrite=args.overwrite)
    for warning in result.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    metrics = result.metrics
    summary = result.data.summary()
    print(f"{summary['images']} images, {summary['classes']} classes, {summary['skipped']} skipped"
          + (f", {summary['groups']} groups ({args.groups})" if args.groups else ""))
    if "fold_accuracy" in metrics:
        print(f"mean accuracy {metrics['accuracy']:.3f} +- {metrics['accuracy_std']:.3f} over folds "
              f"{', '.join(f'{a:.3f}' for a in metrics['fold_accuracy'])}; macro F1 {metrics['macro_f1']:.3f}")
        width = max(len(c) for c in result.card.classes)
        for label, row in metrics["per_class"].items():
            print(f"  {label.ljust(width)}  P {row['precision']:.3f}  R {row['recall']:.3f}  F1 {row['f1']:.3f}  n {row['support']}")
    print(f"saved {result.card.name} ({result.card.arch}, {config.mode}) to {result.card.folder} "
          f"in {result.seconds:.1f} s")
    return 0


# --- parser ------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="wildid", description="Identify animals from images.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("predict", help="classify one or more images")
    p.add_argument("images", nargs="+", help="image files")
    add_model_options(p)
    p.add_argument("--top-k", type=int, default=5)
    p.add_argument("--json", action="store_true", help="print JSON instead of text")
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser("models", help="list installed models")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_models)

    p = sub.add_parser("import", help="add a checkpoint as a model folder with a card")
    p.add_argument("checkpoint")
    p.add_argument("--name", required=True, help="model name (folder under models/)")
    p.add_argument("--arch", help="architecture, e.g. resnet18, efficientnet_lite0, torchvision:resnet50")
    p.add_argument("--classes", help="classes.txt or a,b,c (optional when importing into a model slot)")
    p.add_argument("--task", default=None)
    p.add_argument("--title", default=None)
    p.add_argument("--nir", action="store_true", help="model expects near-infrared (grey) input")
    p.add_argument("--root", help="models folder to write into (default: the first model root)")
    p.add_argument("--trust-checkpoint", action="store_true")
    p.set_defaults(func=cmd_import)

    p = sub.add_parser("export-onnx", help="export a model to ONNX (used by --backend onnx)")
    p.add_argument("--model", "-m", required=True)
    p.add_argument("--out", help="also copy the .onnx file here")
    p.add_argument("--trust-checkpoint", action="store_true")
    p.set_defaults(func=cmd_export_onnx)

    p = sub.add_parser("review", help="reviewed labels: merge into a final data set, export a training set")
    review_sub = p.add_subparsers(dest="review_command", required=True)
    r = review_sub.add_parser("merge", help="accepted auto labels + reviewed manual labels -> one CSV")
    r.add_argument("results", help="results CSV from `wildid batch` (its journal is <stem>.reviewed.csv)")
    r.add_argument("--out", help="output CSV (default <stem>.final.csv next to the results)")
    r = review_sub.add_parser("export", help="reviewed images as a training set for `wildid train`")
    r.add_argument("results")
    r.add_argument("--out", required=True, help="new folder (imagefolder: copies) or a .csv (csv layout)")
    r.add_argument("--layout", choices=("imagefolder", "csv"), default="imagefolder")
    r.add_argument("--include-auto", action="store_true", help="also the automatically accepted labels")
    r = review_sub.add_parser("stats", help="accuracy of the model on what has been reviewed")
    r.add_argument("results")
    p.set_defaults(func=cmd_review)

    p = sub.add_parser("train", help="transfer learning from labelled images (ImageFolder or CSV)")
    p.add_argument("data", help="folder with one sub-folder per class, or a CSV with path,label[,GROUP][,crop]")
    p.add_argument("--out", required=True, help="model folder (models/NAME) or a bare NAME under the models root")
    p.add_argument("--arch", default="efficientnet_lite0",
                   help="efficientnet_lite0 | resnet18 | resnet50 | vit_base_patch16_224 | any timm name")
    p.add_argument("--mode", choices=("linear", "finetune", "progressive"), default="linear")
    p.add_argument("--weights", default=None,
                   help="package | hub | none | PATH (default: package for efficientnet_lite0)")
    p.add_argument("--epochs", type=int, default=None, help="default 60 for linear, 8 otherwise")
    p.add_argument("--folds", type=int, default=5, help="cross-validation folds (0: no validation)")
    p.add_argument("--groups", default=None,
                   help="CSV column with sequence / camera / site ids kept on one side of each split "
                        "(ImageFolder: 'folder' = class/GROUP/img)")
    p.add_argument("--nir", action="store_true", help="near-infrared: grey input, no colour jitter")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=None)
    p.add_argument("--unfreeze", type=int, default=2, help="finetune: backbone blocks trained with the head")
    p.add_argument("--step", type=int, default=2, help="progressive: epochs between unfreezing blocks")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--task", default="custom")
    p.add_argument("--title", default=None)
    p.add_argument("--workers", type=int, default=2, help="image-decoding threads")
    p.add_argument("--no-cache", action="store_true", help="do not reuse cached backbone features")
    p.add_argument("--overwrite", action="store_true", help="replace a trained model in --out")
    p.add_argument("--quiet", "-q", action="store_true")
    p.set_defaults(func=cmd_train)

    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except WildidError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
