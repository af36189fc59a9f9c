"""Kill a writer just before each of its file-system changes, one run per change.

``python -m tests.kill_points model|camtrap|features WORK`` writes ``WORK/<n>/`` for n = 1, 2, ...:
a copy of the previous generation (``WORK/template``) over which a forked child writes the next
one and SIGKILLs itself just before its n-th rename / link / unlink / mkdir / directory exchange
(writes into files between two of these are covered by the next kill point).  It stops at the
first n the writer finishes before (that folder holds the completed write) and prints one JSON
line: the number of kill points.  The test reads the folders afterwards (tests/test_staged.py).
The children are forked from a fresh process, so no thread of a pytest session is copied.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import sys
from pathlib import Path

MUTATIONS = ("rename", "replace", "link", "symlink", "unlink", "remove", "rmdir", "mkdir")


def run_killed_at(n: int, action) -> bool:
    """Run ``action()`` in a child killed before its ``n``-th change; True if it was killed."""
    pid = os.fork()
    if pid == 0:  # the child
        from wildid import staged

        count = [0]

        def wrap(fn):
            def counted(*args, **kwargs):
                count[0] += 1
                if count[0] == n:
                    os.kill(os.getpid(), signal.SIGKILL)
                return fn(*args, **kwargs)
            return counted

        for name in MUTATIONS:
            setattr(os, name, wrap(getattr(os, name)))
        staged.exchange = wrap(staged.exchange)
        try:
            action()
        except BaseException as exc:  # noqa: BLE001 - reported through the exit status
            print(f"writer failed: {exc!r}", file=sys.stderr)
            os._exit(3)
        os._exit(0)
    _, status = os.waitpid(pid, 0)
    if os.WIFSIGNALED(status):
        return True
    if os.WEXITSTATUS(status) != 0:
        raise SystemExit(f"the writer failed at kill point {n} (exit {os.WEXITSTATUS(status)})")
    return False


def every_kill_point(work: Path, target_name: str, action_for) -> int:
    n = 0
    while True:
        n += 1
        run = work / str(n)
        shutil.copytree(work / "template", run, symlinks=True)
        if not run_killed_at(n, action_for(run / target_name)):
            return n - 1  # WORK/<n> holds the completed write
        if n > 200:
            raise SystemExit("more than 200 kill points: the writer does not finish")


def model_writer(work: Path) -> int:
    """Old: the 3-class tiny model plus a taxonomy.toml and an ONNX export; new: a 2-class model."""
    import timm

    from tests.conftest import make_tiny_model
    from wildid.registry import save_model

    make_tiny_model(work / "template", "m")
    (work / "template" / "m" / "taxonomy.toml").write_text("# kept across saves\n", encoding="utf-8")
    (work / "template" / "m" / "model.onnx").write_bytes(b"stale export")
    from wildid.cards import load_card

    card = load_card(work / "template" / "m")
    new_card = card.replace(classes=("cat", "dog"), title="Second generation")
    new_model = timm.create_model(card.arch, num_classes=2)
    return every_kill_point(work, "m", lambda target: lambda: save_model(new_model, new_card, target))


def camtrap_writer(work: Path) -> int:
    """Old: a package whose files all say 'old', plus a notes.txt of the user's; new: written by the exporter."""
    from wildid.camtrap import TABLES, _write_package

    old = work / "template" / "package"
    old.mkdir(parents=True)
    for name in ("datapackage.json", *(f"{t}.csv" for t in TABLES)):
        (old / name).write_text("old\n", encoding="utf-8")
    (old / "notes.txt").write_text("mine\n", encoding="utf-8")
    package = {"name": "second-generation"}
    tables = {name: [] for name in TABLES}
    return every_kill_point(work, "package", lambda target: lambda: _write_package(target, package, tables))


def features_writer(work: Path) -> int:
    """Old: a feature cache holding image a; new: the same cache flushed with images a and b."""
    import numpy as np

    from tests.conftest import make_tiny_model
    from wildid.training.features import FeatureCache

    card = make_tiny_model(work / "tiny", "m")
    (work / "template").mkdir()
    np.savez(work / "template" / "features.npz", keys=np.array(["a"]), vectors=np.zeros((1, 4), np.float32))

    def flush(target: Path):
        def run():
            cache = FeatureCache(card, "none", enabled=True)
            cache.persistent, cache.path = True, target  # random weights are never cached on disk otherwise
            cache.entries = {"a": np.zeros(4, np.float32), "b": np.ones(4, np.float32)}
            cache.dirty = True
            cache.flush()
        return run

    return every_kill_point(work, "features.npz", flush)


if __name__ == "__main__":
    kind, work = sys.argv[1], Path(sys.argv[2])
    writers = {"model": model_writer, "camtrap": camtrap_writer, "features": features_writer}
    points = writers[kind](work)
    print(json.dumps({"kill_points": points}))
