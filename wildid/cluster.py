"""`wildid batch` on a Dask cluster: the same rows, the same results file, the same resume.

    from wildid.cluster import iter_batch_dask
    for step in iter_batch_dask("local:2", "frames/", predictor, "results.csv", recursive=True):
        print(step.done, step.total, step.rate)

``target`` is a running scheduler (``tcp://host:8786``), ``local[:N]`` (a LocalCluster of N
worker processes on this machine) or a ``distributed.Client``.  Dask does the scheduling,
data transfer, retries of tasks whose worker died, and the dashboard; this module only says
what a task is and writes what comes back:

- A task is a camera folder, or a slice of a large one.  It calls
  :func:`wildid.batch.folder_rows`, the function the in-process run calls, so it returns
  the rows the local run writes.  Sequences and the median background belong to the
  whole folder: a folder cut into slices first gets a plan task (headers + background
  sample of all its files) whose result every slice task takes; slices start at
  multiples of the batch size, so even the model's batches are the same.
- The model travels with the run: a worker plugin carries the card and the weight (or
  ONNX) bytes, and each worker process loads the predictor once, on its first task.
  Workers need no model folder, but they do need wildid installed and must see the
  images at the same paths as this machine (a shared file system); a worker that cannot
  read a folder stops the run with one line naming the worker and the folder.
- Only this process writes the results CSV, as tasks complete, flushed and fsync'ed per
  task like the local run.  Rows are keyed by path: a path already in the file is never
  written again, so a task rerun after its worker was killed adds nothing twice, and
  ``resume=True`` submits only the files not yet in the file.
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
import re
import sys
import threading
import time
import types
import uuid
from contextlib import contextmanager
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator

from wildid import defaults
from wildid.batch import (
    DELAY_ENV,
    HEADER_LINE,
    BatchProgress,
    folder_rows,
    iter_folders,
    open_results,
    plan_folder,
    prepare_run,
    write_rows,
)
from wildid.errors import ClusterError, DataError, WildidError

try:  # the [cluster] extra; without it only the in-process path exists
    from distributed.diagnostics.plugin import WorkerPlugin
except ImportError:  # pragma: no cover - exercised only where distributed is missing
    WorkerPlugin = object  # type: ignore[assignment,misc]

CONNECT_TIMEOUT = 5.0  # seconds to wait for a scheduler to answer
MAX_SLICE = 1024  # files per task at most: a killed worker loses at most this much work
TASKS_PER_THREAD = 4  # aim for this many tasks per Dask thread: load balance and progress
PLUGIN_PREFIX = "wildid-model-"


# --- where to run --------------------------------------------------------------------------------
@dataclass(frozen=True)
class Target:
    address: str | None  # a scheduler address, or None for a LocalCluster
    workers: int = 0  # LocalCluster worker processes

    @property
    def threads_per_worker(self) -> int:
        """One Dask thread per core: each task runs one decode thread beside its model calls."""
        return max(1, (os.cpu_count() or 1) // max(1, self.workers))


def parse_target(text: str) -> Target:
    """``local``, ``local:N`` or a scheduler address (``tcp://host:8786``, ``host:8786``)."""
    text = (text or "").strip()
    match = re.fullmatch(r"local(?::(\d+))?", text)
    if match:
        workers = int(match.group(1)) if match.group(1) else (os.cpu_count() or 1)
        if workers < 1:
            raise ClusterError("--dask local:N needs N >= 1 worker processes")
        return Target(None, workers)
    if re.fullmatch(r"[a-z][a-z0-9+.-]*://\S+", text) or re.fullmatch(r"[\w.\-\[\]:]+:\d+", text):
        return Target(text if "://" in text else f"tcp://{text}")
    raise ClusterError(f"--dask {text!r}: give a scheduler address (tcp://host:8786) or local[:N]")


@contextmanager
def plain_main():
    """While worker processes are spawned, ``__main__`` is an empty module.

    A spawned process first re-imports its parent's ``__main__`` script.  Inside Streamlit (and
    its AppTest) ``__main__`` is the page being run, so each new Dask worker would run the Batch
    page again (loading models, exporting ONNX next to the parent) before it could start: under
    load the worker missed its start-up timeout.  An empty ``__main__`` gives the workers nothing
    of the caller's to import; they need only wildid, which they import by name.
    """
    saved = sys.modules.get("__main__")
    sys.modules["__main__"] = types.ModuleType("__main__")
    try:
        yield
    finally:
        if saved is not None:
            sys.modules["__main__"] = saved


class Connection:
    """A Client, and the LocalCluster behind it when this process started one."""

    def __init__(self, target: str, timeout: float, dashboard: bool):
        spec = parse_target(target)
        try:
            from distributed import Client, LocalCluster
        except ImportError:
            raise ClusterError("Dask is not installed here: pip install 'wildid[cluster]' (dask[distributed])") from None

        self.cluster = None
        if spec.address is None:
            import dask

            # Dask's statistical profiler samples every busy thread every 10 ms; on a 2-core
            # machine it cost about 15% of the workers' CPU per image (bench/batch.py).
            with dask.config.set({"distributed.worker.profile.enabled": False}), plain_main():
                self.cluster = LocalCluster(n_workers=spec.workers, threads_per_worker=spec.threads_per_worker,
                                            processes=True, dashboard_address=":0" if dashboard else None,
                                            silence_logs=logging.ERROR)
            self.client = Client(self.cluster)
            return
        try:
            self.client = Client(spec.address, timeout=timeout, set_as_default=False)
        except (OSError, TimeoutError, ValueError) as exc:
            raise ClusterError(f"no Dask scheduler answers at {spec.address} (waited {timeout:g} s): start one with "
                               f"`dask scheduler` or check the address ({type(exc).__name__})") from None

    def close(self) -> None:
        try:
            self.client.close()
        finally:
            if self.cluster is not None:
                self.cluster.close()


# --- the model on the workers ----------------------------------------------------------------------
class ModelShipment(WorkerPlugin):
    """The model travels inside this plugin: every worker, including ones that join later,
    gets the card and the weight bytes, and loads the predictor once, on its first task."""

    idempotent = True  # the same model registered again (a second run) keeps the loaded one

    def __init__(self, card, backend: str, files: dict[str, bytes], trust: bool = False, client_pid: int = 0,
                 torch_threads: int = 1):
        self.card, self.backend, self.files, self.trust = card, backend, files, trust
        self.client_pid, self.torch_threads = client_pid, torch_threads
        digest = hashlib.sha1(backend.encode())
        for name in sorted(files):
            digest.update(name.encode() + b"\0" + files[name])
        self.name = PLUGIN_PREFIX + digest.hexdigest()[:16]

    @classmethod
    def from_predictor(cls, predictor, trust: bool = False) -> "ModelShipment":
        card = predictor.card
        if predictor.backend == "onnx":
            files = {"model.onnx": Path(predictor.onnx_path).read_bytes()}
        elif card.weights_path is not None and card.weights_path.is_file():
            files = {card.weights: card.weights_path.read_bytes()}
        else:
            raise ClusterError(f"model {card.name!r} has no weights file to send to the Dask workers")
        # The scope check's statistics travel with the weights: a worker may not see the model folder.
        files.update({path.name: path.read_bytes() for path in card.scope_files})
        import torch

        return cls(card, predictor.backend, files, trust, os.getpid(), torch.get_num_threads())

    def setup(self, worker=None) -> None:
        self._lock = threading.Lock()
        self._predictor = None
        base = Path(getattr(worker, "local_directory", None) or os.environ.get("TMPDIR", "/tmp"))
        self._folder = base / self.name

    def predictor(self):
        with self._lock:
            if self._predictor is None:
                self._predictor = self._load()
            return self._predictor

    def _load(self):
        from wildid.predictor import OnnxPredictor, TorchPredictor
        from wildid.registry import build_network

        self._folder.mkdir(parents=True, exist_ok=True)
        for name, data in self.files.items():
            (self._folder / name).write_bytes(data)
        if os.getpid() != self.client_pid:
            import torch

            # Torch's CPU kernels can round differently with another intra-op thread count
            # (measured: 1.6e-7 on a test ResNet), so a torch model runs with the thread count
            # of the process that started the run: the rows are the ones it would write itself.
            # ONNX Runtime gives the same numbers for any thread count and batch size
            # (measured), so it runs single-threaded: one Dask thread per core, no oversubscription.
            torch.set_num_threads(self.torch_threads if self.backend == "torch" else 1)
        card = self.card.replace(folder=self._folder)
        if self.backend == "onnx":
            return OnnxPredictor(card, self._folder / "model.onnx", threads=1)
        return TorchPredictor(card, build_network(card, trust=self.trust))

    def teardown(self, worker=None) -> None:
        import shutil

        shutil.rmtree(getattr(self, "_folder", ""), ignore_errors=True)


def _worker_predictor(plugin_name: str):
    from distributed import get_worker

    worker = get_worker()
    try:
        plugin = worker.plugins[plugin_name]
    except KeyError:
        raise ClusterError(f"worker {worker.address} has not received the model; rerun with --resume") from None
    return plugin.predictor()


# --- tasks (run on the workers) --------------------------------------------------------------------
def _check_readable(folder: Path, worker=None) -> None:
    try:
        with os.scandir(folder):
            pass
    except OSError as exc:
        if worker is None:
            try:
                from distributed import get_worker

                worker = get_worker()
            except ValueError:  # not inside a task
                pass
        who = f"worker {worker.address}" if worker is not None else "this machine"
        raise ClusterError(f"{who} cannot read {folder} ({exc.strerror or type(exc).__name__}): every worker must "
                           f"see the images at the same paths as the machine that started the run (a shared "
                           f"file system)") from None


def plan_task(plugin_name: str, folder: Path, files: list[Path], todo: list[Path], root: Path, sequence_gap: float,
              regions=None):
    """Headers and background sample of a whole folder, for the slice tasks that share it.

    The sampled frames still to do travel with the plan (decoded, about 0.6 MB each at
    224 px), so no slice decodes them again."""
    _check_readable(folder)
    predictor = _worker_predictor(plugin_name)
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="wildid-decode") as pool:
        return plan_folder(folder, files, root, predictor, pool, sequence_gap, set(todo), regions)


def rows_task(plugin_name: str, folder: Path, files: list[Path], todo: list[Path], root: Path,
              options: dict[str, Any], plan=None, regions=None) -> list[dict[str, Any]]:
    """The rows of ``todo`` (a folder, or a batch-aligned slice of it given its folder's plan).

    A plan may be shared by several slice tasks on one worker: each takes (pops) only its own
    predecoded frames from it."""
    _check_readable(folder)
    predictor = _worker_predictor(plugin_name)
    delay = float(os.environ.get(DELAY_ENV, "0") or 0)  # test hook: slow tasks, to kill a worker mid-task
    rows: list[dict[str, Any]] = []
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="wildid-decode") as pool:
        for batch_rows in folder_rows(folder, files, todo, root, predictor, pool, workers=1, plan=plan,
                                      regions=regions, **options):
            rows.extend(batch_rows)
            if delay:
                time.sleep(delay)
    return rows


def _can_read(folder: str, dask_worker=None) -> str:
    """'' when this worker can list ``folder``, else why not (``client.run`` on every worker
    up front; it passes the worker as ``dask_worker``)."""
    try:
        _check_readable(Path(folder), dask_worker)
    except ClusterError as exc:
        return str(exc)
    return ""


# --- the run (client side) -------------------------------------------------------------------------
@dataclass(frozen=True)
class ClusterProgress(BatchProgress):
    dashboard: str = ""  # the Dask dashboard of the cluster, when it has one
    workers: int = 0  # worker processes at the start


def slice_size(todo: int, batch_size: int, threads: int) -> int:
    """Files per task: about TASKS_PER_THREAD tasks per Dask thread (load balance, steady
    progress), at most MAX_SLICE, always whole batches (slices see the local run's batches)."""
    per_task = math.ceil(todo / (TASKS_PER_THREAD * max(1, threads)))
    batches = min(max(1, math.ceil(per_task / batch_size)), max(1, MAX_SLICE // batch_size))
    return batches * batch_size


SCHEDULERS_ENV = "WILDID_DASK_SCHEDULERS"


def configured_schedulers() -> list[str]:
    """The Dask clusters the app may use, as set by the operator in ``WILDID_DASK_SCHEDULERS``
    (comma-separated scheduler addresses or ``local[:N]``); empty = the app runs in-process only.

    The app never connects to an address a visitor typed: a Dask client unpickles what the
    scheduler sends, so a visitor's own scheduler could run code on the server."""
    return [part.strip() for part in os.environ.get(SCHEDULERS_ENV, "").split(",") if part.strip()]


def iter_batch_dask(
    target,
    root: Path | str,
    predictor,
    out: Path | str,
    *,
    recursive: bool = defaults.RECURSIVE,
    resume: bool = False,
    overwrite: bool = False,
    threshold: float | None = None,
    batch_size: int = defaults.BATCH_SIZE,
    sequence_gap: float = defaults.SEQUENCE_GAP,
    top_k: int = defaults.TOP_K,
    exclude: Iterable[Path | str] = (),
    trust: bool = False,
    files_per_task: int | None = None,
    connect_timeout: float = CONNECT_TIMEOUT,
    dashboard: bool = True,
    regions=None,
) -> Iterator[ClusterProgress]:
    """Like :func:`wildid.batch.iter_batch`, with the work done by a Dask cluster; yields after
    each completed task.  ``target``: a scheduler address, ``local[:N]`` or a Client.

    The first progress (no rows) comes once the cluster answers, with the totals and the
    dashboard link.  ``files_per_task`` (rounded up to whole batches) overrides the slice size.
    ``regions`` (MegaDetector boxes, background crops) is sent to each worker once.
    """
    if batch_size < 1:
        raise DataError("--batch-size must be at least 1")
    # As in-process: everything that can refuse the run is checked before the cluster is asked
    # and before anything is written; the results file is started with the first rows.
    run = prepare_run(root, out, predictor.card, recursive=recursive, resume=resume, overwrite=overwrite,
                      threshold=threshold, exclude=exclude)
    root, out, threshold, exclude, done, fresh = run.root, run.out, run.threshold, run.exclude, run.done, run.fresh
    total, already = run.total, run.already
    connection = None
    if isinstance(target, str):
        connection = Connection(target, connect_timeout, dashboard)
        client = connection.client
    else:
        client = target
    futures: list = []
    handle = None
    try:
        _preflight(client, root)
        shipment = ModelShipment.from_predictor(predictor, trust)
        client.register_plugin(shipment, name=shipment.name)
        threads = sum(client.nthreads().values())
        step = slice_size(total - already, batch_size, threads)
        if files_per_task:
            step = math.ceil(files_per_task / batch_size) * batch_size
        options = {"threshold": threshold, "top_k": top_k, "batch_size": batch_size, "sequence_gap": sequence_gap}
        # A MegaDetector file can be large: each worker fetches it once, not once per task.
        shared_regions = client.scatter(regions, hash=False) if regions is not None else None
        link = _dashboard_link(client)
        workers = len(client.nthreads())

        def submissions() -> Iterator:
            for folder, files in iter_folders(root, recursive, exclude):
                todo = [f for f in files if str(f) not in done]
                if not todo:
                    continue
                if len(todo) <= step:
                    yield client.submit(rows_task, shipment.name, folder, files, todo, root, options, None,
                                        shared_regions, key=_key("wildid-rows"))
                    continue
                plan = client.submit(plan_task, shipment.name, folder, files, todo, root, sequence_gap,
                                     shared_regions, key=_key("wildid-plan"))
                for start in range(0, len(todo), step):
                    yield client.submit(rows_task, shipment.name, folder, [], todo[start:start + step], root, options,
                                        plan, shared_regions, key=_key("wildid-rows"))

        from distributed import as_completed

        synced = 0
        delay = float(os.environ.get(DELAY_ENV, "0") or 0)
        state = {"done": already, "processed": 0}
        started = time.perf_counter()
        yield ClusterProgress(already, total, 0, 0.0, [], dashboard=link, workers=workers)
        source = submissions()
        running = as_completed()
        # Enough tasks queued to keep every thread busy, few enough that the client holds
        # bounded state on millions of files; refreshed as workers join or leave.
        limit = max(8, 2 * threads)

        def top_up() -> None:
            while running.count() < limit:
                future = next(source, None)
                if future is None:
                    return
                futures.append(future)
                running.add(future)

        top_up()
        checked = time.monotonic()
        for future in running:
            rows = [row for row in _result(future) if row["path"] not in done]
            futures.remove(future)
            if rows:
                if delay:  # test hook, as in-process: a pause per batch written, to interrupt a run mid-way
                    time.sleep(delay * math.ceil(len(rows) / batch_size))
                if handle is None:  # the first rows are ready: only now is the file started
                    handle = open_results(out, fresh)
                    synced = os.fstat(handle.fileno()).st_size
                synced = write_rows(handle, out, rows, synced, remove=fresh and synced <= len(HEADER_LINE))
                done.update(row["path"] for row in rows)
                state["done"] += len(rows)
                state["processed"] += len(rows)
            if time.monotonic() - checked > 5:
                limit = max(8, 2 * sum(client.nthreads().values()))
                checked = time.monotonic()
            top_up()
            yield ClusterProgress(state["done"], total, state["processed"], time.perf_counter() - started, rows,
                                  dashboard=link, workers=workers)
    finally:
        if futures:
            try:
                client.cancel(futures)
            except Exception:  # noqa: BLE001 - the scheduler may be gone already; nothing left to cancel
                pass
        if handle is not None:
            handle.close()
        if connection is not None:
            connection.close()


def _key(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex}"


def _dashboard_link(client) -> str:
    try:
        return client.dashboard_link or ""
    except Exception:  # noqa: BLE001 - a scheduler without a dashboard (no bokeh)
        return ""


def _preflight(client, root: Path) -> None:
    """Every worker present can import wildid and list the folder, or one line says which cannot."""
    try:
        answers = client.run(_can_read, str(root))
    except (ImportError, AttributeError) as exc:
        raise ClusterError(f"the Dask workers cannot run wildid ({type(exc).__name__}: {exc}); install the same "
                           f"wildid version on every worker") from None
    problems = [answer for answer in answers.values() if answer]
    if problems:
        raise ClusterError(problems[0] + (f" (and {len(problems) - 1} more workers)" if len(problems) > 1 else ""))


def _result(future) -> list[dict[str, Any]]:
    """A task's rows, or one line saying why the run cannot go on."""
    from distributed import KilledWorker

    try:
        return future.result()
    except WildidError:
        raise
    except KilledWorker as exc:
        raise ClusterError(f"a task ended its worker process several times in a row ({exc}); the rows so far are "
                           f"kept: rerun with --resume, and check the workers' memory") from None
    except (ImportError, AttributeError) as exc:
        raise ClusterError(f"the Dask workers cannot run wildid ({type(exc).__name__}: {exc}); install the same "
                           f"wildid version on every worker") from None
    except (OSError, TimeoutError) as exc:
        raise ClusterError(f"lost the Dask cluster ({type(exc).__name__}: {exc}); the rows so far are kept: rerun "
                           f"with --resume") from None
