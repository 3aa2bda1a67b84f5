"""The CLI end to end on the phantom data, and every bad input: one line, non-zero exit,
earlier results intact."""

import csv
import os

import pytest
import torch

from segbench import cli, runner

SMOKE = ["run", "--dataset", "phantom", "--profile", "smoke", "--device", "cpu"]
FILLED = ["params_m", "gflops", "miou", "mdice", "pixel_accuracy", "latency_ms", "latency_p95_ms",
          "throughput_img_s", "throughput_batch", "peak_mem_mb", "train_peak_mem_mb",
          "train_time_s", "majority_baseline_mdice", "dtype"]


def rows(folder):
    with open(folder / "results.csv") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    assert cli.main([*SMOKE, "--arch", "unet", "--out", str(out)]) == 0
    return out


def test_run_fills_every_column(finished_run):
    (row,) = rows(finished_run)
    assert row["status"] == "ok" and row["variant"] == "unet-small"
    assert not [c for c in FILLED if row[c] == ""]
    assert 0.0 <= float(row["mdice"]) <= 1.0
    assert (finished_run / "run.json").is_file()
    text = (finished_run / "results.md").read_text()
    assert "1 fused multiply-add = 1 FLOP" in text and "CPU threads: 2" in text


def test_rerun_resumes_without_retraining(finished_run, monkeypatch, capsys):
    before = (finished_run / "results.csv").read_text()
    monkeypatch.setattr(runner, "train_variant", lambda *a: pytest.fail("retrained"))
    assert cli.main([*SMOKE, "--arch", "unet", "--out", str(finished_run)]) == 0
    assert (finished_run / "results.csv").read_text() == before


def test_report_merges_and_plots(finished_run, tmp_path):
    assert cli.main(["report", str(finished_run), "--out", str(tmp_path)]) == 0
    assert "unet-small" in (tmp_path / "report.md").read_text()
    assert (tmp_path / "accuracy_vs_latency.png").stat().st_size > 1000
    assert (tmp_path / "accuracy_vs_latency.svg").is_file()


def error_line(capsys):
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("segbench: error: "), err
    return err[0]


@pytest.mark.parametrize("args, expected", [
    (["--arch", "nonsense"], "unknown model 'nonsense'; valid: "),
    (["--arch", "unet", "--dataset", "mnist"], "unknown dataset 'mnist'; valid: brain-tissue"),
    (["--arch", "unet", "--image-size", "8"], "--image-size must be between 16 and 4096"),
    (["--arch", "unet", "--epochs", "0"], "--epochs must be at least 1"),
    (["--arch", ","], "--arch is empty"),
    (["--arch", "segnet", "--kernels", "both"], "--kernels both needs --device cuda"),
])
def test_bad_arguments(args, expected, capsys, tmp_path):
    argv = ["run", "--dataset", "phantom", "--profile", "smoke", "--device", "cpu", *args]
    if "--dataset" in args:  # the case's own dataset wins
        i = argv.index("--dataset")
        del argv[i:i + 2]
    assert cli.main([*argv, "--out", str(tmp_path / "o")]) == 2
    assert expected in error_line(capsys)


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


def test_output_folder_not_writable_even_as_root(capsys, tmp_path, monkeypatch):
    def refuse(self, *a, **k):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(runner.Path, "write_text", refuse)
    assert cli.main([*SMOKE, "--arch", "unet", "--out", str(tmp_path / "o")]) == 2
    assert "not writable (Permission denied)" in error_line(capsys)


class NeedsAtLeast32(torch.nn.Module):
    def forward(self, x):
        if x.shape[-1] < 32:
            raise RuntimeError("Output size is too small")
        return x


def test_image_size_the_model_cannot_take(capsys, tmp_path, monkeypatch):
    monkeypatch.setattr(runner, "create_model", lambda *a, **k: NeedsAtLeast32())
    out = tmp_path / "o"
    assert cli.main([*SMOKE, "--arch", "unet", "--image-size", "16", "--out", str(out)]) == 2
    line = error_line(capsys)
    assert "image size 16 is too small for unet-small (Output size is too small)" in line
    assert not (out / "results.csv").exists()


def test_mismatched_output_folder_is_refused(finished_run, capsys):
    before = (finished_run / "results.csv").read_text()
    argv = ["run", "--dataset", "phantom", "--profile", "smoke", "--device", "cpu", "--seed", "7"]
    assert cli.main([*argv, "--arch", "unet", "--out", str(finished_run)]) == 2
    assert "different seed" in error_line(capsys)
    assert (finished_run / "results.csv").read_text() == before


def test_ctrl_c_keeps_finished_rows(tmp_path, monkeypatch, capsys):
    out = tmp_path / "o"
    real = runner.measure_variant
    calls = []

    def interrupt_second(spec, records, ctx):
        calls.append(spec.name)
        if len(calls) == 2:
            raise KeyboardInterrupt
        yield from real(spec, records, ctx)

    monkeypatch.setattr(runner, "measure_variant", interrupt_second)
    assert cli.main([*SMOKE, "--arch", "unet,unet-small", "--out", str(out)]) == 130
    assert "interrupted; finished rows are kept" in capsys.readouterr().err
    assert [r["variant"] for r in rows(out)] == ["unet-small"]


def test_failing_architecture_becomes_a_row(tmp_path, monkeypatch):
    def broken(spec, ctx):
        raise RuntimeError("boom")

    monkeypatch.setattr(runner, "train_variant", broken)
    out = tmp_path / "o"
    assert cli.main([*SMOKE, "--arch", "unet", "--out", str(out)]) == 0
    (row,) = rows(out)
    assert row["status"] == "error" and "RuntimeError: boom" in row["reason"]


def test_list_given_models_channels_classes_and_size(capsys):
    assert cli.main(["list", "--models", "unet-small", "--in-channels", "3", "--num-classes", "5",
                     "--input-size", "64x96"]) == 0
    out = capsys.readouterr().out
    assert "3 input channel(s), 5 classes" in out
    (row,) = [line for line in out.splitlines() if line.startswith("| unet-small")]
    assert "| 64x96 |" in row


@pytest.mark.parametrize("args, expected", [
    (["--models", "nope"], "unknown model 'nope'; valid: "),
    (["--input-size", "5x"], "--input-size must be H or HxW"),
    (["--input-size", "8"], "--input-size sides must be between 16 and 4096"),
    (["--num-classes", "1"], "--num-classes must be at least 2"),
    (["--in-channels", "0"], "--in-channels must be at least 1"),
])
def test_list_bad_arguments(args, expected, capsys):
    assert cli.main(["list", "--no-flops", *args]) == 2
    assert expected in error_line(capsys)
