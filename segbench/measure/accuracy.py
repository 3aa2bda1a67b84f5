"""Overlap metrics from one confusion matrix over the whole test split.

Convention (stated in every table): IoU and Dice per class are computed from the split's
summed confusion matrix; mIoU and mean Dice average the foreground classes (all but class 0,
background), the usual medical-imaging convention. A class absent from both reference and
prediction in the whole split has no defined score: it is left out of the means and counted
in `classes_undefined`.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from segbench.data.base import Split
from segbench.measure.context import MeasureContext, inference_fn


def confusion_matrix(pred: torch.Tensor, target: torch.Tensor, num_classes: int) -> torch.Tensor:
    """(num_classes, num_classes) counts; rows are the reference class, columns the prediction."""
    index = target.flatten().long() * num_classes + pred.flatten().long()
    return torch.bincount(index, minlength=num_classes**2).reshape(num_classes, num_classes)


def scores_from_confusion(cm: torch.Tensor) -> dict:
    cm = cm.double()
    tp = cm.diag()
    fp, fn = cm.sum(0) - tp, cm.sum(1) - tp
    union = tp + fp + fn
    iou = torch.where(union > 0, tp / union.clamp(min=1), torch.nan)
    dice = torch.where(union > 0, 2 * tp / (2 * tp + fp + fn).clamp(min=1), torch.nan)
    foreground_iou, foreground_dice = iou[1:], dice[1:]
    defined = ~torch.isnan(foreground_iou)
    return {
        "miou": float(foreground_iou[defined].mean()) if defined.any() else math.nan,
        "mdice": float(foreground_dice[defined].mean()) if defined.any() else math.nan,
        "pixel_accuracy": float(tp.sum() / cm.sum()),
        "iou_per_class": [round(float(v), 4) for v in iou],
        "dice_per_class": [round(float(v), 4) for v in dice],
        "classes_undefined": int((~defined).sum()),
    }


def predict(model: nn.Module, images: torch.Tensor, ctx: MeasureContext) -> torch.Tensor:
    """Label maps (N, H, W) on the CPU for a stack of images, at the profile's batch size."""
    batch, labels = ctx.profile.batch_size, []
    for start in range(0, images.shape[0], batch):
        logits = inference_fn(model, images[start:start + batch].to(ctx.device), ctx)()
        labels.append(logits.argmax(1).cpu())
    return torch.cat(labels)


def majority_baseline(train: Split, test: Split, num_classes: int) -> dict:
    """What predicting the training split's most frequent class everywhere scores on test."""
    majority = int(torch.bincount(train.masks.flatten(), minlength=num_classes).argmax())
    pred = torch.full_like(test.masks, majority)
    return scores_from_confusion(confusion_matrix(pred, test.masks, num_classes))


def accuracy(model: nn.Module, split: Split, num_classes: int,
             ctx: MeasureContext) -> tuple[dict, torch.Tensor]:
    """Overlap scores of the model on a split, and its label maps."""
    pred = predict(model, split.images, ctx)
    return scores_from_confusion(confusion_matrix(pred, split.masks, num_classes)), pred
