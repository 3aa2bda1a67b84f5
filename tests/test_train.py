"""The training loop: the shared recipe trains exactly as before, family recipes' schedules,
the per-epoch history, the non-finite guard, convergence, the learning-rate sweep."""

import copy
import math
from dataclasses import replace

import pytest
import torch
from torch import nn

from segbench.config import PROFILES, Mode
from segbench.data import Split, load_dataset
from segbench.errors import TrainingDiverged
from segbench.measure.accuracy import accuracy
from segbench.measure.context import MeasureContext
from segbench.models import create_model
from segbench.recipes import FAMILY_RECIPES, Recipe, recipe_for
from segbench.train import (
    converged,
    fit,
    lr_sweep,
    make_optimizer,
    make_schedule,
    make_train_step,
    model_loss,
)

PROFILE = replace(PROFILES["smoke"], epochs=2, batch_size=8)
CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def phantom():
    """The phantom with 16 training images: 2 steps per epoch at batch 8."""
    data = load_dataset("phantom", 32, seed=0)
    train = data.splits["train"]
    data.splits["train"] = Split(train.images[:16], train.masks[:16], train.groups[:16])
    return data


def _model(data, name="fcn-small"):
    torch.manual_seed(0)
    return create_model(name, data.num_classes, data.in_channels)


def _loop_before_recipes(model, data, profile, seed):
    """The training loop as it was before recipes existed (AdamW, CosineAnnealingLR, no
    augmentation), kept here to show that the shared recipe reproduces it bit for bit."""
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=profile.lr,
                                  weight_decay=profile.weight_decay)
    train = data.splits["train"]
    steps = -(-len(train) // profile.batch_size) * profile.epochs
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, steps)
    best_state, best, losses = None, -1.0, []
    for _ in range(profile.epochs):
        order = torch.randperm(len(train), generator=generator)
        for first in range(0, len(train), profile.batch_size):
            index = order[first:first + profile.batch_size]
            model.train()
            optimizer.zero_grad(set_to_none=True)
            loss = model_loss(model, train.images[index], train.masks[index])
            loss.backward()
            optimizer.step()
            losses.append(float(loss.detach()))
            schedule.step()
        val, _ = accuracy(model, data.splits["val"], data.num_classes,
                          MeasureContext.build(CPU, Mode(), profile))
        if val["mdice"] > best:
            best, best_state = val["mdice"], copy.deepcopy(model.state_dict())
    model.load_state_dict(best_state)
    return losses


def test_shared_recipe_trains_bit_identically_to_the_loop_before_recipes(phantom):
    reference = _model(phantom)
    _loop_before_recipes(reference, phantom, PROFILE, seed=3)
    for recipe in (None, recipe_for("unet", "shared", PROFILE)):
        model = _model(phantom)
        fit(model, phantom, PROFILE, CPU, seed=3, recipe=recipe)
        for (name, a), b in zip(model.state_dict().items(), reference.state_dict().values(),
                                strict=True):
            assert torch.equal(a, b), name


def test_history_holds_every_epoch_with_its_lr_and_seconds(phantom):
    recipe = Recipe("t", "sgd", 0.05, 0.0, "poly", "test", poly_power=1.0, warmup_fraction=0.0)
    result = fit(_model(phantom), phantom, PROFILE, CPU, seed=0, recipe=recipe)
    assert [h["epoch"] for h in result.history] == [1, 2]
    assert set(result.history[0]) == {"epoch", "train_loss", "val_mdice", "lr", "seconds"}
    # 2 steps per epoch, 4 in all: the last step of epoch 1 is step 1, of epoch 2 step 3
    assert result.history[0]["lr"] == pytest.approx(0.05 * (1 - 1 / 4))
    assert result.history[1]["lr"] == pytest.approx(0.05 * (1 - 3 / 4))
    assert all(h["seconds"] > 0 for h in result.history)
    assert result.recipe["name"] == "t" and result.recipe["optimizer"] == "sgd"


def test_family_schedule_warms_up_and_decays(phantom):
    model = _model(phantom)
    recipe = FAMILY_RECIPES["pspnet"]
    optimizer = make_optimizer(model, PROFILE, recipe)
    schedule = make_schedule(optimizer, recipe, 100)
    lrs = []
    for _ in range(100):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        schedule.step()
    assert lrs[:5] == pytest.approx([0.01 * (i + 1) / 5 * (1 - i / 100) ** 0.9 for i in range(5)])
    assert lrs[5] == pytest.approx(0.01 * 0.95 ** 0.9) and lrs[-1] < 0.0002
    assert isinstance(optimizer, torch.optim.SGD) and optimizer.defaults["momentum"] == 0.9


def test_transformer_recipes_exempt_norms_biases_and_position_tables(phantom):
    model = create_model("swin-small", phantom.num_classes, 1)
    decayed, exempt = make_optimizer(model, PROFILE, FAMILY_RECIPES["swin"]).param_groups
    names = {id(p): n for n, p in model.named_parameters()}
    assert decayed["weight_decay"] == 0.01 and exempt["weight_decay"] == 0.0
    assert all(p.ndim > 1 for p in decayed["params"])
    exempt_names = [names[id(p)] for p in exempt["params"]]
    assert any(n.endswith("relative_position_bias_table") for n in exempt_names)
    assert any(n.endswith("norm1.weight") for n in exempt_names)


def test_nan_in_the_training_images_stops_at_the_first_step(phantom):
    data = copy.deepcopy(phantom)
    data.splits["train"].images[:] = float("nan")
    with pytest.raises(TrainingDiverged) as error:
        fit(_model(data), data, PROFILE, CPU, seed=0)
    assert (error.value.epoch, error.value.step, error.value.what) == (1, 1, "loss")
    assert str(error.value) == "non-finite loss at epoch 1, step 1"


def test_non_finite_gradient_stops_before_the_weights_change(phantom):
    model = _model(phantom)
    first = next(model.parameters())
    calls = []

    def poison(grad):
        calls.append(1)
        return grad * (math.inf if len(calls) == 3 else 1.0)  # the 3rd step's gradient

    first.register_hook(poison)
    before = {}

    def remember():
        before.update({k: v.clone() for k, v in model.state_dict().items()})

    optimizer = make_optimizer(model, PROFILE)
    step = make_train_step(model, optimizer, CPU, None, check_finite=True)
    train = phantom.splits["train"]
    for _ in range(2):
        step(train.images[:4], train.masks[:4])
    remember()
    with pytest.raises(Exception, match="non-finite gradient norm"):
        step(train.images[:4], train.masks[:4])
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key]), key


def test_a_diverging_learning_rate_is_reported_with_its_epoch_and_step(phantom):
    wild = Recipe("wild", "sgd", 1e12, 0.0, "poly", "test", momentum=0.0, warmup_fraction=0.0)
    with pytest.raises(TrainingDiverged) as error:
        fit(_model(phantom), phantom, PROFILE, CPU, seed=0, recipe=wild)
    assert error.value.what in ("loss", "gradient norm") and error.value.step >= 2


@pytest.mark.parametrize("scores, expected", [
    ([0.5, 0.6, 0.7, 0.72, 0.72, 0.72, 0.72, 0.72], True),  # best at epoch 4 of 8
    ([0.5, 0.6, 0.7, 0.71, 0.72, 0.73, 0.74, 0.75], False),  # best last, +0.04 in last quarter
    ([0.5, 0.6, 0.7, 0.74, 0.74, 0.74, 0.74, 0.743], True),  # best last, but only +0.003
    ([0.5, 0.6, 0.7, 0.74, 0.74, 0.80, 0.79, 0.78], True),  # best at epoch 6 = 0.75 E, not late
    ([0.3], False),  # one epoch: best last, gained 0.3 from nothing
    ([], True),
])
def test_converged(scores, expected):
    assert converged([{"epoch": i + 1, "val_mdice": s} for i, s in enumerate(scores)]) == expected


def test_lr_sweep_keeps_the_best_learning_rate_and_skips_diverged_ones(phantom):
    recipe = Recipe("s", "sgd", 0.05, 0.0, "poly", "test", warmup_fraction=0.0)
    sweep = lr_sweep(lambda: _model(phantom), phantom, PROFILE, CPU, 0, recipe,
                     factors=(1.0, 1e13))
    assert [t["status"] for t in sweep.tried] == ["ok", "diverged"]
    assert sweep.chosen_lr == 0.05 and sweep.result.recipe["lr"] == 0.05
    assert sweep.result.best_val_mdice == sweep.tried[0]["best_val_mdice"]
    assert isinstance(sweep.model, nn.Module)
