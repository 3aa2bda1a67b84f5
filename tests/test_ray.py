"""`segbench run` on a local Ray (CPU): the rows equal those of the in-process run, a worker
killed mid-run loses no row, Ctrl-C cancels every task; and the in-process path never imports
Ray. Each run is a real process in a session of its own, so that every Ray process it starts
can be found (and is known to be gone afterwards)."""

import csv
import json
import os
import re
import signal
import subprocess
import sys
import time

import pytest
from machine_columns import PLACEMENT_COLUMNS, is_machine_column

from segbench import cli

SMOKE = ["run", "--dataset", "phantom", "--profile", "smoke", "--device", "cpu"]
ARCHS = ["--arch", "fcn,unet,segnet"]
WITHOUT_RAY = """
import sys
sys.modules["ray"] = None  # any `import ray` now fails
import segbench.cli, segbench.runner
sys.exit(segbench.cli.main(sys.argv[1:]))
"""
TRAINING_TASK = "ray::train_on_worker"  # a worker's process title while it trains


def start(tmp_path, name, *args, code=None, env=None):
    """A segbench process, leader of a new session, its output in files."""
    command = [sys.executable, "-c", code] if code else [sys.executable, "-m", "segbench.cli"]
    with open(tmp_path / f"{name}.out", "w") as out, open(tmp_path / f"{name}.err", "w") as err:
        return subprocess.Popen([*command, *args], stdout=out, stderr=err,
                                start_new_session=True, env={**os.environ, **(env or {})})


def stderr_of(tmp_path, name):
    return (tmp_path / f"{name}.err").read_text()


def session_processes(session):
    """pid -> command line of every live process in the session."""
    found = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rpartition(")")[2].split()
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                cmdline = f.read().replace(b"\0", b" ").decode(errors="replace").strip()
        except OSError:
            continue
        if int(fields[3]) == session and fields[0] != "Z":
            found[int(entry)] = cmdline
    return found


def wait_for_task(driver, title, timeout=300):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert driver.poll() is None, "the run ended before any worker ran a task"
        running = [pid for pid, cmdline in session_processes(driver.pid).items()
                   if cmdline.startswith(title)]
        if running:
            return running[0]
        time.sleep(0.2)
    pytest.fail(f"no worker ran {title} within {timeout} s")


def assert_session_ends(session, timeout=60):
    deadline = time.monotonic() + timeout
    while session_processes(session):
        assert time.monotonic() < deadline, f"left running: {session_processes(session)}"
        time.sleep(0.5)


def table(folder):
    with open(folder / "results.csv") as f:
        rows = [{k: v for k, v in row.items()
                 if not is_machine_column(k) and k not in PLACEMENT_COLUMNS}
                for row in csv.DictReader(f)]
    return sorted(rows, key=lambda row: row["variant"])


@pytest.fixture(scope="module")
def in_process(tmp_path_factory):
    """The reference: the same grid in process, with `import ray` made to fail."""
    tmp = tmp_path_factory.mktemp("in_process")
    driver = start(tmp, "run", *SMOKE, *ARCHS, "--out", str(tmp / "out"), code=WITHOUT_RAY)
    assert driver.wait(timeout=900) == 0, stderr_of(tmp, "run")[-3000:]
    return tmp / "out"


def test_without_ray_workers_says_how_to_install_it(tmp_path):
    out = tmp_path / "out"
    driver = start(tmp_path, "run", *SMOKE, "--arch", "fcn", "--workers", "2", "--out", str(out),
                   code=WITHOUT_RAY)
    assert driver.wait(timeout=300) == 2
    assert stderr_of(tmp_path, "run").splitlines() == [
        "segbench: error: --workers needs Ray, which is not installed; install it with: "
        "pip install 'segbench[ray]'"]
    assert not out.exists()


def test_ray_rows_equal_in_process_rows_though_a_worker_is_killed(in_process, tmp_path):
    pytest.importorskip("ray")
    out = tmp_path / "out"
    driver = start(tmp_path, "run", *SMOKE, *ARCHS, "--workers", "2", "--out", str(out))
    try:
        os.kill(wait_for_task(driver, TRAINING_TASK), signal.SIGKILL)
        assert driver.wait(timeout=900) == 0, stderr_of(tmp_path, "run")[-3000:]
    finally:
        driver.kill()
    assert_session_ends(driver.pid)
    assert table(out) == table(in_process)
    journal = [json.loads(line)["row"] for line in (out / "rows.jsonl").read_text().splitlines()]
    assert sorted(row["variant"] for row in journal) == \
        ["fcn-small", "segnet-small", "unet-small"]  # each row once: none lost, none twice
    assert all(row["ray_node"] and row["measured_on"] and row["trained_on"] and
               row["device_name"] for row in journal)
    executor = json.loads((out / "run.json").read_text())["starts"][-1]["executor"]
    assert (executor["name"], executor["workers"], len(executor["nodes"])) == ("ray", 2, 1)


def test_ctrl_c_cancels_the_ray_tasks_and_keeps_the_folder(tmp_path):
    pytest.importorskip("ray")
    out = tmp_path / "out"
    # --workers starts a Ray of its own, even where RAY_ADDRESS names another one
    driver = start(tmp_path, "run", *SMOKE, "--arch", "fcn", "--workers", "1", "--out", str(out),
                   env={"RAY_ADDRESS": "127.0.0.1:1"})
    try:
        wait_for_task(driver, TRAINING_TASK)
        os.killpg(driver.pid, signal.SIGINT)  # what Ctrl-C in a terminal does
        assert driver.wait(timeout=120) == 130
    finally:
        driver.kill()
    assert stderr_of(tmp_path, "run").splitlines()[-1] == (
        f"segbench: stopped by SIGINT; finished rows are kept in {out}; run the same command "
        "to resume")
    assert_session_ends(driver.pid)
    assert not (out / "rows.jsonl").exists()
    assert (out / ".segbench.lock").read_text() == ""  # released, not left by a killed run


def test_a_task_that_keeps_failing_gives_status_and_reason():
    ray = pytest.importorskip("ray")
    from segbench.distributed import MAX_RETRIES, task_failure
    from segbench.errors import TrainingDiverged

    crashed = ray.exceptions.WorkerCrashedError()
    status, reason = task_failure(ray, crashed)
    assert status == "error"
    assert reason.startswith(f"WorkerCrashedError after {MAX_RETRIES} retries: The worker died")
    raised = ray.exceptions.RayTaskError("train_on_worker", "traceback",
                                         TrainingDiverged(3, 7, "loss"))
    assert task_failure(ray, raised) == \
        ("diverged", "TrainingDiverged: non-finite loss at epoch 3, step 7")
    killed = ray.exceptions.OutOfMemoryError("the node ran out of memory")
    assert task_failure(ray, killed)[0] == "oom"


def node(host="n1", **resources):
    return {"Alive": True, "NodeManagerHostname": host, "NodeID": f"id-{host}",
            "Resources": {"CPU": 8.0, "bench": 1.0, **resources}}


@pytest.mark.parametrize("nodes, device, threads, expected", [
    ([node(), node("n2", bench=2.0)], "cpu", 2, "Ray node n2 has bench=2.0; every node needs "
     "exactly 1, so that timings never overlap; start the cluster with ray start --head "
     "--resources='{\"bench\": 1}'"),
    ([{**node(), "Resources": {"CPU": 8.0}}], "cpu", 2, "Ray node n1 has bench=None"),
    ([node()], "cuda", 2, "the Ray cluster has no GPU; use --device cpu"),
    ([node()], "cpu", 16, "no Ray node has the 16 CPUs that --threads asks for"),
])
def test_a_cluster_that_cannot_keep_timings_apart_is_refused(nodes, device, threads, expected):
    from types import SimpleNamespace

    from segbench.config import SMOKE as PROFILE
    from segbench.config import RunConfig, UsageError
    from segbench.distributed import check_cluster

    cfg = RunConfig(archs=("fcn",), dataset="phantom", profile=PROFILE, device=device,
                    kernels="torch", out_dir=".", threads=threads)
    dead = {**node("gone"), "Alive": False, "Resources": {}}
    with pytest.raises(UsageError, match="^" + re.escape(expected)):
        check_cluster(SimpleNamespace(nodes=lambda: [*nodes, dead]), cfg)


@pytest.mark.parametrize("args, expected", [
    (["--workers", "0"], "--workers must be at least 1, got 0"),
    (["--workers", "2", "--ray-address", "auto"],
     "argument --ray-address: not allowed with argument --workers"),
    (["--ray-address", "nowhere"], "--ray-address must be auto or HOST:PORT"),
    (["--ray-address", "127.0.0.1:1"], "no Ray cluster answers at --ray-address 127.0.0.1:1 "
     "(Connection refused); start the cluster with ray start --head"),
])
def test_bad_ray_flags_are_refused_in_one_line_before_anything_is_made(args, expected, tmp_path,
                                                                       capsys):
    pytest.importorskip("ray")
    out = tmp_path / "out"
    assert cli.main([*SMOKE, "--arch", "fcn", *args, "--out", str(out)]) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith("segbench: error: " + expected), line
    assert not out.exists()
