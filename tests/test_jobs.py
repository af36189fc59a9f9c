"""Training as a server-side job: one registry keyed by the output name."""

from __future__ import annotations

import threading

import pytest

from wildid import jobs
from wildid.errors import DataError


class FakeJob:
    """Stands in for wildid.train.TrainingJob: runs until released."""

    def __init__(self, data, config, out, command="", overwrite=False):
        self.out, self.release = out, threading.Event()
        self.thread = threading.Thread(target=self.release.wait, daemon=True)

    def start(self):
        self.thread.start()
        return self

    @property
    def running(self):
        return self.thread.is_alive()

    def finish(self):
        self.release.set()
        self.thread.join(5)


def test_a_second_run_to_a_name_in_use_is_refused_and_any_session_finds_the_first():
    runs = jobs.TrainingRuns()
    first = runs.start("voles-1", None, None, "models/voles-1", meta={"folder": "/data/tunnel"}, job_factory=FakeJob)
    with pytest.raises(DataError, match="already running"):
        runs.start("voles-1", None, None, "models/voles-1", job_factory=FakeJob)
    other = runs.start("voles-2", None, None, "models/voles-2", job_factory=FakeJob)
    assert runs.get("voles-1") is first and runs.get("voles-1").meta == {"folder": "/data/tunnel"}
    assert runs.busy("voles-1") and not runs.busy("nothing")
    assert [r.name for r in runs.running()] == ["voles-2", "voles-1"]
    assert runs.latest(running_only=True) is other
    first.job.finish()
    assert not runs.busy("voles-1")
    assert runs.get("voles-1") is first  # the finished run stays, with its result
    again = runs.start("voles-1", None, None, "models/voles-1", job_factory=FakeJob)  # free again
    assert runs.get("voles-1") is again and again is not first
    assert [r.name for r in runs.all()] == ["voles-1", "voles-2"]
    for run in runs.all():
        run.job.finish()


def test_finished_runs_are_pruned_running_ones_never():
    runs = jobs.TrainingRuns(keep_finished=2)
    started = [runs.start(f"m{i}", None, None, f"models/m{i}", job_factory=FakeJob) for i in range(5)]
    for run in started[:4]:
        run.job.finish()
    runs.start("m5", None, None, "models/m5", job_factory=FakeJob)
    names = {r.name for r in runs.all()}
    assert {"m4", "m5"} <= names  # running
    assert len(names) == 4 and {"m2", "m3"} <= names  # the two newest finished
    for run in runs.all():
        run.job.finish()
