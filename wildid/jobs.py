"""Training runs that live on the server, not in a page: one registry, keyed by the output name.

A run started from the Train page used to belong to that page's session: a reload lost its
curves and stop button while it went on unseen, and a second run to the same name was
accepted and overwrote the first.  The app now keeps one :class:`TrainingRuns` for the whole
server (held by ``st.cache_resource``), so a reload, another tab or another person's session
finds the same run by its name: its live curves, its stop button, and its result once done.

    runs = TrainingRuns()
    run = runs.start("voles-1", data, config, out="models/voles-1", command=...)
    runs.get("voles-1").job.snapshot()      # any session, any time
    runs.start("voles-1", ...)              # DataError while the first one runs

The training itself is :class:`wildid.train.TrainingJob` (a thread with a stop flag); this
module only decides which runs exist and refuses a second one to a name in use.
"""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable

from wildid.errors import DataError

# Finished runs kept for their result (a few per person in a workshop); running ones are never dropped.
KEEP_FINISHED = 20


@dataclass
class TrainingRun:
    name: str  # the output model name: the key
    job: Any  # wildid.train.TrainingJob (or anything with its start/stop/running/snapshot)
    started: float = field(default_factory=time.time)
    meta: dict = field(default_factory=dict)  # where the run came from (data, project folder)

    @property
    def running(self) -> bool:
        return self.job.running


class TrainingRuns:
    """Every training run of this server, by output name; safe to use from many sessions."""

    def __init__(self, keep_finished: int = KEEP_FINISHED):
        self._lock = threading.Lock()
        self._runs: dict[str, TrainingRun] = {}
        self.keep_finished = keep_finished

    def start(self, name: str, data, config, out: str | os.PathLike, command: str = "", overwrite: bool = False,
              meta: dict | None = None, job_factory: Callable | None = None) -> TrainingRun:
        """Start training into ``out`` under ``name``; DataError when a run to that name is live."""
        if job_factory is None:
            from wildid.train import TrainingJob as job_factory
        with self._lock:
            current = self._runs.get(name)
            if current is not None and current.running:
                since = time.strftime("%H:%M", time.localtime(current.started))
                raise DataError(f"a training run to '{name}' is already running (started {since}): watch it on this "
                                f"page, stop it, or choose another model name")
            run = TrainingRun(name, job_factory(data, config, out, command, overwrite), meta=dict(meta or {}))
            self._runs.pop(name, None)
            self._runs[name] = run  # the newest last
            run.job.start()
            self._prune()
        return run

    def _prune(self) -> None:
        finished = [name for name, run in self._runs.items() if not run.running]
        for name in finished[: max(0, len(finished) - self.keep_finished)]:
            del self._runs[name]

    def get(self, name: str | None) -> TrainingRun | None:
        with self._lock:
            return self._runs.get(name) if name else None

    def all(self) -> list[TrainingRun]:
        """Every known run, newest first."""
        with self._lock:
            return list(reversed(self._runs.values()))

    def running(self) -> list[TrainingRun]:
        return [run for run in self.all() if run.running]

    def latest(self, running_only: bool = False) -> TrainingRun | None:
        runs = self.running() if running_only else self.all()
        return runs[0] if runs else None

    def busy(self, name: str) -> bool:
        run = self.get(name)
        return run is not None and run.running
