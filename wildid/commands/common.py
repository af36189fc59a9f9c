"""What every command shares: exit codes, the run stage, model options, per-image reports."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

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
