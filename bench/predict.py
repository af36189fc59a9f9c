"""Forward throughput, torch eager vs ONNX Runtime, batch 1 and 16, side by side.

    .venv/bin/python bench/predict.py            # all four architectures
    .venv/bin/python bench/predict.py --quick    # fewer repeats

Random weights built locally (no download); inputs are pre-processed tensors, so this
measures the back ends, not decoding. Each cell is the median of repeated timed runs.
The same run also checks that both back ends agree (max |p_torch - p_onnx|).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from wildid.backbones import build_model, default_data_config  # noqa: E402
from wildid.cards import ModelCard  # noqa: E402
from wildid.predictor import OnnxPredictor, TorchPredictor, export_onnx  # noqa: E402

ARCHS = ["resnet18", "resnet50", "vit_base_patch16_224", "tf_efficientnet_lite0", "tf_efficientnet_lite2"]


def images_per_second(predictor, batch: torch.Tensor, repeats: int) -> float:
    predictor.predict_proba(batch)  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        predictor.predict_proba(batch)
        times.append(time.perf_counter() - start)
    return len(batch) / statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--archs", nargs="+", default=ARCHS)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    repeats_1, repeats_16 = (5, 2) if args.quick else (20, 5)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; images/s (median)")
    print(f"{'arch':24} {'torch b1':>9} {'onnx b1':>9} {'torch b16':>10} {'onnx b16':>9} {'onnx/torch b16':>15} {'max|dp|':>9}")
    with tempfile.TemporaryDirectory() as tmp:
        for arch in args.archs:
            torch.manual_seed(0)
            cfg = default_data_config(arch)
            card = ModelCard(name=arch, arch=arch, classes=tuple(f"c{i}" for i in range(10)),
                             input_size=tuple(cfg["input_size"]))
            model = build_model(arch, 10).eval()
            onnx_path = export_onnx(model, card, Path(tmp) / f"{arch}.onnx")
            eager, ort = TorchPredictor(card, model), OnnxPredictor(card, onnx_path)
            x1 = torch.randn(1, *card.input_size)
            x16 = torch.randn(16, *card.input_size)
            row = [
                images_per_second(eager, x1, repeats_1),
                images_per_second(ort, x1, repeats_1),
                images_per_second(eager, x16, repeats_16),
                images_per_second(ort, x16, repeats_16),
            ]
            diff = float(np.abs(eager.predict_proba(x16) - ort.predict_proba(x16)).max())
            print(f"{arch:24} {row[0]:9.1f} {row[1]:9.1f} {row[2]:10.1f} {row[3]:9.1f} {row[3] / row[2]:14.2f}x {diff:9.1e}",
                  flush=True)


if __name__ == "__main__":
    main()
