"""`wildid evaluate` and `wildid train`."""

from __future__ import annotations

import argparse
import shlex
import sys

from wildid.commands.common import finish, started
from wildid.commands.images import cropped_data


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
