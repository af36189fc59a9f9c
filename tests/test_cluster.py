"""`wildid batch` on Dask: the same rows as in-process, a killed worker, a stopped run resumed,
a worker that cannot see the images, a scheduler that does not answer."""

from __future__ import annotations

import csv
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from PIL import Image

from tests.imagegen import CLASS_STYLES, class_image, truncated_jpeg, write
from wildid import batch, cluster
from wildid.batch import COLUMNS, folder_rows, iter_folders, plan_folder, run_batch
from wildid.errors import ClusterError
from wildid.registry import load_predictor

distributed = pytest.importorskip("distributed")

PROJECT_ROOT = Path(__file__).resolve().parent.parent
STYLES = list(CLASS_STYLES.values())


def _exif(stamp: str) -> Image.Exif:
    exif = Image.Exif()
    exif[272] = "TrailCam X"
    exif.get_ifd(0x8769)[36867] = stamp
    return exif


def make_cameras(root: Path, per_camera: int = 9, cameras: int = 3) -> list[Path]:
    """Camera folders of bursts with EXIF times (sequences), a nested day folder, a lone frame
    at the top and one truncated JPEG: every kind of row the results table has."""
    files = []
    for cam in range(cameras):
        for i in range(per_camera):
            seed = 100 * cam + i
            img = class_image(STYLES[(i // 3 + cam) % 3], seed, (120, 90))
            stamp = f"2024:03:0{cam + 1} 21:{i // 3 * 7:02d}:{i % 3 * 5:02d}"  # bursts of three, 7 minutes apart
            files.append(write(root / f"cam{cam}" / f"IMG_{i:04d}.jpg", img, exif=_exif(stamp), quality=88))
    files.append(write(root / "cam0" / "day2" / "IMG_0100.jpg", class_image("bright", 7, (120, 90)), quality=88))
    files.append(write(root / "top.jpg", class_image("striped", 8, (120, 90)), quality=88))
    files.append(write(root / "cam1" / "IMG_0099.jpg", truncated_jpeg()))
    return files


def rows_by_path(path: Path) -> list[dict[str, str]]:
    with path.open(newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        assert tuple(reader.fieldnames) == COLUMNS
        return sorted(reader, key=lambda row: row["path"])


def paths_in(path: Path) -> list[str]:
    with path.open(newline="", encoding="utf-8") as handle:
        return [row["path"] for row in csv.DictReader(handle)]


@pytest.fixture(scope="module")
def client():
    """A LocalCluster of 2 worker processes (one thread each), shared by the tests here."""
    from distributed import Client, LocalCluster

    from wildid.cluster import plain_main

    # For the fixture's whole life: a worker the nanny restarts (the kill test) is spawned again,
    # and an earlier AppTest may have left a page script as __main__.
    with plain_main():
        with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as local:
            with Client(local) as connected:
                yield connected


@pytest.mark.timeout(900)  # worker processes start slowly on a shared 2-core machine
def test_local_cluster_rows_equal_in_process_rows(models_root, tmp_path, client):
    root = tmp_path / "frames"
    files = make_cameras(root)
    predictor = load_predictor("tiny")
    local_out, dask_out = tmp_path / "local.csv", tmp_path / "dask.csv"
    local = run_batch(root, predictor, local_out, recursive=True, batch_size=4, sequence_gap=60)
    # Two files per task at batch 4 rounds to one batch per task: the camera folders (9-10
    # files) are cut into slices that share a plan task; the small folders are one task each.
    steps = list(cluster.iter_batch_dask(client, root, predictor, dask_out, recursive=True, batch_size=4,
                                         sequence_gap=60, files_per_task=2))
    assert local.processed == len(files) and steps[-1].done == len(files) == steps[-1].processed
    assert len(steps) > 1 + 5  # progress after every task, not once at the end
    local_rows, dask_rows = rows_by_path(local_out), rows_by_path(dask_out)
    assert len(dask_rows) == len(files) and [r["path"] for r in dask_rows] == sorted(map(str, files))
    for dask_row, local_row in zip(dask_rows, local_rows):  # every column, model_version included
        assert dask_row == local_row, {k: (dask_row[k], local_row[k]) for k in COLUMNS if dask_row[k] != local_row[k]}
    by_rel = {row["relpath"]: row for row in dask_rows}
    assert by_rel["cam1/IMG_0099.jpg"]["status"] == "error" and "truncated" in by_rel["cam1/IMG_0099.jpg"]["error"]
    assert by_rel["cam0/IMG_0000.jpg"]["sequence_id"] == by_rel["cam0/IMG_0002.jpg"]["sequence_id"] != \
        by_rel["cam0/IMG_0003.jpg"]["sequence_id"]
    assert by_rel["cam0/IMG_0000.jpg"]["datetime"] == "2024-03-01T21:00:00"
    assert by_rel["cam2/IMG_0004.jpg"]["empty_score"] != ""  # a background from the whole folder
    assert {row["model"] for row in dask_rows} == {"tiny"}


def test_slices_with_a_shared_plan_give_the_whole_folder_rows(models_root, tmp_path):
    """The slicing rule itself, without Dask: batch-aligned slices + the folder's plan."""
    root = tmp_path / "frames"
    make_cameras(root, per_camera=11, cameras=1)
    predictor = load_predictor("tiny")
    folder, files = next((f, fs) for f, fs in iter_folders(root, recursive=True) if f.name == "cam0")
    options = {"threshold": 0.5, "top_k": 3, "batch_size": 4, "sequence_gap": 60.0}
    with ThreadPoolExecutor(2) as pool:
        whole = [row for rows in folder_rows(folder, files, files, root, predictor, pool, **options) for row in rows]
        plan = plan_folder(folder, files, root, predictor, pool, 60.0, todo=set(files))  # sampled frames ride along, as in plan_task
        sliced = [row for start in range(0, len(files), 4)
                  for rows in folder_rows(folder, [], files[start:start + 4], root, predictor, pool, plan=plan, **options)
                  for row in rows]
    assert len(whole) == len(files) == 11
    assert sliced == whole
    assert len({row["sequence_id"] for row in whole if row["status"] != "error"}) == 4  # bursts of three


@pytest.mark.timeout(900)  # worker processes start slowly on a shared 2-core machine
def test_killed_worker_mid_run_every_file_exactly_one_row(models_root, tmp_path, monkeypatch):
    from distributed import Client, LocalCluster

    root = tmp_path / "frames"
    files = make_cameras(root, per_camera=8, cameras=3)
    predictor = load_predictor("tiny")
    out = tmp_path / "results.csv"
    monkeypatch.setenv(batch.DELAY_ENV, "0.4")  # workers inherit it: each batch of 2 takes >= 0.4 s
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as local, \
            Client(local) as killable:
        monkeypatch.delenv(batch.DELAY_ENV)
        steps = cluster.iter_batch_dask(killable, root, predictor, out, recursive=True, batch_size=2,
                                        files_per_task=4)
        first = next(steps)
        assert first.total == len(files) and first.workers == 2
        victims: dict[str, int] = {}

        def kill_a_busy_worker() -> None:
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                busy = {w: keys for w, keys in killable.processing().items() if keys}
                if busy:
                    address = sorted(busy)[0]
                    pid = killable.run(os.getpid, workers=[address])[address]
                    os.kill(pid, signal.SIGKILL)
                    victims[address] = pid
                    return
                time.sleep(0.05)

        killer = threading.Thread(target=kill_a_busy_worker)
        killer.start()
        last = first
        for step in steps:
            last = step
        killer.join()
        assert victims, "no worker was busy to be killed"
        assert last.done == len(files)
    written = paths_in(out)
    assert len(written) == len(files) and sorted(written) == sorted(map(str, files))  # none lost, none twice


@pytest.mark.timeout(900)  # worker processes start slowly on a shared 2-core machine
def test_stopped_cluster_run_resumes_without_missing_or_duplicate_rows(models_root, tmp_path, client):
    root = tmp_path / "frames"
    files = make_cameras(root, per_camera=10, cameras=3)
    predictor = load_predictor("tiny")
    out = tmp_path / "results.csv"
    steps = cluster.iter_batch_dask(client, root, predictor, out, recursive=True, batch_size=2, files_per_task=2)
    next(steps)
    for _ in range(3):
        next(steps)
    steps.close()  # the user stopped the run: tasks in flight are cancelled
    kept = paths_in(out)
    assert 3 <= len(kept) < len(files)
    with out.open("a") as handle:  # and a row torn by a crash while writing
        handle.write(str(files[-5]) + ",cam2/IMG_0007.jpg,coy")
    resumed = list(cluster.iter_batch_dask(client, root, predictor, out, recursive=True, resume=True, batch_size=2))
    assert resumed[0].done == len(kept) and resumed[-1].processed == len(files) - len(kept)
    written = paths_in(out)
    assert len(written) == len(files) and sorted(written) == sorted(map(str, files))
    again = list(cluster.iter_batch_dask(client, root, predictor, out, recursive=True, resume=True))
    assert again[-1].processed == 0 and len(paths_in(out)) == len(files)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_scheduler_that_does_not_answer_is_one_line(models_root, tmp_path, capsys):
    from wildid.cli import main

    root = tmp_path / "frames"
    make_cameras(root, per_camera=2, cameras=1)
    address = f"tcp://127.0.0.1:{_free_port()}"
    started = time.monotonic()
    with pytest.raises(ClusterError, match=f"no Dask scheduler answers at {address}"):
        next(cluster.iter_batch_dask(address, root, load_predictor("tiny"), tmp_path / "r.csv", connect_timeout=1))
    assert time.monotonic() - started < 30
    code = main(["batch", str(root), "--model", "tiny", "--out", str(tmp_path / "cli.csv"), "-r",
                 "--dask", "127.0.0.1:1", "--quiet"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith("error: no Dask scheduler answers at tcp://127.0.0.1:1")
    with pytest.raises(ClusterError, match="give a scheduler address"):
        cluster.parse_target("my laptop")
    assert cluster.parse_target("local:3") == cluster.Target(None, 3)


def _can_unshare_mounts() -> bool:
    try:
        return subprocess.run(["unshare", "-m", "true"], capture_output=True, timeout=30).returncode == 0
    except (OSError, subprocess.SubprocessError):
        return False


def test_worker_that_cannot_read_the_images_is_one_line(models_root, tmp_path):
    """A real worker process that does not see the images: a `dask worker` started in its own
    mount namespace, where an empty tmpfs hides the folder (a node without the shared mount)."""
    from distributed import Client, LocalCluster

    if not _can_unshare_mounts():
        pytest.skip("needs a mount namespace (unshare -m) to hide the images from one worker")
    shared = tmp_path / "shared"
    root = shared / "frames"
    make_cameras(root, per_camera=2, cameras=1)
    worker_cmd = [sys.executable, "-m", "distributed.cli.dask_worker", "{address}", "--nthreads", "1", "--no-nanny",
                  "--no-dashboard", "--local-directory", str(tmp_path / "worker"), "--name", "no-shared-mount"]
    with LocalCluster(n_workers=0, processes=True, dashboard_address=None) as local, Client(local) as mixed:
        script = f'mount -t tmpfs tmpfs "{shared}" && exec "$@"'
        worker = subprocess.Popen(
            ["unshare", "-m", "--propagation", "private", "sh", "-c", script, "sh",
             *[part.replace("{address}", local.scheduler_address) for part in worker_cmd]],
            env=dict(os.environ, PYTHONPATH=str(PROJECT_ROOT)), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            mixed.wait_for_workers(1, timeout=120)
            with pytest.raises(ClusterError) as caught:
                next(cluster.iter_batch_dask(mixed, root, load_predictor("tiny"), tmp_path / "r.csv"))
        finally:
            worker.terminate()
            worker.wait(timeout=60)
    message = str(caught.value)
    assert "\n" not in message and message.startswith("worker tcp://")
    assert f"cannot read {root} (No such file or directory)" in message and "same paths" in message
    # A folder that vanished between the scan and its task: the same line, from the task itself.
    with pytest.raises(ClusterError, match="cannot read .*missing .No such file"):
        cluster.rows_task("unused", tmp_path / "missing", [], [], tmp_path, {})


@pytest.mark.timeout(900)  # worker processes start slowly on a shared 2-core machine
def test_cli_dask_local_end_to_end_then_stop_and_resume(models_root, tmp_path):
    """`wildid batch --dask local:2`: the dashboard line and progress, Ctrl-C mid-run, --resume."""
    root = tmp_path / "frames"
    files = make_cameras(root, per_camera=15, cameras=2)
    out = tmp_path / "results.csv"
    # The delay slows each task on the workers and each write on the client, so Ctrl-C lands mid-run
    # even when this test process gets the CPU late (a busy machine once finished all 23 files first).
    env = dict(os.environ, WILDID_MODELS=str(models_root), WILDID_BATCH_DELAY="0.5", PYTHONPATH=str(PROJECT_ROOT))
    cmd = [sys.executable, "-m", "wildid.cli", "batch", str(root), "--model", "tiny", "--out", str(out), "-r",
           "--batch-size", "2", "--dask", "local:2"]
    # A child inherits an ignored SIGINT (something earlier in a long pytest session may ignore it),
    # and Python then never raises KeyboardInterrupt: give the CLI the default a terminal gives.
    proc = subprocess.Popen(cmd, cwd=PROJECT_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.monotonic() + 600  # a loaded 2-core machine takes minutes to start 2 worker processes
    while not out.exists() or out.read_bytes().count(b"\n") < 3:
        assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
        if time.monotonic() > deadline:
            proc.kill()
            pytest.fail("no rows within 10 minutes")
        time.sleep(0.1)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err.decode()[-2000:]
    assert "Dask: 2 worker processes, dashboard http://" in err.decode()
    kept = paths_in(out)
    assert 2 <= len(kept) < len(files) and len(set(kept)) == len(kept)
    resume = [*cmd[:-1], "local:1", "--resume"]  # another cluster size: the same rows, one worker start fewer
    done = subprocess.run(resume, cwd=PROJECT_ROOT, env=dict(env, WILDID_BATCH_DELAY="0"),
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]  # the run completed: its per-file error is a row, not a failure
    assert f"{len(kept)} already done" in done.stdout
    written = paths_in(out)
    assert len(written) == len(files) and sorted(written) == sorted(map(str, files))


def test_batch_page_runs_on_a_dask_scheduler(models_root, tmp_path, monkeypatch, client):
    from streamlit.testing.v1 import AppTest

    allowed = tmp_path / "allowed"
    files = make_cameras(allowed / "site", per_camera=4, cameras=2)
    monkeypatch.setenv("WILDID_ALLOWED_ROOT", str(allowed))
    dead = f"tcp://127.0.0.1:{_free_port()}"
    # The page offers only the operator's clusters (never a typed address): WILDID_DASK_SCHEDULERS.
    monkeypatch.setenv("WILDID_DASK_SCHEDULERS", f"{client.scheduler.address},{dead}")
    at = AppTest.from_file(str(PROJECT_ROOT / "app_pages" / "batch.py"), default_timeout=240)
    at.session_state["model_name"] = "tiny"
    at.run()
    [folder] = [t for t in at.text_input if t.label == "Folder"]
    folder.input("site")
    at.selectbox(key="batch_dask").select(client.scheduler.address)
    at.run()
    at.button[0].click().run()
    assert not at.exception and not at.error
    assert any(t.value.startswith("Dask: 2 worker processes") for t in at.text)
    metrics = {m.label: m.value for m in at.metric if m.label in ("Files", "Errors")}
    assert metrics == {"Files": str(len(files)), "Errors": "1"}
    assert sorted(paths_in(Path(at.session_state["batch_results"]))) == sorted(map(str, files))
    # A listed scheduler where nothing answers: one line on the page, no traceback.
    at.selectbox(key="batch_dask").select(dead).run()
    [c for c in at.checkbox if c.label.startswith("Resume")][0].uncheck()
    at.button[0].click().run()
    assert not at.exception and any("no Dask scheduler answers" in e.value for e in at.error)


@pytest.mark.parametrize("backend", ["torch", "onnx"])
def test_model_shipment_carries_the_scope_statistics(models_root, tmp_path, backend):
    """A worker that cannot see the model folder still gets the scope check (kNN statistics and
    an exclusion bank travel with the weights) and scores like the client."""
    import shutil

    from tests.imagegen import noise_image
    from tests.test_scope import SCOPED, make_excluding_model
    from wildid import scope
    from wildid.registry import clear_cache

    card = make_excluding_model(models_root)
    card = scope.calibrate_model(load_predictor(SCOPED), "knn", [class_image("bright", 41)],
                                 fit_images=[class_image(style, seed) for style in CLASS_STYLES.values()
                                             for seed in range(6)])
    clear_cache()
    client_side = load_predictor(SCOPED, backend=backend)
    images = [class_image("striped", 900), noise_image(901)]
    expected = client_side.predict(images)
    shipment = cluster.ModelShipment.from_predictor(client_side)
    assert {scope.SCOPE_FILE, card.scope_exclusion["file"]} <= set(shipment.files)
    shipment.setup()
    shipment._folder = tmp_path / "worker"
    shutil.rmtree(models_root / SCOPED)  # the worker's machine has no copy of the model folder
    got = shipment.predictor().predict(images)
    assert [p.scope_score for p in got] == pytest.approx([p.scope_score for p in expected], abs=1e-5)
    assert [p.excluded_as for p in got] == [p.excluded_as for p in expected] == ["", "noise"]
