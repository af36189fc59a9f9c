"""`wildid predict` and `wildid batch`."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from wildid.commands.common import finish, predictor_from_args, report_per_image, started
from wildid.errors import WildidError


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
