"""A training run in a background thread, for the app; long-format rows for its live plots."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path
from typing import Any, Iterable

from wildid.datasets import LabelledData
from wildid.errors import DataError, WildidError
from wildid.training.progress import Progress, TrainingStopped
from wildid.training.recipe import TrainConfig, TrainResult, train


def resolve_data_path(text: str) -> Path:
    """A data folder or CSV the app may read: passes the one path guard (inside the allowed folder)."""
    from wildid.guard import check_path

    return check_path(text, what="folder or CSV file")


class TrainingJob:
    """``train`` in a daemon thread; the page polls ``events`` and may call ``stop()``.

    Only plain Python state is shared with the thread (a list appended under a lock), so a
    page rerun can read it at any time.
    """

    def __init__(self, data: LabelledData, config: TrainConfig, out: str | os.PathLike, command: str = "",
                 overwrite: bool = False):
        self.data, self.config, self.out, self.command, self.overwrite = data, config, out, command, overwrite
        self.stop_event = threading.Event()
        self.events: list[Progress] = []
        self.latest_features: Progress | None = None
        self.result: TrainResult | None = None
        self.error: str | None = None
        self.stopped = False
        self.started = time.time()
        self._lock = threading.Lock()
        self.thread = threading.Thread(target=self._run, name="wildid-train", daemon=True)

    def start(self) -> "TrainingJob":
        self.thread.start()
        return self

    def _record(self, p: Progress) -> None:
        with self._lock:
            if p.stage == "features":
                self.latest_features = p
            else:
                self.events.append(p)

    def _run(self) -> None:
        try:
            self.result = train(self.data, self.config, self.out, self.command, self._record, self.stop_event, self.overwrite)
        except TrainingStopped as exc:
            self.stopped, self.error = True, str(exc)
        except WildidError as exc:
            self.error = str(exc)
        except Exception as exc:  # noqa: BLE001 - the page must show something, not hang
            self.error = f"training failed: {type(exc).__name__}: {exc}"

    def stop(self) -> None:
        self.stop_event.set()

    @property
    def running(self) -> bool:
        return self.thread.is_alive()

    def snapshot(self) -> tuple[list[Progress], Progress | None]:
        with self._lock:
            return list(self.events), self.latest_features

    def wait(self, timeout: float | None = None) -> bool:
        self.thread.join(timeout)
        return not self.running


def curve_rows(events: Iterable[Progress]) -> list[dict[str, Any]]:
    """Long-format rows (fold, epoch, metric, split, value) for the live loss / accuracy plots."""
    rows = []
    for p in events:
        if p.stage != "epoch":
            continue
        run = f"fold {p.fold}" if p.fold else "final (all data)"
        for metric, split, value in (("loss", "train", p.loss), ("accuracy", "train", p.acc),
                                     ("loss", "held-out", p.val_loss), ("accuracy", "held-out", p.val_acc)):
            if value is not None:
                rows.append({"run": run, "epoch": p.epoch, "metric": metric, "split": split, "value": float(value)})
    return rows
