"""`wildid models`, `import`, `export-onnx`, `calibrate-scope`."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from wildid.commands.common import parse_classes
from wildid.errors import WildidError


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
