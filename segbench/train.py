"""One training loop for every architecture: Dice + cross-entropy, the recipe's optimizer and
schedule (segbench.recipes; by default the shared recipe: AdamW, cosine), bf16 autocast on CUDA,
seeded shuffling; the weights of the best validation epoch are kept.

Training stops at the first non-finite loss or gradient norm with `TrainingDiverged` (the
runner records the row as `diverged`). Each epoch's history holds epoch, train_loss (mean over
its steps), val_mdice, lr (of the epoch's last step) and seconds (wall time of the epoch,
training and validation).
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from segbench.config import Mode, Profile
from segbench.data.augment import AugmentConfig, Augmenter
from segbench.data.base import PreparedDataset
from segbench.errors import TrainingDiverged
from segbench.measure.accuracy import accuracy
from segbench.measure.context import MeasureContext
from segbench.recipes import NO_DECAY_NAMES, Recipe, shared_recipe, with_lr


def soft_dice_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """1 - mean soft Dice over the foreground classes, pooled over the batch."""
    probs = logits.float().softmax(1)
    one_hot = F.one_hot(target, logits.shape[1]).permute(0, 3, 1, 2).float()
    dims = (0, 2, 3)
    intersection = (probs * one_hot).sum(dims)
    denominator = probs.sum(dims) + one_hot.sum(dims)
    dice = (2 * intersection + 1e-5) / (denominator + 1e-5)
    return 1 - dice[1:].mean()


def dice_ce_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    if logits.shape[-2:] != target.shape[-2:]:
        logits = F.interpolate(logits, size=target.shape[-2:], mode="bilinear", align_corners=False)
    return F.cross_entropy(logits.float(), target) + soft_dice_loss(logits, target)


def model_loss(model: nn.Module, images: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """Main loss plus the weighted auxiliary losses of models that define forward_with_aux."""
    if hasattr(model, "forward_with_aux"):
        logits, auxiliaries = model.forward_with_aux(images)
        return dice_ce_loss(logits, masks) + sum(w * dice_ce_loss(a, masks) for w, a in auxiliaries)
    return dice_ce_loss(model(images), masks)


def _parameter_groups(model: nn.Module, recipe: Recipe) -> Iterable:
    """All parameters with the recipe's weight decay, or two groups: decayed, and 1-D
    parameters and NO_DECAY_NAMES without decay."""
    if recipe.decay_norm_and_bias:
        return model.parameters()
    decay, no_decay = [], []
    for name, parameter in model.named_parameters():
        exempt = parameter.ndim <= 1 or name.rsplit(".", 1)[-1] in NO_DECAY_NAMES
        (no_decay if exempt else decay).append(parameter)
    return [{"params": decay}, {"params": no_decay, "weight_decay": 0.0}]


def make_optimizer(model: nn.Module, profile: Profile,
                   recipe: Recipe | None = None) -> torch.optim.Optimizer:
    recipe = recipe or shared_recipe(profile)
    params = _parameter_groups(model, recipe)
    if recipe.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=recipe.lr, weight_decay=recipe.weight_decay,
                                 betas=recipe.betas)
    return torch.optim.SGD(params, lr=recipe.lr, weight_decay=recipe.weight_decay,
                           momentum=recipe.momentum, nesterov=recipe.nesterov)


def make_schedule(optimizer: torch.optim.Optimizer, recipe: Recipe,
                  total_steps: int) -> torch.optim.lr_scheduler.LRScheduler:
    """Stepped once per optimizer step. Cosine without warm-up is torch's CosineAnnealingLR,
    so the shared recipe trains exactly as segbench always has; every other recipe follows
    `Recipe.lr_factor`."""
    if recipe.schedule == "cosine" and recipe.warmup_steps(total_steps) == 0:
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, total_steps)
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: recipe.lr_factor(step, total_steps))


class NonFiniteStep(RuntimeError):
    """A training step met a non-finite loss or gradient norm (`what`); nothing was updated."""

    def __init__(self, what: str):
        super().__init__(f"non-finite {what}")
        self.what = what


def make_train_step(model: nn.Module, optimizer: torch.optim.Optimizer, device: torch.device,
                    autocast_dtype: torch.dtype | None, *, grad_clip_norm: float | None = None,
                    check_finite: bool = False) -> Callable[[torch.Tensor, torch.Tensor], float]:
    """One optimizer step on a batch, returning its loss. With check_finite, a non-finite
    loss or gradient norm raises NonFiniteStep before the weights change. autocast_dtype None
    trains in plain fp32."""
    parameters = [p for p in model.parameters() if p.requires_grad]

    def step(images: torch.Tensor, masks: torch.Tensor) -> float:
        model.train()
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
            loss = model_loss(model, images.to(device), masks.to(device))
        value = float(loss.detach())
        if check_finite and not math.isfinite(value):
            raise NonFiniteStep("loss")
        loss.backward()
        if grad_clip_norm is not None:
            norm = torch.nn.utils.clip_grad_norm_(parameters, grad_clip_norm)
        elif check_finite:
            norm = torch.nn.utils.get_total_norm([p.grad for p in parameters if p.grad is not None])
        if check_finite and not bool(torch.isfinite(norm)):
            raise NonFiniteStep("gradient norm")
        optimizer.step()
        return value

    return step


@dataclass
class TrainResult:
    train_time_s: float
    epochs: int
    best_epoch: int
    best_val_mdice: float
    final_train_loss: float
    history: list[dict] = field(default_factory=list)
    recipe: dict = field(default_factory=dict)  # Recipe.to_json() of the recipe trained with


def fit(model: nn.Module, data: PreparedDataset, profile: Profile, device: torch.device,
        seed: int, desc: str = "train", recipe: Recipe | None = None) -> TrainResult:
    """Train for the profile's epochs with `recipe` (default: the shared recipe), augmenting
    train batches when the profile says so."""
    recipe = recipe or shared_recipe(profile)
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    augment = Augmenter(AugmentConfig.default() if profile.augment else AugmentConfig.off())
    augment_generator = torch.Generator(device=device).manual_seed(seed)
    autocast_dtype = MeasureContext.build(device, Mode(), profile).autocast_dtype
    optimizer = make_optimizer(model, profile, recipe)
    train = data.splits["train"]
    steps_per_epoch = -(-len(train) // profile.batch_size)
    total_steps = profile.epochs * steps_per_epoch
    schedule = make_schedule(optimizer, recipe, total_steps)
    step = make_train_step(model, optimizer, device, autocast_dtype,
                           grad_clip_norm=recipe.grad_clip_norm, check_finite=True)
    best_state, best_mdice, best_epoch, history = None, -1.0, 0, []
    start = time.perf_counter()
    bar = tqdm(range(profile.epochs), desc=desc, unit="epoch", leave=False)
    for epoch in bar:
        epoch_start = time.perf_counter()
        order = torch.randperm(len(train), generator=generator)
        losses = []
        for first in range(0, len(train), profile.batch_size):
            index = order[first:first + profile.batch_size]
            images, masks = train.images[index].to(device), train.masks[index].to(device)
            images, masks = augment(images, masks, augment_generator)
            lr = optimizer.param_groups[0]["lr"]
            try:
                losses.append(step(images, masks))
            except NonFiniteStep as e:
                bar.close()
                raise TrainingDiverged(epoch + 1, epoch * steps_per_epoch + len(losses) + 1,
                                       e.what) from None
            schedule.step()
        val, _ = accuracy(model, data.splits["val"], data.num_classes,
                          MeasureContext.build(device, Mode(), profile))
        history.append({"epoch": epoch + 1, "train_loss": sum(losses) / len(losses),
                        "val_mdice": val["mdice"], "lr": lr,
                        "seconds": time.perf_counter() - epoch_start})
        bar.set_postfix(loss=f"{history[-1]['train_loss']:.3f}", val_mdice=f"{val['mdice']:.3f}")
        if val["mdice"] > best_mdice:
            best_mdice, best_epoch = val["mdice"], epoch + 1
            best_state = copy.deepcopy(model.state_dict())
    elapsed = time.perf_counter() - start
    if best_state is not None:
        model.load_state_dict(best_state)
    return TrainResult(elapsed, profile.epochs, best_epoch, best_mdice,
                       history[-1]["train_loss"], history, recipe.to_json())


LATE_BEST_FRACTION = 0.8  # the best epoch lies after this fraction of the epochs
LATE_GAIN_MDICE = 0.005  # and the best val mDice rose more than this over the last quarter


def converged(history: Sequence[dict]) -> bool:
    """False when training was still improving at its end: the best epoch (first epoch with
    the highest val_mdice) lies in the last 20% of the E epochs (best_epoch > 0.8 E), AND the
    best val mDice so far rose by more than 0.005 over the last quarter of the epochs (from
    the end of epoch E - ceil(E/4), or from 0 when that is the start, to epoch E).
    True otherwise, also for an empty history."""
    epochs = len(history)
    if epochs == 0:
        return True
    scores = [h["val_mdice"] for h in history]
    best_epoch = scores.index(max(scores)) + 1
    quarter_start = epochs - math.ceil(epochs / 4)
    before = max(scores[:quarter_start], default=0.0)
    still_rising = max(scores) - before > LATE_GAIN_MDICE
    return not (best_epoch > LATE_BEST_FRACTION * epochs and still_rising)


LR_SWEEP_FACTORS = (0.1, 1.0, 10.0)


@dataclass
class LrSweep:
    chosen_lr: float
    tried: list[dict]  # {"lr", "best_val_mdice", "status": "ok" | "diverged"} per learning rate
    model: nn.Module  # trained at the chosen learning rate (weights of its best val epoch)
    result: TrainResult


def lr_sweep(make_model: Callable[[], nn.Module], data: PreparedDataset, profile: Profile,
             device: torch.device, seed: int, recipe: Recipe,
             factors: Sequence[float] = LR_SWEEP_FACTORS, desc: str = "lr sweep") -> LrSweep:
    """Train a fresh model (same seed, same step budget: the profile's epochs) at each of
    recipe.lr * factors and keep the one with the best val mDice (a diverged run scores -inf;
    ties go to the earlier factor). Returns it trained, so it need not be trained again."""
    best: tuple[float, nn.Module, TrainResult] | None = None
    tried = []
    for factor in factors:
        lr = recipe.lr * factor
        model = make_model().to(device)
        try:
            result = fit(model, data, profile, device, seed, desc=f"{desc} lr {lr:g}",
                         recipe=with_lr(recipe, lr))
        except TrainingDiverged as e:
            tried.append({"lr": lr, "best_val_mdice": -math.inf, "status": "diverged"})
            diverged = e
            continue
        tried.append({"lr": lr, "best_val_mdice": result.best_val_mdice, "status": "ok"})
        if best is None or result.best_val_mdice > best[2].best_val_mdice:
            best = (lr, model, result)
    if best is None:
        raise diverged  # every learning rate diverged: the last one's epoch and step
    return LrSweep(best[0], tried, best[1], best[2])
