"""The CLI end to end on the phantom data, and every bad input: one line, exit 2, nothing
created or damaged."""

import csv
import json
import os

import pytest
import torch

from segbench import cli, preflight, runner, store
from segbench.errors import TrainingDiverged

SMOKE = ["run", "--dataset", "phantom", "--profile", "smoke", "--device", "cpu"]
FILLED = ["params_m", "gflops", "miou", "mdice", "pixel_accuracy", "latency_ms", "latency_p95_ms",
          "throughput_img_s", "throughput_batch", "peak_mem_mb", "train_peak_mem_mb",
          "train_time_s", "majority_baseline_mdice", "dtype", "mode", "run_start"]


def rows(folder):
    with open(folder / "results.csv") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    assert cli.main([*SMOKE, "--arch", "fcn", "--out", str(out)]) == 0
    return out


def test_run_fills_every_column(finished_run):
    (row,) = rows(finished_run)
    assert row["status"] == "ok" and row["variant"] == "fcn-small"
    assert not [c for c in FILLED if row[c] == ""]
    assert (row["seed"], row["split_seed"], row["fold"], row["folds"]) == ("0", "0", "0", "1")
    assert (row["profile"], row["epochs"], row["threads"], row["mode"]) == \
        ("smoke", "1", "2", "eager-fp32")
    assert 0.0 <= float(row["mdice"]) <= 1.0
    text = (finished_run / "results.md").read_text()
    assert "1 fused multiply-add = 1 FLOP" in text and "CPU threads: 2" in text
    history = (finished_run / "history.csv").read_text().splitlines()
    assert len(history) == 2 and "train_loss" in history[0]
    assert json.loads((finished_run / "results.json").read_text())["rows"][0]["variant"] == \
        "fcn-small"


def test_rerun_resumes_without_retraining(finished_run, monkeypatch, capsys):
    before = (finished_run / "results.csv").read_text()
    monkeypatch.setattr(runner, "train_unit", lambda *a: pytest.fail("retrained"))
    assert cli.main([*SMOKE, "--arch", "fcn", "--out", str(finished_run)]) == 0
    assert capsys.readouterr().out.startswith(f"segbench: resuming {finished_run}: 1/1 rows done")
    assert (finished_run / "results.csv").read_text() == before


def test_report_merges_and_plots(finished_run, tmp_path):
    assert cli.main(["report", str(finished_run), "--out", str(tmp_path)]) == 0
    assert "fcn-small" in (tmp_path / "report.md").read_text()
    assert (tmp_path / "accuracy_vs_cost.png").stat().st_size > 1000
    assert (tmp_path / "accuracy_vs_cost.svg").is_file()


def error_line(capsys, after_progress_bars=False):
    err = capsys.readouterr().err.strip().splitlines()
    if after_progress_bars:  # only bars (tqdm, "...|...|...") before the one error line
        assert all(line.count("|") >= 2 or not line.strip() for line in err[:-1]), err
        err = err[-1:]
    assert len(err) == 1 and err[0].startswith("segbench: error: "), err
    return err[0]


@pytest.mark.parametrize("args, expected", [
    (["--arch", "nonsense"], "unknown architecture 'nonsense'; architectures: fcn, unet, "),
    (["--arch", "unte"], "unknown architecture 'unte'; did you mean unet? architectures: fcn, "),
    (["--arch", "unet", "--dataset", "mnist"], "unknown dataset 'mnist'; valid: brain-tissue"),
    (["--arch", "unet", "--image-size", "8"], "--image-size must be between 16 and 4096"),
    (["--arch", "unet", "--epochs", "0"], "--epochs must be at least 1"),
    (["--arch", ","], "--arch is empty"),
    (["--arch", "unet", "--seeds", ""], "--seeds is empty"),
    (["--arch", "unet", "--seeds", "0,1,0"], "--seeds names 0 more than once"),
    (["--arch", "unet", "--seeds", "0,a"], "--seeds must be integers of 0 or more"),
    (["--arch", "unet", "--seeds", "-1"], "--seeds must be integers of 0 or more"),
    (["--arch", "unet", "--folds", "1"], "--folds must be at least 2"),
    (["--arch", "unet", "--folds", "x"], "argument --folds: invalid int value: 'x'"),
    (["--arch", "unet", "--split-seed", "-2"], "--split-seed must be 0 or more"),
    (["--arch", "unet", "--threads", "0"], "--threads must be at least 1"),
    (["--arch", "unet", "--profile", "gpu"], "--profile gpu trains paper-size models for 40 "
     "epochs, hours on a CPU; use --profile cpu, or add --force"),
    (["--arch", "unet", "--folds", "100"], "phantom: --folds 100 is more than its 72 "),
])
def test_bad_arguments(args, expected, capsys, tmp_path):
    argv = [*SMOKE, *args]
    if "--dataset" in args:  # the case's own dataset wins
        i = argv.index("--dataset")
        del argv[i:i + 2]
    if "--profile" in args:
        i = argv.index("--profile")
        del argv[i:i + 2]
    out = tmp_path / "o"
    assert cli.main([*argv, "--out", str(out)]) == 2
    assert expected in error_line(capsys)
    assert not out.exists()


def test_triton_on_a_cpu_needs_the_interpreter(capsys, tmp_path, monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    assert cli.main([*SMOKE, "--arch", "segnet", "--kernels", "both", "--out",
                     str(tmp_path / "o")]) == 2
    assert "--kernels both needs --device cuda, or TRITON_INTERPRET=1" in error_line(capsys)


def parse(*args):
    return cli.run_config(cli.build_parser().parse_args([*SMOKE, *args]))


def test_arch_names_are_case_insensitive_and_deduplicated():
    assert parse("--arch", "UNet,unet,FCN").archs == ("unet", "fcn")
    assert len(parse("--arch", "all").archs) == 11


def test_default_out_follows_the_settings():
    assert str(parse("--arch", "unet", "--seeds", "0,1").out_dir) == \
        "runs/smoke_cpu_phantom_32px_s0-1"
    assert str(parse("--arch", "fcn", "--image-size", "48", "--epochs", "3",
                     "--split-seed", "5").out_dir) == "runs/smoke_cpu_phantom_48px_3ep_s0_split5"


def test_force_runs_a_gpu_profile_on_a_cpu():
    argv = [a for a in SMOKE if a not in ("--profile", "smoke")]
    args = cli.build_parser().parse_args([*argv, "--arch", "unet", "--profile", "gpu", "--force"])
    assert cli.run_config(args).profile.name == "gpu"


def test_help_lists_every_dataset():
    from segbench.data import DATASETS

    for name in DATASETS:
        assert f"\n  {name}" in cli.DATASETS_HELP, name


def test_importing_the_cli_does_not_import_torch():
    import subprocess
    import sys

    code = "import sys, segbench.cli; print('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True).stdout.strip() == "False"


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a GPU")
def test_cuda_without_gpu(capsys, tmp_path):
    assert cli.main(["run", "--arch", "unet", "--device", "cuda", "--out", str(tmp_path)]) == 2
    assert "no CUDA GPU is visible" in error_line(capsys)


def test_output_folder_is_a_file(capsys, tmp_path):
    target = tmp_path / "file"
    target.write_text("keep me")
    assert cli.main([*SMOKE, "--arch", "unet", "--out", str(target)]) == 2
    assert "is a file" in error_line(capsys)
    assert target.read_text() == "keep me"


@pytest.mark.skipif(os.geteuid() == 0, reason="root can write to read-only folders")
def test_output_folder_not_writable(capsys, tmp_path):
    folder = tmp_path / "ro"
    folder.mkdir(mode=0o500)
    assert cli.main([*SMOKE, "--arch", "unet", "--out", str(folder / "sub")]) == 2
    assert "not writable" in error_line(capsys)


def fail_writes_under(monkeypatch, folder, name=""):
    """os.write raises ENOSPC for files under `folder` (whose name ends with `name`)."""
    real = os.write

    def write(fd, data):
        path = os.readlink(f"/proc/self/fd/{fd}")
        if path.startswith(str(folder)) and path.endswith(name):
            raise OSError(28, "No space left on device")
        return real(fd, data)

    monkeypatch.setattr(os, "write", write)


def test_full_disk_fails_the_writability_probe(capsys, tmp_path, monkeypatch):
    fail_writes_under(monkeypatch, tmp_path)
    assert cli.main([*SMOKE, "--arch", "unet", "--out", str(tmp_path / "o")]) == 2
    assert "not writable (No space left on device)" in error_line(capsys)
    assert list(tmp_path.iterdir()) == []


def test_full_disk_while_writing_keeps_earlier_rows(finished_run, capsys, tmp_path, monkeypatch):
    def files():  # weights/ included
        return {str(p.relative_to(finished_run)): p.read_bytes()
                for p in finished_run.rglob("*") if p.is_file() and p.name != "run.json"}

    before, starts = files(), json.loads((finished_run / "run.json").read_text())["starts"]
    fail_writes_under(monkeypatch, finished_run, "rows.jsonl")
    assert cli.main([*SMOKE, "--arch", "fcn", "--seeds", "1", "--out", str(finished_run)]) == 2
    line = error_line(capsys, after_progress_bars=True)
    assert "rows.jsonl (No space left on device); the rows finished so far are kept" in line
    after = files()
    assert {name: after.get(name) for name in before} == before  # no partial line
    # nothing else but the new training's complete weights, written before its rows; no
    # temporary file
    (new,) = set(after) - set(before)
    assert new.startswith("weights/fcn-small_seed1_") and new.endswith(".pt")
    assert json.loads((finished_run / "run.json").read_text())["starts"][:1] == starts


def test_corrupt_run_json_is_one_line_before_any_data(capsys, tmp_path, monkeypatch):
    monkeypatch.setattr(runner, "load_dataset", lambda *a, **k: pytest.fail("data prepared"))
    out = tmp_path / "o"
    out.mkdir()
    (out / "run.json").write_text('{"format": 2, "starts": [')
    assert cli.main([*SMOKE, "--arch", "fcn", "--out", str(out)]) == 2
    assert "run.json is not valid JSON" in error_line(capsys)


class NeedsAtLeast32(torch.nn.Module):
    def forward(self, x):
        if x.shape[-1] < 32:
            raise RuntimeError("Output size is too small")
        return x


def test_image_size_the_model_cannot_take(capsys, tmp_path, monkeypatch):
    monkeypatch.setattr(preflight, "create_model", lambda *a, **k: NeedsAtLeast32())
    out = tmp_path / "o"
    assert cli.main([*SMOKE, "--arch", "unet", "--image-size", "16", "--out", str(out)]) == 2
    line = error_line(capsys)
    assert "image size 16 is too small for unet-small (Output size is too small)" in line
    assert not out.exists()


def test_dataset_larger_than_memory_is_refused(capsys, tmp_path, monkeypatch):
    monkeypatch.setattr(preflight, "available_host_bytes", lambda: (2**30, "the test"))
    out = tmp_path / "o"
    assert cli.main([*SMOKE, "--arch", "fcn", "--image-size", "2048", "--out", str(out)]) == 2
    assert ("not enough memory: phantom at 2048 px takes about 3.4 GB prepared (72 slices x 1 "
            "channel(s) x 2048² float32 + int64 masks), 1.0 GB available (the test)"
            in error_line(capsys))
    assert not out.exists()


def test_training_larger_than_memory_is_refused(capsys, tmp_path, monkeypatch):
    monkeypatch.setattr(preflight, "available_device_bytes", lambda device: (2**20, "the test"))
    assert cli.main([*SMOKE, "--arch", "fcn", "--out", str(tmp_path / "o")]) == 2
    line = error_line(capsys)
    assert "not enough memory to train at 32 px, batch 8: fcn-small (" in line
    assert "use a smaller --image-size, leave them out of --arch, or --force" in line


def test_other_profile_in_the_same_folder_is_refused(finished_run, capsys):
    before = (finished_run / "results.csv").read_text()
    assert cli.main([*SMOKE, "--arch", "fcn", "--epochs", "2", "--out", str(finished_run)]) == 2
    assert "different profile (epochs 1 there, 2 here)" in error_line(capsys)
    assert (finished_run / "results.csv").read_text() == before


def test_ctrl_c_keeps_finished_rows(tmp_path, monkeypatch, capsys):
    out = tmp_path / "o"
    real, calls = runner.train_unit, []

    def interrupt_second(unit, ctx):
        calls.append(unit.variant)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(unit, ctx)

    monkeypatch.setattr(runner, "train_unit", interrupt_second)
    assert cli.main([*SMOKE, "--arch", "fcn", "--seeds", "0,1", "--out", str(out)]) == 130
    assert "stopped by SIGINT; finished rows are kept" in capsys.readouterr().err
    assert [r["seed"] for r in rows(out)] == ["0"]


def test_failing_architecture_becomes_a_row(tmp_path, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("boom")

    monkeypatch.setattr(runner, "fit", broken)
    out = tmp_path / "o"
    assert cli.main([*SMOKE, "--arch", "fcn", "--out", str(out)]) == 0
    (row,) = rows(out)
    assert row["status"] == "error" and "RuntimeError: boom" in row["reason"]
    assert row["params_m"] != ""  # what was known before training failed is kept


@pytest.mark.parametrize("error, status", [
    (TrainingDiverged(1, 3, "loss"), "diverged"),
    (MemoryError("Unable to allocate 3.2 GiB for an array"), "oom"),
    (RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 10 GB"),
     "oom"),
])
def test_training_failures_get_their_status(error, status, tmp_path, monkeypatch, capsys):
    def fails(*args, **kwargs):
        raise error

    monkeypatch.setattr(runner, "fit", fails)
    out = tmp_path / "o"
    assert cli.main([*SMOKE, "--arch", "fcn", "--out", str(out)]) == 0
    (row,) = rows(out)
    assert row["status"] == status and str(error) in row["reason"]
    capsys.readouterr()
    assert cli.main([*SMOKE, "--arch", "fcn", "--out", str(out)]) == 0
    resumed = capsys.readouterr().out
    assert ("1/1 rows done" in resumed) == (status == "diverged")  # diverged is for good


def test_numpy_allocation_failure_is_out_of_memory():
    import numpy as np

    from segbench.measure.memory import is_out_of_memory

    with pytest.raises(MemoryError) as caught:
        np.empty(2**62, dtype=np.uint8)
    assert is_out_of_memory(caught.value)
    assert not is_out_of_memory(RuntimeError("Output size is too small"))


def test_a_second_run_into_a_locked_folder_is_refused(tmp_path, capsys):
    out = tmp_path / "o"
    study = runner.study_of(parse("--arch", "fcn"))
    with store.open_run_folder(out, study):
        assert cli.main([*SMOKE, "--arch", "fcn", "--out", str(out)]) == 2
    assert f"is in use by another segbench run (pid {os.getpid()} on " in error_line(capsys)


def test_resume_with_other_threads_adds_rows_and_relabels_none(finished_run, capsys):
    before = rows(finished_run)
    assert cli.main([*SMOKE, "--arch", "fcn", "--threads", "1", "--out", str(finished_run)]) == 0
    assert "row(s) of other settings" in capsys.readouterr().out.splitlines()[0]
    after = rows(finished_run)
    assert after[:len(before)] == before
    assert [r["threads"] for r in after[len(before):]] == ["1"]
    starts = json.loads((finished_run / "run.json").read_text())["starts"]
    assert starts[0]["config"]["threads"] == 2 and starts[-1]["config"]["threads"] == 1
