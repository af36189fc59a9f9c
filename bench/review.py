"""Review core: what a durable label costs, and how fast big results and journals are read back.

    .venv/bin/python bench/review.py [--rows 100000] [--labels 2000]

Baselines in the same run: an append without fsync (what durability costs), and plain
pandas.read_csv of the journal (what torn-line-tolerant replay costs).
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

from wildid import review


def fake_results(path: Path, rows: int) -> None:
    rng = np.random.default_rng(0)
    classes = ["gray fox", "bobcat", "coyote", "vole", "lemming"]
    labels = rng.choice(classes, rows)
    confidence = rng.uniform(0.2, 1.0, rows).round(4)
    frame = pd.DataFrame({c: "" for c in review.RESULTS_COLUMNS}, index=range(rows))
    frame["path"] = [f"/data/cam{i % 7}/img{i:07d}.jpg" for i in range(rows)]
    frame["relpath"] = [p[len("/data/"):] for p in frame["path"]]
    frame["label"] = labels
    frame["confidence"] = confidence
    frame["top_k"] = [json.dumps([[l, c]]) for l, c in zip(labels, confidence)]
    frame["status"] = np.where(confidence >= 0.7, "accepted", "review")
    frame["sequence_id"] = [f"seq{i // 5}" for i in range(rows)]
    frame.to_csv(path, index=False)


def timed(fn, repeat: int = 3):
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        value = fn()
        best = min(best, time.perf_counter() - start)
    return best, value


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--labels", type=int, default=2000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(dir=os.environ.get("WILDID_BENCH_DIR")) as tmp:
        results = Path(tmp) / "run.csv"
        fake_results(results, args.rows)
        frame = review.read_results(results)
        paths = list(frame["path"][: args.labels])

        start = time.perf_counter()
        for path in paths:
            review.append_label(results, path, "bobcat", "bench", "gray fox", 0.5)
        durable = (time.perf_counter() - start) / len(paths)
        plain_file = Path(tmp) / "plain.csv"
        start = time.perf_counter()
        for path in paths:
            with open(plain_file, "a") as handle:
                handle.write(f"{path},bobcat,bench,2024-01-01T00:00:00,gray fox,0.5\n")
        plain = (time.perf_counter() - start) / len(paths)
        print(f"append one label: {durable * 1e3:.2f} ms with fsync, {plain * 1e3:.3f} ms without (baseline)")

        t_replay, replay = timed(lambda: review.replay_journal(results))
        t_pandas, _ = timed(lambda: pd.read_csv(review.journal_path(results)))
        print(f"replay {len(replay.entries)} journal lines: {t_replay * 1e3:.1f} ms (pandas.read_csv baseline {t_pandas * 1e3:.1f} ms)")

        t_read, _ = timed(lambda: review.read_results(results), repeat=2)
        print(f"read {args.rows} results rows: {t_read:.2f} s")
        for spec in (review.QueueSpec(review.QUEUE_BELOW_THRESHOLD), review.QueueSpec(review.QUEUE_PER_BIN, per_bin=50),
                     review.QueueSpec(review.QUEUE_RANDOM, n=500, seed=1)):
            t_queue, queue = timed(lambda: review.build_queue(frame, spec))
            print(f"queue {spec.describe()!r}: {len(queue)} images in {t_queue * 1e3:.1f} ms")
        t_metrics, metrics = timed(lambda: review.review_metrics(frame, replay))
        print(f"live metrics over {metrics.n_reviewed} reviewed: {t_metrics * 1e3:.1f} ms")
        t_merge, final = timed(lambda: review.merge_final(frame, replay))
        print(f"merge final data set ({len(final)} rows): {t_merge * 1e3:.1f} ms")


if __name__ == "__main__":
    main()
