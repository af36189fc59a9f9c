"""Benchmark: linear-mode training (wall time, peak memory) on generated 1024x768 camera-trap-sized images.

    .venv/bin/python bench/train.py            # 1000 images, efficientnet_lite0 (package weights) + resnet18 (random)
    .venv/bin/python bench/train.py --n 300
    .venv/bin/python bench/train.py --quick    # 120 images, 3 folds: a smoke run while developing

Each run is a separate process, so its peak resident memory (ru_maxrss) is its own. Baselines in
the same run: decoding + eval-transforming every image without a model (the floor any training
pays once), and the linear run again with a warm feature cache (what a re-run with other
epochs / folds costs).  "to feats s" is the time from start until all features exist (imports,
backbone and weights included); the rest of "wall s" is the K+1 head fits.  The issue's goal: a
linear-mode run under 2 minutes on this CPU.

Measured 2026-11-22 on 2 CPU cores (quiet machine), --n 1000, 5-fold grouped CV:
  decode + transform only 5.6 s; efficientnet_lite0 (package) cold 49.8 s, peak 1403 MB;
  warm cache 6.0 s; resnet18 (random weights) cold 40.8 s, peak 1128 MB.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

GOAL_SECONDS = 120.0


def make_dataset(folder: Path, n: int, frames_per_sequence: int = 5) -> Path:
    """n JPEGs of 1024x768 in 3 learnable classes, grouped into simulated sequences; a CSV with groups."""
    import numpy as np
    from PIL import Image

    from tests.imagegen import CLASS_STYLES, class_image

    rows = []
    styles = list(CLASS_STYLES.items())
    for i in range(n):
        label, style = styles[i % len(styles)]
        sequence = i // (frames_per_sequence * len(styles))
        small = np.asarray(class_image(style, seed=i, size=(256, 192)), dtype=np.float32)
        img = Image.fromarray(small.astype(np.uint8)).resize((1024, 768), Image.BILINEAR)
        path = folder / label / f"{i:05d}.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        img.save(path, quality=88)
        rows.append({"path": str(path.relative_to(folder)), "label": label, "sequence": f"{style}-{sequence}"})
    out = folder / "labels.csv"
    with out.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["path", "label", "sequence"])
        writer.writeheader()
        writer.writerows(rows)
    return out


def peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


# --- child processes -------------------------------------------------------------------------------
def child_decode(data: str) -> dict:
    """Baseline: load (draft-decode) + eval-transform every image, no model."""
    from wildid.backbones import default_data_config
    from wildid.cards import ModelCard
    from wildid.predictor import build_transform, draft_size_for
    from wildid.train import _load_sample, load_labelled

    samples = load_labelled(data, groups="sequence").samples
    cfg = default_data_config("efficientnet_lite0")
    card = ModelCard(name="x", arch="efficientnet_lite0", classes=("a", "b"), input_size=cfg["input_size"],
                     interpolation=cfg["interpolation"], crop_pct=cfg["crop_pct"])
    transform, draft = build_transform(card), draft_size_for(card)
    start = time.perf_counter()
    for sample in samples:
        transform(_load_sample(sample, "rgb", draft))
    return {"seconds": time.perf_counter() - start, "peak_mb": peak_mb()}


def child_train(data: str, arch: str, weights: str, folds: int) -> dict:
    from wildid.train import TrainConfig, load_labelled, train

    marks = {}

    def progress(p) -> None:
        if p.stage == "features":
            marks.setdefault("features_start", time.perf_counter())
            if p.done >= p.total:
                marks["features_end"] = time.perf_counter()

    start = time.perf_counter()
    data_set = load_labelled(data, groups="sequence")
    result = train(data_set, TrainConfig(arch=arch, mode="linear", weights=weights, folds=folds), progress=progress)
    total = time.perf_counter() - start
    features = marks.get("features_end", start) - start
    return {
        "seconds": total,
        "features_seconds": features,
        "images": len(result.data.samples),
        "accuracy": result.metrics.get("accuracy"),
        "peak_mb": peak_mb(),
    }


def run_child(*args: str, env: dict | None = None) -> dict:
    out = subprocess.run([sys.executable, __file__, "--child", *args], capture_output=True, text=True,
                         env=env, cwd=ROOT)
    if out.returncode != 0:
        raise SystemExit(f"child {args} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=1000, help="number of generated 1024x768 images")
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help="120 images, 3 folds")
    parser.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.child:
        kind, *rest = args.child
        result = child_decode(*rest) if kind == "decode" else child_train(rest[0], rest[1], rest[2], int(rest[3]))
        print(json.dumps(result))
        return

    n, folds = (120, 3) if args.quick else (args.n, args.folds)
    import torch

    print(f"wildid train benchmark: {n} generated 1024x768 JPEGs, 3 classes, groups = sequences of 5, "
          f"linear mode, {folds}-fold grouped CV; torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"{os.cpu_count()} CPUs (load average {os.getloadavg()[0]:.1f})")
    with tempfile.TemporaryDirectory(prefix="wildid-bench-train-") as tmp:
        tmp = Path(tmp)
        start = time.perf_counter()
        data = make_dataset(tmp / "data", n)
        print(f"generated the data in {time.perf_counter() - start:.1f} s")
        env = dict(os.environ, WILDID_CACHE=str(tmp / "cache"))

        rows = []
        decode = run_child("decode", str(data), env=env)
        rows.append(("baseline: decode + transform only", decode["seconds"], None, decode["peak_mb"], None))
        for arch, weights in (("efficientnet_lite0", "package"), ("resnet18", "none")):
            cold = run_child("train", str(data), arch, weights, str(folds), env=env)
            rows.append((f"{arch} ({weights} weights), cold", cold["seconds"], cold["features_seconds"], cold["peak_mb"], cold["accuracy"]))
            if weights != "none":  # random weights are not cached on disk
                warm = run_child("train", str(data), arch, weights, str(folds), env=env)
                rows.append((f"{arch} ({weights} weights), warm cache", warm["seconds"], warm["features_seconds"], warm["peak_mb"], warm["accuracy"]))

    print()
    print(f"{'run':<50} {'wall s':>8} {'to feats s':>11} {'img/s':>7} {'peak MB':>8} {'CV acc':>7}  goal <{GOAL_SECONDS:.0f}s")
    for name, seconds, features, peak, acc in rows:
        rate = n / seconds if seconds else 0.0
        goal = "" if acc is None else ("ok" if seconds < GOAL_SECONDS else "MISSED")
        print(f"{name:<50} {seconds:>8.1f} {features if features is not None else float('nan'):>11.1f} "
              f"{rate:>7.1f} {peak:>8.0f} {acc if acc is not None else float('nan'):>7.3f}  {goal}")


if __name__ == "__main__":
    main()
