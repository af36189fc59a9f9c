"""Latency of one prediction on a 12-megapixel JPEG: decode + preprocess + forward.

    .venv/bin/python bench/latency.py                 # resnet18 and vit_base_patch16_224, 9 runs each
    .venv/bin/python bench/latency.py --repeats 3     # quicker

What the Identify page and `wildid predict` do for one photo.  Random weights built
locally (no download).  The baseline in the same run decodes the full 4000x3000 JPEG
(no JPEG draft mode) and then runs the same preprocess and forward, so the difference
is what draft decoding (libjpeg DCT scaling to >= the model's resize size) saves.
Each figure is the median of the timed runs after one warm-up; the two pipelines take
turns run by run, so both see the same load on a shared machine.  Stages are timed
separately (forward once: both pipelines feed it the same 224 px tensor) and the
end-to-end column is timed as one call.
"""

from __future__ import annotations

import argparse
import io
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from wildid.backbones import build_model, default_data_config  # noqa: E402
from wildid.cards import ModelCard  # noqa: E402
from wildid.imaging import load_image  # noqa: E402
from wildid.predictor import TorchPredictor  # noqa: E402

ARCHS = ["resnet18", "vit_base_patch16_224"]
WIDTH, HEIGHT = 4000, 3000


def photo_like_jpeg(seed: int = 0) -> bytes:
    """A 12 MP JPEG with smooth structure plus sensor-like noise (compresses like a photo)."""
    rng = np.random.default_rng(seed)
    coarse = Image.fromarray(rng.integers(0, 256, (30, 40, 3), dtype=np.uint8)).resize((WIDTH, HEIGHT), Image.BICUBIC)
    array = np.asarray(coarse, dtype=np.int16) + rng.integers(-12, 13, (HEIGHT, WIDTH, 3), dtype=np.int16)
    buffer = io.BytesIO()
    Image.fromarray(np.clip(array, 0, 255).astype(np.uint8)).save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


def interleaved_ms(fns: dict, repeats: int, cpu: dict | None = None) -> dict[str, float]:
    """Median wall ms per function, the functions taking turns so both see the same load.

    ``cpu``, if given, receives the median process CPU ms (all threads), which a busy
    shared machine inflates far less than wall time.
    """
    for fn in fns.values():
        fn()  # warm-up
    times: dict[str, list[float]] = {name: [] for name in fns}
    cpu_times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            start, start_cpu = time.perf_counter(), time.process_time()
            fn()
            times[name].append(time.perf_counter() - start)
            cpu_times[name].append(time.process_time() - start_cpu)
    if cpu is not None:
        cpu.update({name: 1000 * statistics.median(values) for name, values in cpu_times.items()})
    return {name: 1000 * statistics.median(values) for name, values in times.items()}


def card_for(arch: str) -> ModelCard:
    cfg = default_data_config(arch)
    return ModelCard(
        name=arch, arch=arch, classes=tuple(f"class {i}" for i in range(1000)),
        input_size=tuple(cfg["input_size"]), mean=tuple(cfg["mean"]), std=tuple(cfg["std"]),
        interpolation=cfg["interpolation"], crop_pct=float(cfg["crop_pct"]),
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--archs", nargs="+", default=ARCHS)
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    data = photo_like_jpeg()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; one {WIDTH}x{HEIGHT} JPEG "
          f"({len(data) / 1e6:.1f} MB); median of {args.repeats} runs, ms")
    header = f"{'arch':22} {'pipeline':18} {'decode':>8} {'preproc':>8} {'forward':>8} {'end-to-end':>11} {'e2e CPU':>8} {'decoded size':>13}"
    print(header)
    print("-" * len(header))
    for arch in args.archs:
        torch.manual_seed(0)
        card = card_for(arch)
        predictor = TorchPredictor(card, build_model(arch, card.num_classes), device="cpu")
        pipelines = {"full decode (base)": None, "draft decode": predictor.draft_size}
        images = {name: load_image(data, draft_size=draft) for name, draft in pipelines.items()}
        decode = interleaved_ms({n: (lambda d=d: load_image(data, draft_size=d)) for n, d in pipelines.items()}, args.repeats)
        preprocess = interleaved_ms({n: (lambda i=i: predictor.preprocess(i)) for n, i in images.items()}, args.repeats)
        batch = predictor.preprocess(images["draft decode"]).unsqueeze(0)
        forward = interleaved_ms({"forward": lambda: predictor.predict_proba(batch)}, args.repeats)["forward"]
        total_cpu: dict[str, float] = {}
        total = interleaved_ms(
            {n: (lambda d=d: predictor.predict([load_image(data, draft_size=d)], top_k=5)) for n, d in pipelines.items()},
            args.repeats, cpu=total_cpu,
        )
        for name in pipelines:
            size = f"{images[name].width}x{images[name].height}"
            print(f"{arch:22} {name:18} {decode[name]:8.1f} {preprocess[name]:8.1f} {forward:8.1f} {total[name]:11.1f} {total_cpu[name]:8.0f} {size:>13}")
        base, draft_total = total["full decode (base)"], total["draft decode"]
        print(f"{'':22} draft saves {base - draft_total:.0f} ms wall ({base / draft_total:.2f}x) and "
              f"{total_cpu['full decode (base)'] - total_cpu['draft decode']:.0f} ms CPU per photo")

if __name__ == "__main__":
    main()
