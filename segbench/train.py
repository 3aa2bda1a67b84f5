"""One training loop for every architecture: Dice + cross-entropy, AdamW, cosine schedule,
bf16 autocast on CUDA, seeded shuffling; the weights of the best validation epoch are kept."""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from segbench.config import Mode, Profile
from segbench.data.augment import AugmentConfig, Augmenter
from segbench.data.base import PreparedDataset
from segbench.measure.accuracy import accuracy
from segbench.measure.context import MeasureContext


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


def make_optimizer(model: nn.Module, profile: Profile) -> torch.optim.Optimizer:
    return torch.optim.AdamW(model.parameters(), lr=profile.lr, weight_decay=profile.weight_decay)


def make_train_step(model: nn.Module, optimizer: torch.optim.Optimizer, device: torch.device,
                    amp: bool) -> Callable[[torch.Tensor, torch.Tensor], float]:
    def step(images: torch.Tensor, masks: torch.Tensor) -> float:
        model.train()
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            loss = model_loss(model, images.to(device), masks.to(device))
        loss.backward()
        optimizer.step()
        return float(loss.detach())

    return step


@dataclass
class TrainResult:
    train_time_s: float
    epochs: int
    best_epoch: int
    best_val_mdice: float
    final_train_loss: float
    history: list[dict] = field(default_factory=list)


def fit(model: nn.Module, data: PreparedDataset, profile: Profile, device: torch.device,
        seed: int, desc: str = "train") -> TrainResult:
    """Train for the profile's epochs (augmenting train batches when the profile says so)."""
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    augment = Augmenter(AugmentConfig.default() if profile.augment else AugmentConfig.off())
    augment_generator = torch.Generator(device=device).manual_seed(seed)
    amp = device.type == "cuda"
    optimizer = make_optimizer(model, profile)
    train = data.splits["train"]
    steps_per_epoch = -(-len(train) // profile.batch_size)
    total_steps = profile.epochs * steps_per_epoch
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, total_steps)
    step = make_train_step(model, optimizer, device, amp)
    best_state, best_mdice, best_epoch, history = None, -1.0, 0, []
    start = time.perf_counter()
    bar = tqdm(range(profile.epochs), desc=desc, unit="epoch", leave=False)
    for epoch in bar:
        order = torch.randperm(len(train), generator=generator)
        losses = []
        for first in range(0, len(train), profile.batch_size):
            index = order[first:first + profile.batch_size]
            images, masks = train.images[index].to(device), train.masks[index].to(device)
            images, masks = augment(images, masks, augment_generator)
            losses.append(step(images, masks))
            schedule.step()
        val, _ = accuracy(model, data.splits["val"], data.num_classes,
                          MeasureContext.build(device, Mode(), profile))
        history.append({"epoch": epoch + 1, "train_loss": sum(losses) / len(losses),
                        "val_mdice": val["mdice"]})
        bar.set_postfix(loss=f"{history[-1]['train_loss']:.3f}", val_mdice=f"{val['mdice']:.3f}")
        if val["mdice"] > best_mdice:
            best_mdice, best_epoch = val["mdice"], epoch + 1
            best_state = copy.deepcopy(model.state_dict())
    elapsed = time.perf_counter() - start
    if best_state is not None:
        model.load_state_dict(best_state)
    return TrainResult(elapsed, profile.epochs, best_epoch, best_mdice,
                       history[-1]["train_loss"], history)
