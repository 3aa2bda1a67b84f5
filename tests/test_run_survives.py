"""A run folder survives kills, signals and a second run: each case is reproduced with a real
`segbench run` process (on the phantom data, smoke profile), killed at a chosen moment."""

import csv
import json
import os
import signal
import subprocess
import sys
import time

import pytest
from machine_columns import is_machine_column

from segbench import cli, runner

SMOKE = ["run", "--dataset", "phantom", "--profile", "smoke", "--device", "cpu"]

# Runs the CLI with SEGBENCH_TEST_KILL=NAME:N: SIGKILL itself right after the N-th os.replace
# onto a file called NAME, or halfway through the N-th os.write into it.
HOOKED_CLI = """
import os, signal, sys
name, _, count = os.environ.get("SEGBENCH_TEST_KILL", ":0").rpartition(":")
seen = [0]
def due(path):
    if name and os.path.basename(str(path)) == name:
        seen[0] += 1
        return seen[0] == int(count)
    return False
real_replace, real_write = os.replace, os.write
def replace(src, dst, *args, **kwargs):
    real_replace(src, dst, *args, **kwargs)
    if due(dst):
        os.kill(os.getpid(), signal.SIGKILL)
def write(fd, data):
    try:
        path = os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        path = ""
    if due(path):
        real_write(fd, bytes(data)[: len(data) // 2])
        os.kill(os.getpid(), signal.SIGKILL)
    return real_write(fd, data)
os.replace, os.write = replace, write
if os.environ.get("SEGBENCH_TEST_SLOW_FIT"):  # hold the run (and its lock) in training
    import time
    import segbench.runner
    segbench.runner.fit = lambda *a, **k: time.sleep(600)
if os.environ.get("SEGBENCH_TEST_TERM_AT_FIT"):  # SIGTERM itself in the N-th training
    import segbench.runner
    real_fit, calls = segbench.runner.fit, [0]
    def fit(*args, **kwargs):
        calls[0] += 1
        if calls[0] == int(os.environ["SEGBENCH_TEST_TERM_AT_FIT"]):
            os.kill(os.getpid(), signal.SIGTERM)
        return real_fit(*args, **kwargs)
    segbench.runner.fit = fit
from segbench.cli import main
sys.exit(main(sys.argv[1:]))
"""


def segbench(*args, env=None, **kwargs):
    return subprocess.run([sys.executable, "-c", HOOKED_CLI, *args], capture_output=True,
                          text=True, timeout=600, env={**os.environ, **(env or {})}, **kwargs)


def start_segbench(*args, env=None):
    return subprocess.Popen([sys.executable, "-c", HOOKED_CLI, *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env={**os.environ, **(env or {})})


def table(path):
    with open(path) as f:
        return [{k: v for k, v in row.items() if not is_machine_column(k)}
                for row in csv.DictReader(f)]


def folder_content(folder):
    """What must be equal between two runs of one command: the files, and every figure that
    does not measure the machine."""
    names = sorted(p.name for p in folder.iterdir())
    rows = table(folder / "results.csv")
    as_json = [{k: v for k, v in r.items() if not is_machine_column(k)}
               for r in json.loads((folder / "results.json").read_text())["rows"]]
    markdown_rows = [line for line in (folder / "results.md").read_text().splitlines()
                     if line.startswith("| ") and "---" not in line]
    return names, rows, len(as_json), len(markdown_rows), table(folder / "history.csv")


def test_kills_and_resumes_end_as_a_clean_run(tmp_path):
    argv = [*SMOKE, "--arch", "fcn", "--seeds", "0,1"]
    clean = tmp_path / "clean"
    assert cli.main([*argv, "--out", str(clean)]) == 0
    killed = tmp_path / "killed"
    for kill_at in ("rows.jsonl:2",  # half of the second row's journal line
                    "results.md:1",  # regenerating the files on start
                    "results.csv:2"):  # after the second row's csv, before its md and json
        result = segbench(*argv, "--out", str(killed), env={"SEGBENCH_TEST_KILL": kill_at})
        assert result.returncode == -signal.SIGKILL, (kill_at, result.stderr[-2000:])
    final = segbench(*argv, "--out", str(killed))
    assert final.returncode == 0, final.stderr[-2000:]
    assert final.stdout.startswith(f"segbench: resuming {killed}: 2/2 rows done")
    assert folder_content(killed) == folder_content(clean)
    assert len(table(killed / "results.csv")) == 2


def test_kill_between_csv_and_markdown_recovers_on_the_next_start(tmp_path, monkeypatch, capsys):
    out = tmp_path / "o"
    result = segbench(*SMOKE, "--arch", "fcn", "--out", str(out),
                      env={"SEGBENCH_TEST_KILL": "results.csv:1"})
    assert result.returncode == -signal.SIGKILL
    assert len(table(out / "results.csv")) == 1 and not (out / "results.md").exists()
    monkeypatch.setattr(runner, "train_unit", lambda *a: pytest.fail("retrained"))
    assert cli.main([*SMOKE, "--arch", "fcn", "--out", str(out)]) == 0
    assert "1/1 rows done" in capsys.readouterr().out
    assert len(json.loads((out / "results.json").read_text())["rows"]) == 1
    (out / "results.json").write_text("")  # the reproducer: an emptied results.json
    assert cli.main([*SMOKE, "--arch", "fcn", "--out", str(out)]) == 0
    assert json.loads((out / "results.json").read_text())["rows"][0]["variant"] == "fcn-small"


def wait_for_lock(folder, process, timeout=300):
    lock = folder / ".segbench.lock"
    deadline = time.monotonic() + timeout
    while not (lock.is_file() and lock.read_text()):
        assert process.poll() is None, process.communicate()
        assert time.monotonic() < deadline, "the first run never took the lock"
        time.sleep(0.2)
    return json.loads(lock.read_text())


def test_concurrent_runs_into_one_folder_lose_no_rows(tmp_path, capsys):
    out = tmp_path / "o"
    first = start_segbench(*SMOKE, "--arch", "fcn", "--out", str(out),
                           env={"SEGBENCH_TEST_SLOW_FIT": "1"})
    try:
        holder = wait_for_lock(out, first)
        assert cli.main([*SMOKE, "--arch", "unet", "--out", str(out)]) == 2
        err = capsys.readouterr().err
        assert f"in use by another segbench run (pid {first.pid} on {holder['host']}" in err
    finally:
        first.kill()  # SIGKILL: its lock is left behind, stale
        first.communicate()
    assert cli.main([*SMOKE, "--arch", "unet", "--out", str(out)]) == 0
    assert f"taking over the lock of pid {first.pid}" in capsys.readouterr().out
    assert cli.main([*SMOKE, "--arch", "fcn", "--out", str(out)]) == 0
    assert sorted(r["variant"] for r in table(out / "results.csv")) == ["fcn-small", "unet-small"]


def test_sigterm_stops_in_one_line_and_keeps_finished_rows(tmp_path):
    out = tmp_path / "o"
    result = segbench(*SMOKE, "--arch", "fcn", "--seeds", "0,1", "--out", str(out),
                      env={"SEGBENCH_TEST_TERM_AT_FIT": "2"})
    assert result.returncode == 143
    assert result.stderr.strip().splitlines()[-1] == (
        f"segbench: stopped by SIGTERM; finished rows are kept in {out}; run the same command "
        "to resume")
    assert "Traceback" not in result.stderr
    assert [r["seed"] for r in table(out / "results.csv")] == ["0"]


def test_ctrl_c_at_start_is_one_line(tmp_path):
    process = start_segbench(*SMOKE, "--arch", "fcn", "--out", str(tmp_path / "o"))
    time.sleep(1.0)  # inside the imports or the first checks
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=120)
    assert process.returncode == 130, err
    assert "Traceback" not in err and err.strip().splitlines()[-1].startswith(
        "segbench: stopped by SIGINT")
