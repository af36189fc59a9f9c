"""Benchmark: what the training-file fingerprint costs, against decoding the same files.

    .venv/bin/python bench/fingerprint.py            # 100 generated 4000x3000 JPEGs
    .venv/bin/python bench/fingerprint.py --n 30     # quicker

Training and evaluation digest every file once (wildid.fingerprint: BLAKE2b-64 over the bytes,
two threads).  The baseline in the same run is the cheapest decode training does anyway (JPEG
draft mode to 224 px, as batch and the feature extractor read a frame), and the size of the card
entry is printed for the file count and for a 100,000-file set (capped at the sketch size).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def make_jpegs(folder: Path, n: int) -> list[Path]:
    from PIL import Image

    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:3000, 0:4000]
    base = (60 + 80 * xx / 4000 + 30 * np.sin(yy / 40.0)).astype(np.float32)
    paths = []
    for i in range(n):
        pixels = base + rng.normal(0, 12, base.shape).astype(np.float32)
        path = folder / f"frame_{i:04d}.jpg"
        Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), "L").convert("RGB").save(path, quality=90)
        paths.append(path)
    return paths


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=100)
    args = parser.parse_args(argv)

    from wildid import fingerprint
    from wildid.imaging import load_image

    with tempfile.TemporaryDirectory(prefix="wildid-bench-fp-") as tmp:
        paths = make_jpegs(Path(tmp), args.n)
        megabytes = sum(p.stat().st_size for p in paths) / 1e6
        fingerprint.sketch(paths[:3])  # warm the page cache path the same way for both
        started = time.perf_counter()
        entry = fingerprint.sketch(paths)
        digest_s = time.perf_counter() - started
        started = time.perf_counter()
        for path in paths:
            load_image(path, draft_size=224)
        decode_s = time.perf_counter() - started
    print(f"{args.n} JPEGs 4000x3000, {megabytes / args.n:.1f} MB each")
    print(f"fingerprint (BLAKE2b-64, 2 threads): {digest_s * 1000 / args.n:.1f} ms/file, {megabytes / digest_s:.0f} MB/s")
    print(f"baseline, draft decode to 224 px:    {decode_s * 1000 / args.n:.1f} ms/file")
    print(f"card entry: {len(entry['digests'])} characters for {args.n} files; "
          f"{4 * ((fingerprint.SKETCH_SIZE * 8 + 2) // 3)} at most (>= {fingerprint.SKETCH_SIZE} files)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
