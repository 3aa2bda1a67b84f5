"""Saved weights, `segbench measure`, the batch sweep, training throughput and the timing
columns, end to end on the phantom data; every bad input in one line with exit 2."""

import csv
import functools
import json
import shutil

import pytest
import torch

from segbench import cli, results, runner
from segbench.config import PROFILES, Mode, UsageError
from segbench.data.base import Split
from segbench.measure.context import MeasureContext, MeasureInputs
from segbench.measure.sweep import batch_sweep

SMOKE = ["run", "--dataset", "phantom", "--profile", "smoke", "--device", "cpu"]


def rows(folder):
    with open(folder / "results.csv") as f:
        return list(csv.DictReader(f))


def table(folder, name):
    with open(folder / f"{name}.csv") as f:
        return list(csv.DictReader(f))


def error_line(capsys):
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("segbench: error: "), err
    return err[0]


@pytest.fixture(scope="module")
def swept_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    assert cli.main([*SMOKE, "--arch", "fcn", "--batch-sweep", "1,2", "--out", str(out)]) == 0
    return out


@pytest.fixture
def run_copy(swept_run, tmp_path):
    return shutil.copytree(swept_run, tmp_path / "copy")


@pytest.fixture
def no_training(monkeypatch):
    monkeypatch.setattr(runner, "train_unit", lambda *a: pytest.fail("trained"))
    monkeypatch.setattr(runner, "fit", lambda *a, **k: pytest.fail("trained"))


def test_a_run_keeps_weights_sweep_timing_and_training_speed(swept_run):
    (row,) = rows(swept_run)
    assert row["status"] == "ok"
    assert row["weights_file"].startswith("weights/fcn-small_seed0_fold0_")
    assert (swept_run / row["weights_file"]).is_file()
    for column in ("train_img_s", "train_step_ms", "latency_spread_pct",
                   "throughput_spread_pct", "cpu_wait_pct", "load_1m_before", "load_1m_after"):
        assert float(row[column]) >= 0, column
    assert row["timing_unstable"] in ("True", "False") and row["timing_cores"]
    assert (row["timing_unstable"] == "True") == bool(row["timing_reason"])
    assert float(row["train_img_s"]) == pytest.approx(8 / (float(row["train_step_ms"]) / 1e3))
    sweep = table(swept_run, "sweep")
    assert [(s["batch"], s["status"]) for s in sweep] == [("1", "ok"), ("2", "ok")]
    assert all(float(s["throughput_img_s"]) > 0 for s in sweep)
    phases = [(t["phase"], t["batch"]) for t in table(swept_run, "timing")]
    assert phases == [("latency", "1"), ("throughput", "2"), ("train", "8"), ("sweep", "1"),
                      ("sweep", "2")]
    assert (swept_run / "throughput_vs_batch.png").stat().st_size > 1000
    method = json.loads((swept_run / "run.json").read_text())["method"]["timing"]
    assert method["rounds"] == 5 and "pinned" in method["text"]
    assert "5 rounds of 3 timed calls" in (swept_run / "results.md").read_text()


def test_measure_adds_rows_of_other_modes_without_training(run_copy, no_training, capsys):
    (trained,) = rows(run_copy)
    assert cli.main(["measure", str(run_copy), "--dtype", "bf16", "--threads", "1"]) == 0
    assert capsys.readouterr().out.startswith(
        f"segbench: measuring 1 saved training(s) of {run_copy} again, no training: 1 row(s)")
    old, new = rows(run_copy)
    assert old == trained
    assert (new["mode"], new["threads"], new["status"]) == ("eager-bf16", "1", "ok")
    for column in ("params_m", "gflops", "train_time_s", "best_epoch", "weights_file"):
        assert new[column] == trained[column], column
    assert len(table(run_copy, "history")) == 2  # both rows carry the training's curve
    starts = json.loads((run_copy / "run.json").read_text())["starts"]
    assert starts[-1]["measured_from"] == str(run_copy)
    assert "sweep" not in {name for name in json.loads(
        (run_copy / "rows.jsonl").read_text().splitlines()[-1])["tables"]}


def test_measuring_the_same_mode_again_re_times_the_row(run_copy, no_training):
    assert cli.main(["measure", str(run_copy), "--arch", "FCN"]) == 0
    (row,) = rows(run_copy)
    assert row["run_start"] == "2"
    assert len((run_copy / "rows.jsonl").read_text().splitlines()) == 2  # the journal keeps both
    assert not (run_copy / "sweep.csv").exists()  # the re-timed row was measured without one


def test_a_mode_the_model_cannot_take_is_a_row_with_its_reason(run_copy, monkeypatch):
    real = runner.measure_row

    @functools.wraps(real)
    def refuses_channels_last(model, inputs, ctx, torch_labels):
        if ctx.mode.channels_last:
            raise RuntimeError("channels-last is not for this model")
        return real(model, inputs, ctx, torch_labels)

    monkeypatch.setattr(runner, "measure_row", refuses_channels_last)
    assert cli.main(["measure", str(run_copy), "--channels-last"]) == 0
    failed = {r["mode"]: r for r in rows(run_copy)}["eager-fp32-cl"]
    assert failed["status"] == "error"
    assert failed["reason"] == "RuntimeError: channels-last is not for this model"


def test_measure_on_a_folder_that_kept_no_weights(tmp_path, capsys):
    out = tmp_path / "o"
    assert cli.main([*SMOKE, "--arch", "fcn", "--no-save-weights", "--out", str(out)]) == 0
    assert not (out / "weights").exists() and "weights_file" not in rows(out)[0]
    capsys.readouterr()
    before = (out / "rows.jsonl").read_bytes()
    assert cli.main(["measure", str(out)]) == 2
    assert f"{out} holds no saved weights (weights/*.pt)" in error_line(capsys)
    assert (out / "rows.jsonl").read_bytes() == before


def rewrite_weights(folder, change):
    (path,) = (folder / "weights").glob("*.pt")
    payload = torch.load(path, weights_only=True)
    change(payload)
    torch.save(payload, path)


def test_weights_of_another_study_are_refused(run_copy, capsys):
    rewrite_weights(run_copy, lambda p: p["study"]["profile"].update(epochs=7))
    assert cli.main(["measure", str(run_copy)]) == 2
    assert "holds weights of another config: profile (epochs 7 in the weights, 1 in run.json)" \
        in error_line(capsys)


def test_weights_that_do_not_fit_their_model_are_refused(run_copy, capsys):
    rewrite_weights(run_copy, lambda p: p["model"].update(num_classes=5))
    assert cli.main(["measure", str(run_copy)]) == 2
    line = error_line(capsys)
    assert "holds weights of another config: they do not fit fcn-small with 5 classes" in line


def test_weights_for_other_data_are_refused(run_copy):
    from segbench.weights import check_data, load_saved

    (saved,) = load_saved(run_copy, results.read_manifest(run_copy)["study"])
    classes = saved.model["num_classes"]
    with pytest.raises(UsageError, match=rf"holds weights of another config: {classes} classes "
                       rf"and 1 channel\(s\), but phantom gives {classes + 1} and 1 now"):
        check_data([saved], classes + 1, 1, "phantom")
    check_data([saved], classes, 1, "phantom")


@pytest.mark.parametrize("args, expected", [
    (["--arch", "unet"], "has no saved weights of unet (it has: fcn-small)"),
    (["--dtype", "fp16"], "--dtype fp16 needs --device cuda (on cpu: fp32 or bf16)"),
    (["--cuda-graphs"], "--cuda-graphs needs --device cuda"),
    (["--batch-sweep", "2,1"], "--batch-sweep must be increasing positive integers"),
    (["--compile", "fast"], "--compile takes none, default, max-autotune"),
])
def test_bad_measure_arguments(args, expected, run_copy, capsys):
    before = (run_copy / "rows.jsonl").read_bytes()
    assert cli.main(["measure", str(run_copy), *args]) == 2
    assert expected in error_line(capsys)
    assert (run_copy / "rows.jsonl").read_bytes() == before


def test_measure_needs_a_run_folder(tmp_path, capsys):
    assert cli.main(["measure", str(tmp_path)]) == 2
    assert "is not a segbench run folder (no run.json)" in error_line(capsys)


def test_another_device_writes_another_folder(run_copy, capsys, monkeypatch):
    monkeypatch.setattr(cli, "resolve_device", lambda requested: "cuda")
    assert cli.main(["measure", str(run_copy), "--device", "cuda"]) == 2
    assert "holds cpu rows; measuring on cuda writes another run folder: add --out PATH" in \
        error_line(capsys)


@pytest.mark.parametrize("args, expected", [
    (["--dtype", "fp16"], "--dtype fp16 needs --device cuda"),
    (["--cuda-graphs"], "--cuda-graphs needs --device cuda"),
    (["--dtype", "fp64"], "--dtype takes auto, fp32, bf16, fp16"),
    (["--batch-sweep", "1,4,2"], "--batch-sweep must be increasing positive integers such as "
     "1,2,4,8; got 1,4,2"),
    (["--batch-sweep", "0,1"], "--batch-sweep must be increasing positive integers"),
    (["--batch-sweep", "1,1"], "--batch-sweep must be increasing positive integers"),
    (["--batch-sweep", "1,x"], "--batch-sweep must be increasing positive integers such as "
     "1,2,4,8; got '1,x'"),
    (["--compile", "none,turbo"], "--compile takes none, default, max-autotune"),
])
def test_bad_run_arguments(args, expected, capsys, tmp_path):
    out = tmp_path / "o"
    assert cli.main([*SMOKE, "--arch", "fcn", *args, "--out", str(out)]) == 2
    assert expected in error_line(capsys)
    assert not out.exists()


class OutOfMemoryFrom(torch.nn.Module):
    def __init__(self, batch):
        super().__init__()
        self.batch, self.conv = batch, torch.nn.Conv2d(1, 2, 1)

    def forward(self, x):
        if x.shape[0] >= self.batch:
            raise MemoryError("Unable to allocate 9 GiB for an array")
        return self.conv(x)


def sweep_context(batches):
    empty = Split(torch.zeros(0, 1, 8, 8), torch.zeros(0, 8, 8, dtype=torch.long))
    inputs = MeasureInputs((1, 8, 8), empty, empty.images, empty.masks, 2)
    return inputs, MeasureContext.build("cpu", Mode(), PROFILES["smoke"], batch_sweep=batches)


def test_the_sweep_stops_at_the_first_batch_that_does_not_fit():
    inputs, ctx = sweep_context((1, 2, 4, 8))
    measured = batch_sweep(OutOfMemoryFrom(4), inputs, ctx)
    assert [(line["batch"], line["status"]) for line in measured["sweep"]] == [
        (1, "ok"), (2, "ok"), (4, "oom")]
    assert "MemoryError: Unable to allocate" in measured["sweep"][-1]["reason"]
    assert [line["batch"] for line in measured["timing"]] == [1, 2]


def test_a_batch_expected_not_to_fit_is_not_tried(monkeypatch):
    from segbench.measure import sweep

    inputs, ctx = sweep_context((1, 2, 1024))
    monkeypatch.setattr(sweep, "peak_growth_mb", lambda fn, device: (fn(), 64.0)[1])
    monkeypatch.setattr(sweep, "available_device_bytes",
                        lambda device: (10 * 2**30, "the test"))
    measured = batch_sweep(OutOfMemoryFrom(10**6), inputs, ctx)
    last = measured["sweep"][-1]
    assert (last["batch"], last["status"]) == (1024, "oom")
    assert last["reason"] == "about 32768 MB needed, 10240 MB available (the test); not tried"
    assert batch_sweep(OutOfMemoryFrom(1), *sweep_context(())) == {}


def test_results_md_marks_rows_whose_timing_is_unstable():
    base = {"arch": "unet", "variant": "unet-small", "kernels": "torch", "mode": "eager-fp32",
            "seed": 0, "status": "ok", "latency_ms": 7.1, "throughput_img_s": 400.0,
            "train_img_s": 50.0}
    flagged = {**base, "variant": "segformer-b0", "timing_unstable": True,
               "timing_reason": "latency: threads waited for a CPU 84% of their time"}
    marked, lines = results.mark_unstable_timing([{**base, "timing_unstable": False}, flagged])
    assert marked[0]["latency_ms"] == 7.1
    assert (marked[1]["latency_ms"], marked[1]["throughput_img_s"]) == ("7.1 †", "400 †")
    assert lines == ["† timing unstable (re-time with `segbench measure`):",
                     "- segformer-b0 (torch, eager-fp32, seed 0): latency: threads waited for "
                     "a CPU 84% of their time", ""]
    table_text = results.markdown_table(marked)
    assert "| 7.1 † |" in table_text and "| 7.1 |" in table_text
