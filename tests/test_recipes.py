"""Recipes: one per family with its source, the shared one from the profile, the schedule."""

import math

import pytest

from segbench.config import PROFILES
from segbench.models import ARCHITECTURES
from segbench.recipes import FAMILY_RECIPES, Recipe, recipe_for, shared_recipe

CPU = PROFILES["cpu"]


def test_every_architecture_has_a_stated_family_recipe():
    assert set(FAMILY_RECIPES) == set(ARCHITECTURES)
    for arch in ARCHITECTURES:
        recipe = recipe_for(arch, "family", CPU)
        assert recipe.name == arch and len(recipe.source) > 40
        assert recipe.warmup_fraction > 0  # every family recipe warms up linearly
        assert recipe.to_json()["description"] == recipe.describe()


def test_transformers_use_adamw_with_a_low_lr_and_cnns_sgd():
    for arch in ("segformer", "swin", "vit"):
        recipe = FAMILY_RECIPES[arch]
        assert (recipe.optimizer, recipe.lr, recipe.weight_decay) == ("adamw", 6e-5, 0.01)
        assert not recipe.decay_norm_and_bias
    assert FAMILY_RECIPES["pspnet"].describe() == (
        "SGD lr 0.01 wd 0.0001 momentum 0.9, poly 0.9, 5% linear warm-up")
    unet = FAMILY_RECIPES["unet"]
    assert (unet.nesterov, unet.momentum, unet.grad_clip_norm) == (True, 0.99, 12.0)


def test_shared_recipe_is_the_profiles_adamw_cosine_without_warmup():
    recipe = recipe_for("swin", "shared", CPU)
    assert recipe == shared_recipe(CPU)
    assert (recipe.optimizer, recipe.lr, recipe.weight_decay) == ("adamw", CPU.lr,
                                                                  CPU.weight_decay)
    assert recipe.schedule == "cosine" and recipe.warmup_fraction == 0.0


def test_unknown_recipe_or_family_is_one_clear_error():
    with pytest.raises(ValueError, match="unknown recipe 'paper'; expected one of family, shared"):
        recipe_for("unet", "paper", CPU)
    with pytest.raises(ValueError, match="'resnet' has no family recipe"):
        recipe_for("resnet", "family", CPU)
    with pytest.raises(ValueError, match="optimizer must be one of"):
        Recipe("x", "adam", 1e-3, 0.0, "cosine", "nowhere")


def test_warmup_then_poly_and_cosine_factors():
    poly = Recipe("p", "sgd", 0.1, 0.0, "poly", "test", poly_power=1.0, warmup_fraction=0.1)
    # 100 steps: 10 warm-up steps ramp 1/10 .. 10/10, times (1 - t/100)
    assert poly.warmup_steps(100) == 10
    assert poly.lr_factor(0, 100) == pytest.approx(0.1 * 1.0)
    assert poly.lr_factor(4, 100) == pytest.approx(0.5 * 0.96)
    assert poly.lr_factor(50, 100) == pytest.approx(0.5)
    cosine = Recipe("c", "adamw", 1e-3, 0.0, "cosine", "test", warmup_fraction=0.0)
    assert cosine.lr_factor(0, 10) == 1.0
    assert cosine.lr_factor(5, 10) == pytest.approx(0.5)
    assert cosine.lr_factor(9, 10) == pytest.approx(0.5 * (1 + math.cos(0.9 * math.pi)))
