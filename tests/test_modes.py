"""Deployment modes: the mode axis and its checks, channels-last, torch.compile (through
dynamo's eager backend in the default suite, inductor in the slow one), CUDA graphs on a GPU,
and the training step of a mode."""

import csv

import pytest
import torch

from segbench import cli
from segbench.config import PROFILES, Mode, UsageError
from segbench.data.base import Split
from segbench.measure.context import MeasureContext, MeasureInputs, inference_fn
from segbench.measure.modes import Deployed, _dynamo_settings, deployed, train_step_fn

SMOKE = PROFILES["smoke"]


def conv_model():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Conv2d(1, 8, 3, padding=1), torch.nn.BatchNorm2d(8),
                               torch.nn.ReLU(), torch.nn.Conv2d(8, 3, 1)).eval()


def inputs(size=16, batch=4):
    train = Split(torch.randn(batch, 1, size, size), torch.randint(0, 3, (batch, size, size)))
    return MeasureInputs((1, size, size), train, train.images, train.masks, 3)


def test_every_mode_has_its_own_label():
    labels = {Mode(compile=c, dtype=d, channels_last=cl, cuda_graphs=g).resolved("cuda").label
              for c in ("none", "default", "max-autotune") for d in ("auto", "fp32", "bf16")
              for cl in (False, True) for g in (False, True)}
    assert len(labels) == 3 * 2 * 2 * 2  # auto is bf16 on CUDA: two dtypes
    assert Mode(compile="max-autotune", channels_last=True, cuda_graphs=True,
                dtype="bf16").label == "max-autotune-bf16-cl-graphs"


@pytest.mark.parametrize("mode, message", [
    (Mode(dtype="fp16"), "--dtype fp16 needs --device cuda (on cpu: fp32 or bf16)"),
    (Mode(cuda_graphs=True), "--cuda-graphs needs --device cuda"),
])
def test_gpu_only_modes_are_refused_on_a_cpu(mode, message):
    with pytest.raises(UsageError, match=message.replace("(", r"\(").replace(")", r"\)")):
        mode.check_device("cpu")
    mode.check_device("cuda")


def parse(*args):
    argv = ["run", "--dataset", "phantom", "--profile", "smoke", "--device", "cpu", "--arch",
            "unet", *args]
    return cli.run_config(cli.build_parser().parse_args(argv))


def test_several_values_give_one_mode_each_and_the_flags_apply_to_all():
    cfg = parse("--compile", "none,default", "--dtype", "fp32,bf16", "--channels-last")
    assert [m.resolved("cpu").label for m in cfg.modes] == [
        "eager-fp32-cl", "eager-bf16-cl", "default-fp32-cl", "default-bf16-cl"]
    assert [m.label for m in parse("--compile", "default,default").modes] == ["default-auto"]
    assert parse("--batch-sweep", "1, 2,8").batch_sweep == (1, 2, 8)


def test_plain_eager_is_the_model_itself():
    model = conv_model()
    with deployed(model, MeasureContext.build("cpu", Mode(), SMOKE)) as same:
        assert same is model


def test_channels_last_is_a_copy_with_the_same_answer():
    model, x = conv_model(), torch.randn(2, 1, 16, 16)
    ctx = MeasureContext.build("cpu", Mode(channels_last=True), SMOKE)
    with deployed(model, ctx) as cl:
        assert isinstance(cl, Deployed)
        assert cl.eager[0].weight.is_contiguous(memory_format=torch.channels_last)
        out = inference_fn(cl, x, ctx)()
    assert model[0].weight.is_contiguous()  # the trained model is left as it was
    torch.testing.assert_close(out, inference_fn(model, x, ctx)())
    assert set(cl.first_call_s) == {(2, 1, 16, 16)}


def test_compile_is_one_graph_per_shape_and_its_time_is_kept_apart(monkeypatch):
    real = torch.compile
    compiled_as = []

    def eager_backend(model, mode=None, dynamic=None):  # dynamo without inductor: seconds
        compiled_as.append((mode, dynamic))
        return real(model, backend="eager", dynamic=dynamic)

    monkeypatch.setattr(torch, "compile", eager_backend)
    model = conv_model()
    ctx = MeasureContext.build("cpu", Mode(compile="max-autotune"), SMOKE)
    with deployed(model, ctx) as compiled:
        for batch in (1, 2, 1, 2):
            x = torch.randn(batch, 1, 16, 16)
            torch.testing.assert_close(inference_fn(compiled, x, ctx)(),
                                       inference_fn(model, x, ctx)())
        assert compiled_as == [("max-autotune", False)]
        assert set(compiled.first_call_s) == {(1, 1, 16, 16), (2, 1, 16, 16)}
        assert compiled.compile_s == pytest.approx(sum(compiled.first_call_s.values()))
        assert compiled.compile_s > 0


def test_past_the_recompile_limit_compile_fails_instead_of_running_eager():
    settings = _dynamo_settings()
    assert 64 in settings.values()
    assert settings.get("fail_on_recompile_limit_hit", True) is True


def test_a_modes_training_step_trains_a_copy():
    model = conv_model()
    before = [p.clone() for p in model.parameters()]
    ctx = MeasureContext.build("cpu", Mode(channels_last=True), SMOKE)
    with deployed(model, ctx) as cl:
        step = train_step_fn(cl, inputs(), ctx)
        losses = [step() for _ in range(3)]
    assert all(isinstance(loss, float) for loss in losses) and losses[-1] < losses[0] * 1.5
    for old, new in zip(before, model.parameters(), strict=True):
        assert torch.equal(old, new)


@pytest.mark.gpu
def test_cuda_graphs_replay_the_captured_forward():
    model = conv_model().cuda()
    ctx = MeasureContext.build("cuda", Mode(cuda_graphs=True, dtype="bf16"), SMOKE)
    with deployed(model, ctx) as graphed:
        for _ in range(3):
            x = torch.randn(2, 1, 16, 16, device="cuda")
            torch.testing.assert_close(inference_fn(graphed, x, ctx)().float(),
                                       inference_fn(model, x, ctx)().float())
        assert list(graphed.first_call_s) == [(2, 1, 16, 16)]


def rows(folder):
    with open(folder / "results.csv") as f:
        return list(csv.DictReader(f))


SMOKE_RUN = ["run", "--dataset", "phantom", "--profile", "smoke", "--device", "cpu"]


@pytest.mark.slow
def test_compiled_channels_last_rows_then_eager_rows_from_the_same_weights(tmp_path):
    out = tmp_path / "o"
    assert cli.main([*SMOKE_RUN, "--arch", "unet", "--compile", "default", "--channels-last",
                     "--out", str(out)]) == 0
    (compiled,) = rows(out)
    assert compiled["status"] == "ok", compiled["reason"]
    assert compiled["mode"] == "default-fp32-cl" and float(compiled["compile_s"]) > 0
    assert cli.main(["measure", str(out)]) == 0
    eager = next(r for r in rows(out) if r["mode"] == "eager-fp32")
    assert eager["compile_s"] == "" and eager["weights_file"] == compiled["weights_file"]
    assert abs(float(eager["mdice"]) - float(compiled["mdice"])) < 0.01


@pytest.mark.slow
def test_triton_kernels_compile_as_custom_ops(tmp_path, monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    out = tmp_path / "o"
    assert cli.main([*SMOKE_RUN, "--arch", "segnet", "--kernels", "triton", "--compile",
                     "default", "--image-size", "16", "--out", str(out)]) == 0
    (row,) = rows(out)
    assert row["status"] == "ok", row["reason"]
    assert row["kernels"] == "triton" and float(row["compile_s"]) > 0
