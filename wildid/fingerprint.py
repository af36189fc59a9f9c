"""A small fingerprint of a model's training files, kept in its card, to catch evaluations on them.

Evaluating a model on the images it was trained on reports near-perfect accuracy that means
nothing.  At train time the card records a digest of every training file's bytes (BLAKE2b,
8 bytes: copies made by ``wildid review export`` or by hand match their originals, renamed or
moved); the dashboard digests the evaluated files and counts the matches.

Kept small: up to :data:`SKETCH_SIZE` digests are stored.  A larger training set keeps the
:data:`SKETCH_SIZE` smallest digests (a bottom-k sketch): an evaluated file whose digest is at
most the largest stored one is then known to be in or out of the training set, and the share of
overlap is estimated from those files (the digest is uniform, so they are a random sample).
"""

from __future__ import annotations

import base64
import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Mapping

import numpy as np

DIGEST_BYTES = 8
SKETCH_SIZE = 5000
HASH_NAME = "blake2b-64 of the file bytes"
CHUNK = 1 << 20


def file_digest(path: str | os.PathLike) -> int | None:
    """The file's 64-bit BLAKE2b digest as an unsigned integer; None if it cannot be read."""
    digest = hashlib.blake2b(digest_size=DIGEST_BYTES)
    try:
        with open(path, "rb") as handle:
            for chunk in iter(lambda: handle.read(CHUNK), b""):
                digest.update(chunk)
    except OSError:
        return None
    return int.from_bytes(digest.digest(), "big")


def digests(paths: Iterable[str | os.PathLike], workers: int = 2) -> list[int | None]:
    """Digests of many files (threads: hashing releases the GIL), in the order given."""
    from concurrent.futures import ThreadPoolExecutor

    paths = list(paths)
    if len(paths) < 8 or workers <= 1:
        return [file_digest(p) for p in paths]
    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(file_digest, paths))


def sketch(paths: Iterable[str | os.PathLike], size: int = SKETCH_SIZE) -> dict:
    """The card's ``training_files`` entry for these files (unreadable files are left out)."""
    values = sorted({d for d in digests(paths) if d is not None})
    kept = values[:size]
    packed = np.array(kept, dtype=">u8").tobytes()
    return {
        "hash": HASH_NAME,
        "count": len(values),
        "stored": len(kept),
        "digests": base64.b64encode(packed).decode("ascii"),
    }


@dataclass(frozen=True)
class Sketch:
    values: frozenset[int]
    count: int  # distinct training files
    limit: int | None  # largest stored digest when only the smallest were kept, else None (exact)

    @property
    def exact(self) -> bool:
        return self.limit is None


def read_sketch(entry: Mapping | None) -> Sketch | None:
    """The sketch stored in a card (``provenance.training_files``), or None when absent/unknown."""
    if not isinstance(entry, Mapping) or entry.get("hash") != HASH_NAME:
        return None
    try:
        raw = base64.b64decode(str(entry.get("digests", "")), validate=True)
        values = np.frombuffer(raw, dtype=">u8").astype(np.uint64).tolist() if raw else []
        count = int(entry.get("count", len(values)))
    except (ValueError, TypeError):
        return None
    limit = max(values) if values and len(values) < count else None
    return Sketch(frozenset(int(v) for v in values), count, limit)


@dataclass(frozen=True)
class Overlap:
    evaluated: int  # readable evaluated files
    matched: int  # of them, known training files
    checked: int  # of them, decidable (all of them for an exact fingerprint)
    training_files: int
    exact: bool
    examples: tuple[str, ...] = ()

    @property
    def share(self) -> float:
        """Share of the evaluated images that were training images (estimated when not exact)."""
        return self.matched / self.checked if self.checked else 0.0

    def as_dict(self) -> dict:
        return {"evaluated": self.evaluated, "matched": self.matched, "checked": self.checked,
                "training_files": self.training_files, "exact": self.exact, "share": self.share,
                "examples": list(self.examples)}


def overlap(paths: Iterable[str | os.PathLike], entry: Mapping | None) -> Overlap | None:
    """How many of ``paths`` were among the training files the card recorded (None: no record)."""
    found = read_sketch(entry)
    if found is None:
        return None
    paths = [str(p) for p in paths]
    matched = checked = evaluated = 0
    examples: list[str] = []
    for path, value in zip(paths, digests(paths)):
        if value is None:
            continue
        evaluated += 1
        if found.limit is not None and value > found.limit:
            continue  # beyond the stored sketch: cannot tell
        checked += 1
        if value in found.values:
            matched += 1
            if len(examples) < 5:
                examples.append(Path(path).name)
    return Overlap(evaluated, matched, checked, found.count, found.exact, tuple(examples))
