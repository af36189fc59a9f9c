"""Batch throughput on 12 MP camera-trap JPEGs: wildid batch vs a naive loop vs the bare forward.

    .venv/bin/python bench/batch.py                 # 500 generated 4000x3000 JPEGs, resnet18 + resnet50
    .venv/bin/python bench/batch.py --quick         # small run (the machine's cores are shared)
    .venv/bin/python bench/batch.py --n 200 --mem-sizes 1000 10000

For each architecture (random weights built locally, 10 classes, no download), in the same run:

- naive: full PIL decode + timm transform + torch eager forward at batch 1, file by file
  (on the first --naive-n files; it is slow);
- bare forward: the model alone on pre-decoded tensors at the batch size, torch eager and
  ONNX Runtime (the ceiling for the pipeline);
- wildid batch: ``wildid.batch.run_batch`` with the ONNX back end (scan, EXIF and sequences,
  background sample, draft decoding in a thread pool, quality metrics, empty_score, CSV
  append with fsync per batch), end to end.

- dask local:N: the same files through ``wildid.cluster.iter_batch_dask`` on a LocalCluster of
  N worker processes (decoding in processes instead of threads), same run; the rate counts from
  the first progress (cluster up, model shipped), the cluster start-up is printed beside it.

Goals (issue 4): wildid batch >= 3x naive and >= 85% of the bare ONNX forward.
Goals (issue 13): dask local:2 / in-process >= 0.9; the pipeline >= 85% of the machine's own limit,
cores / (decode + forward core-seconds per image), both costs measured single-threaded with
process CPU time in the same run (decode = header read + ``wildid.batch.decode``: draft JPEG
decode, transform, quality metrics, thumbnail; forward = ONNX Runtime, one thread, at the batch
size).  The JPEG decode alone is also timed with PIL's draft mode and with simplejpeg (libjpeg-turbo
DCT scaling), to see whether another decoder would pay.

Peak memory: ``run_batch`` in a fresh subprocess on folders of two sizes (hard links to the
same JPEGs, so only the file count grows): peak resident set (VmHWM, includes ONNX Runtime and
malloc arenas) and the Python heap peak (tracemalloc); both must stay flat.

The JPEGs are K distinct generated frames (smooth scene + noise + a blob), hard-linked to make
N files: decoding cost per file is the same as N distinct files (all sit in the page cache
either way).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

PROJECT_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(PROJECT_ROOT))

from wildid.backbones import build_model, default_data_config  # noqa: E402
from wildid.cards import ModelCard  # noqa: E402
from wildid.predictor import OnnxPredictor, TorchPredictor, build_transform, export_onnx  # noqa: E402

ARCHS = ["resnet18", "resnet50"]
DISTINCT = 8


def make_frame(seed: int, size=(4000, 3000)) -> Image.Image:
    """A camera-trap-like 12 MP frame: smooth scene, sensor noise, sometimes an animal blob."""
    rng = np.random.default_rng(seed)
    w, h = size
    small = rng.normal(110, 40, (h // 100, w // 100)).clip(0, 255).astype(np.uint8)
    scene = np.asarray(Image.fromarray(small).resize((w, h), Image.BICUBIC), dtype=np.float32)
    scene += rng.normal(0, 6, (h, w)).astype(np.float32)
    if seed % 2:
        yy, xx = np.ogrid[:h, :w]
        cx, cy = rng.integers(800, w - 800), rng.integers(600, h - 600)
        scene[((xx - cx) / 500.0) ** 2 + ((yy - cy) / 300.0) ** 2 < 1] = 20
    grey = Image.fromarray(scene.clip(0, 255).astype(np.uint8), "L")
    return Image.merge("RGB", (grey, grey, grey))


def make_folder(folder: Path, count: int, sources: list[Path]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        target = folder / f"IMG_{i:06d}.jpg"
        if not target.exists():
            os.link(sources[i % len(sources)], target)
    return folder


def card_for(arch: str) -> ModelCard:
    cfg = default_data_config(arch)
    return ModelCard(name=f"bench-{arch}", arch=arch, classes=tuple(f"class{i}" for i in range(10)),
                     input_size=tuple(cfg["input_size"]), mean=tuple(cfg["mean"]), std=tuple(cfg["std"]),
                     interpolation=cfg["interpolation"], crop_pct=float(cfg["crop_pct"]), threshold=0.5)


def naive_rate(files: list[Path], card: ModelCard, model: torch.nn.Module) -> float:
    transform = build_transform(card)
    start = time.perf_counter()
    with torch.inference_mode():
        for path in files:
            img = Image.open(path).convert("RGB")  # full 12 MP decode
            model(transform(img).unsqueeze(0))
    return len(files) / (time.perf_counter() - start)


def bare_rate(predictor, card: ModelCard, batch_size: int, images: int) -> float:
    batch = torch.randn(batch_size, *card.input_size)
    predictor.predict_proba(batch)  # warm-up
    rounds = max(1, images // batch_size)
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        predictor.predict_proba(batch)
        times.append(time.perf_counter() - start)
    return batch_size / statistics.median(times)


def pipeline_rate(folder: Path, predictor, out: Path, workers: int, batch_size: int) -> tuple[float, float]:
    """(images/s, process CPU milliseconds per image)."""
    from wildid.batch import run_batch

    cpu = time.process_time()
    summary = run_batch(folder, predictor, out, overwrite=True, workers=workers, batch_size=batch_size)
    cpu = time.process_time() - cpu
    assert summary.processed == summary.total and summary.statuses.get("error", 0) == 0, summary
    return summary.rate, 1000 * cpu / summary.processed


def dask_rate(folder: Path, predictor, out: Path, workers: int, batch_size: int) -> tuple[float, float, float]:
    """(images/s from the first progress on, seconds before it (cluster start, model shipping),
    CPU milliseconds per image of the workers and this process together, over the run)."""
    from wildid.cluster import Connection, iter_batch_dask

    started = time.perf_counter()
    connection = Connection(f"local:{workers}", timeout=10, dashboard=False)  # what `--dask local:N` starts
    client = connection.client
    try:
        steps = iter_batch_dask(client, folder, predictor, out, overwrite=True, batch_size=batch_size)
        next(steps)
        startup = time.perf_counter() - started
        cpu = time.process_time() + sum(client.run(time.process_time).values())
        last = None
        for last in steps:
            pass
        cpu = time.process_time() + sum(client.run(time.process_time).values()) - cpu
    finally:
        connection.close()
    assert last is not None and last.done == last.total, last
    return last.rate, startup, 1000 * cpu / last.processed


def cpu_ms(function, items: list, rounds: int = 1) -> float:
    """Process CPU milliseconds per item (all threads of this process count)."""
    start = time.process_time()
    for _ in range(rounds):
        for item in items:
            function(item)
    return 1000 * (time.process_time() - start) / (rounds * len(items))


def per_image_costs(files: list[Path], card: ModelCard, onnx_path: Path, batch_size: int) -> dict[str, float]:
    """Core-milliseconds per image, each stage single-threaded, same files as the pipeline."""
    from wildid.batch import decode
    from wildid.metadata import read_metadata

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        single = OnnxPredictor(card, onnx_path, batch_size=batch_size, threads=1)
        decode_ms = cpu_ms(lambda p: (read_metadata(p), decode(p, single)), files)
        batch = torch.randn(batch_size, *card.input_size)
        single.predict_proba(batch)  # warm-up
        forward_ms = cpu_ms(single.predict_proba, [batch] * max(2, 64 // batch_size)) / batch_size
        costs = {"decode": decode_ms, "forward": forward_ms}
        costs.update(jpeg_decoders(files, single.draft_size))
    finally:
        torch.set_num_threads(threads)
    return costs


def jpeg_decoders(files: list[Path], draft_size: int) -> dict[str, float]:
    """The JPEG decode alone (12 MP to the smallest DCT scale that keeps draft_size), two ways."""
    def pil_draft(path: Path):
        with Image.open(path) as img:
            img.draft("RGB", (draft_size, draft_size))
            img.load()

    out = {"pil_draft": cpu_ms(pil_draft, files)}
    try:
        import simplejpeg
    except ImportError:
        return out
    out["simplejpeg"] = cpu_ms(lambda p: simplejpeg.decode_jpeg(p.read_bytes(), min_height=draft_size,
                                                                 min_width=draft_size), files)
    out["pil_draft_again"] = cpu_ms(pil_draft, files)  # interleaved: load on a shared machine drifts
    return out


def peak_rss_mb() -> float:
    """This process's peak resident set (VmHWM).  ru_maxrss would do, but Linux carries it over
    exec from the parent, which here has decoded full 12 MP frames."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def child(args: argparse.Namespace) -> None:
    """Run one batch in this fresh process and print its peak memory (used by --mem-sizes)."""
    from wildid.batch import run_batch

    card = card_for(args.arch)
    predictor = OnnxPredictor(card, Path(args.onnx), batch_size=args.batch_size)
    import tracemalloc

    before = peak_rss_mb()
    tracemalloc.start()
    summary = run_batch(args.child, predictor, args.out, overwrite=True, workers=args.workers,
                        batch_size=args.batch_size)
    python_peak = tracemalloc.get_traced_memory()[1] / 1e6
    print(json.dumps({"files": summary.processed, "rate": summary.rate, "peak_mb": peak_rss_mb(),
                      "before_mb": before, "python_peak_mb": python_peak}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=500, help="JPEGs for the pipeline run (default 500)")
    parser.add_argument("--naive-n", type=int, default=100, help="files for the naive baseline (default 100)")
    parser.add_argument("--archs", nargs="+", default=ARCHS)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--mem-sizes", type=int, nargs=2, default=[250, 2500], metavar=("SMALL", "LARGE"))
    parser.add_argument("--dask-workers", type=int, default=2, help="LocalCluster worker processes (0: skip)")
    parser.add_argument("--cost-n", type=int, default=24, help="files for the per-image CPU costs (default 24)")
    parser.add_argument("--quick", action="store_true", help="n=48, naive-n=12, mem-sizes 40 400")
    parser.add_argument("--memory-only", action="store_true", help="only the peak-memory part")
    parser.add_argument("--keep", help="generate/keep the JPEGs in this folder (reused across runs)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--arch", help=argparse.SUPPRESS)
    parser.add_argument("--onnx", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(args)
    if args.quick:
        args.n, args.naive_n, args.mem_sizes = 48, 12, [40, 400]

    tmp = tempfile.TemporaryDirectory()
    work = Path(args.keep) if args.keep else Path(tmp.name)
    sources_dir = work / "sources"
    sources_dir.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    sources = []
    for seed in range(DISTINCT):
        path = sources_dir / f"frame{seed}.jpg"
        if not path.exists():
            make_frame(seed).save(path, quality=90)
        sources.append(path)
    size_mb = statistics.mean(p.stat().st_size for p in sources) / 1e6
    folder = make_folder(work / f"frames{args.n}", args.n, sources)
    print(f"{args.n} JPEGs 4000x3000 (~{size_mb:.1f} MB each, {DISTINCT} distinct, hard-linked), "
          f"made in {time.perf_counter() - started:.0f} s; torch {torch.__version__}, {os.cpu_count()} CPUs, "
          f"workers={args.workers}, batch={args.batch_size}")
    files = sorted(folder.iterdir())

    dask_head = f" {'dask local:' + str(args.dask_workers):>13} {'dask/in-proc':>13}" if args.dask_workers else ""
    print(f"{'arch':10} {'naive':>8} {'bare torch':>11} {'bare onnx':>10} {'wildid batch':>13} "
          f"{'x naive':>8} {'% onnx':>7}{dask_head}   (images/s)")
    onnx_paths = {}
    limits = []
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    for arch in args.archs:
        torch.manual_seed(0)
        card = card_for(arch)
        model = build_model(arch, len(card.classes)).eval()
        onnx_paths[arch] = export_onnx(model, card, work / f"{arch}.onnx")
        if args.memory_only:
            continue
        eager = TorchPredictor(card, model, batch_size=args.batch_size)
        ort = OnnxPredictor(card, onnx_paths[arch], batch_size=args.batch_size)
        naive = naive_rate(files[: args.naive_n], card, model)
        bare_torch = bare_rate(eager, card, args.batch_size, min(args.n, 64))
        bare_onnx = bare_rate(ort, card, args.batch_size, min(args.n, 128))
        piped, piped_cpu = pipeline_rate(folder, ort, work / f"results-{arch}.csv", args.workers, args.batch_size)
        dask_cols, clustered, startup, dask_cpu = "", None, None, None
        if args.dask_workers:
            clustered, startup, dask_cpu = dask_rate(folder, ort, work / f"results-{arch}-dask.csv",
                                                     args.dask_workers, args.batch_size)
            dask_cols = f" {clustered:13.1f} {clustered / piped:13.2f}"
        print(f"{arch:10} {naive:8.2f} {bare_torch:11.1f} {bare_onnx:10.1f} {piped:13.1f} "
              f"{piped / naive:7.1f}x {100 * piped / bare_onnx:6.0f}%{dask_cols}", flush=True)
        costs = per_image_costs(files[: args.cost_n], card, onnx_paths[arch], args.batch_size)
        limits.append((arch, costs, piped, clustered, startup, piped_cpu, dask_cpu))

    for arch, costs, piped, clustered, startup, piped_cpu, dask_cpu in limits:
        per_image = costs["decode"] + costs["forward"]
        limit = 1000 * cores / per_image
        line = (f"\n{arch}: single-node limit = {cores} cores / (decode {costs['decode']:.1f} + forward "
                f"{costs['forward']:.1f} core-ms per image) = {limit:.1f} images/s; wildid batch {piped:.1f} = "
                f"{100 * piped / limit:.0f}% of it")
        if clustered is not None:
            line += (f", dask local:{args.dask_workers} {clustered:.1f} = {100 * clustered / limit:.0f}% "
                     f"(+{startup:.1f} s cluster start-up before the first task)")
        print(line)
        line = (f"  CPU spent per image: wildid batch {piped_cpu:.1f} core-ms = {100 * per_image / piped_cpu:.0f}% useful "
                f"(decode + forward)")
        if dask_cpu is not None:
            line += f", dask local:{args.dask_workers} {dask_cpu:.1f} core-ms = {100 * per_image / dask_cpu:.0f}% useful"
        print(line + f"; load average at the end {os.getloadavg()[0]:.1f}")
        decoders = ", ".join(f"{name} {ms:.1f}" for name, ms in costs.items() if name not in ("decode", "forward"))
        print(f"  JPEG decode alone, core-ms per 12 MP frame: {decoders}", flush=True)

    arch = args.archs[0]
    print(f"\npeak memory of run_batch in a fresh process ({arch}, ONNX, peak resident set VmHWM):")
    for count in args.mem_sizes:
        mem_folder = make_folder(work / f"mem{count}", count, sources)
        result = subprocess.run(
            [sys.executable, __file__, "--child", str(mem_folder), "--arch", arch, "--onnx", str(onnx_paths[arch]),
             "--out", str(work / f"mem{count}.csv"), "--workers", str(args.workers), "--batch-size", str(args.batch_size)],
            capture_output=True, text=True, check=True,
        )
        stats = json.loads(result.stdout.strip().splitlines()[-1])
        print(f"  {stats['files']:6d} files: peak RSS {stats['peak_mb']:7.1f} MB (after imports + model: "
              f"{stats['before_mb']:.1f} MB), Python heap peak {stats['python_peak_mb']:.1f} MB (tracemalloc)",
              flush=True)
    tmp.cleanup()


if __name__ == "__main__":
    main()
