"""What a training run reports while it works, and how it is stopped."""

from __future__ import annotations

import threading
from dataclasses import dataclass, replace
from typing import Callable

from wildid.errors import WildidError


class TrainingStopped(WildidError):
    """The user pressed stop; nothing was written."""


@dataclass(frozen=True)
class Progress:
    """One report from the trainer.

    stage: "features" (done/total images), "epoch" (one finished epoch of ``fold``),
    "head" (a linear head was fitted: message says C, views and temperature),
    "fold" (a fold finished; val_acc is its accuracy), "saved".
    fold: 1..K for validation folds, 0 for the final model on all data.
    """

    stage: str
    fold: int = 0
    folds: int = 0
    epoch: int = 0
    epochs: int = 0
    loss: float | None = None
    acc: float | None = None
    val_loss: float | None = None
    val_acc: float | None = None
    done: int = 0
    total: int = 0
    message: str = ""


ProgressFn = Callable[[Progress], None]
StopFlag = threading.Event | Callable[[], bool] | None


def stopped(stop: StopFlag) -> bool:
    if stop is None:
        return False
    if isinstance(stop, threading.Event):
        return stop.is_set()
    return bool(stop())


def check_stop(stop: StopFlag, what: str = "training stopped by the user") -> None:
    if stopped(stop):
        raise TrainingStopped(f"{what}; nothing was written")


def with_val(report: Progress, val_loss: float, val_acc: float) -> Progress:
    return replace(report, val_loss=val_loss, val_acc=val_acc)
