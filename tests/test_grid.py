"""The grid of a run: units and rows from the config, row keys, the measurement context."""

from dataclasses import replace
from pathlib import Path

import pytest
import torch

from segbench.config import PROFILES, Mode, Profile, RunConfig, UsageError
from segbench.grid import base_record, build_grid, resolve_arch_names
from segbench.measure.context import MeasureContext, inference_fn

CFG = RunConfig(archs=("fcn", "unet"), dataset="phantom", profile=PROFILES["smoke"],
                device="cpu", kernels="auto", out_dir=Path("o"))


def test_units_are_seed_major_then_fold_then_architecture():
    units = build_grid(replace(CFG, seeds=(0, 1), folds=3))
    assert [(u.seed, u.fold, u.variant) for u in units[:4]] == [
        (0, 0, "fcn-small"), (0, 0, "unet-small"), (0, 1, "fcn-small"), (0, 1, "unet-small")]
    assert len(units) == 12 and {u.folds for u in units} == {3}
    assert {u.fold for u in units} == {0, 1, 2}


def test_split_seed_is_the_training_seed_unless_given():
    assert [u.split_seed for u in build_grid(replace(CFG, seeds=(3, 4)))] == [3, 3, 4, 4]
    assert {u.split_seed for u in build_grid(replace(CFG, seeds=(3, 4), split_seed=9))} == {9}


def test_both_backends_are_two_rows_of_one_torch_training():
    (unit,) = build_grid(replace(CFG, archs=("segnet",), kernels="both"))
    assert [row.kernels for row in unit.rows] == ["torch", "triton"]
    assert unit.train_kernels == "torch"
    keys = [base_record(CFG, unit, row).key for row in unit.rows]
    assert len(set(keys)) == 2


def test_every_result_changing_setting_changes_the_key():
    (unit,) = build_grid(replace(CFG, archs=("fcn",)))
    base = base_record(CFG, unit, unit.rows[0]).key
    for changed in (replace(CFG, threads=1), replace(CFG, pretrained="w.pt"),
                    replace(CFG, profile=replace(CFG.profile, epochs=2)),
                    replace(CFG, profile=replace(CFG.profile, image_size=48))):
        assert base_record(changed, unit, unit.rows[0]).key != base, changed
    other_seed = replace(unit, seed=1, split_seed=1)
    assert base_record(CFG, other_seed, unit.rows[0]).key != base


def test_arch_names_resolve_case_insensitively_with_a_hint():
    assert resolve_arch_names(("UNet", "SegFormer-B0", "unet")) == ("unet", "segformer-b0")
    with pytest.raises(UsageError, match="did you mean segformer"):
        resolve_arch_names(("segformr",))


def test_profiles_are_built_by_keyword_and_gpu_quick_is_gpu_for_two_epochs():
    with pytest.raises(TypeError):
        Profile("x", True, 32, 1, 8, 2e-3, 1e-4, False, 1, 3, (2,), 2, False, "positional")
    quick, gpu = PROFILES["gpu-quick"], PROFILES["gpu"]
    assert replace(quick, name="gpu", epochs=gpu.epochs, description=gpu.description) == gpu
    assert quick.epochs == 2 and quick.image_size == 256 and not quick.small_models


def test_mode_labels_and_the_one_dtype_default():
    assert Mode().resolved("cpu").label == "eager-fp32"
    assert Mode().resolved("cuda").label == "eager-bf16"
    assert Mode(dtype="fp16").resolved("cpu").label == "eager-fp16"
    assert Mode(compile="default", channels_last=True).resolved("cpu").label == \
        "default-fp32-cl"
    with pytest.raises(UsageError, match="compile mode must be one of none, default, "):
        Mode(compile="fast")


def test_inference_fn_runs_under_the_rows_autocast():
    model = torch.nn.Conv2d(1, 2, 3)
    x = torch.randn(1, 1, 8, 8)
    fp32 = MeasureContext.build("cpu", Mode(), PROFILES["smoke"])
    bf16 = MeasureContext.build("cpu", Mode(dtype="bf16"), PROFILES["smoke"])
    assert fp32.autocast_dtype is None and fp32.dtype_description == "fp32"
    assert inference_fn(model, x, fp32)().dtype == torch.float32
    out = inference_fn(model, x, bf16)()
    assert out.dtype == torch.bfloat16 and not out.requires_grad
