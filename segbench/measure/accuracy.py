"""Overlap metrics from one confusion matrix over the whole test split.

Convention (stated in every table): IoU and Dice per class are computed from the split's
summed confusion matrix; mIoU and mean Dice average the foreground classes (all but class 0,
background), the usual medical-imaging convention. A class absent from both reference and
prediction in the whole split has no defined score: it is left out of the means and counted
in `classes_undefined`.

Per test case (`case_scores`): the same scores from the confusion matrix of that case's slices
alone, and its boundary metrics over its slices (segbench.measure.boundary's empty-region
policy), one row per case, for case-level intervals and paired comparisons (segbench.stats).
Baselines: `majority_baseline` (one class everywhere; mDice 0 whenever background is the
majority) and `pixel_prior_baseline` (at each pixel the training split's most frequent class
there: for registered anatomy, an atlas).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from segbench.data.base import Split
from segbench.measure.boundary import boundary_metrics
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


def pixel_prior(train: Split, num_classes: int) -> torch.Tensor:
    """(H, W): the most frequent training label at each pixel (the lower class on ties)."""
    masks = train.masks
    pixels = masks.shape[1] * masks.shape[2]
    index = masks.reshape(masks.shape[0], -1).long() * pixels + torch.arange(pixels)
    counts = torch.bincount(index.flatten(), minlength=num_classes * pixels)
    return counts.reshape(num_classes, pixels).argmax(0).reshape(masks.shape[1:])


def pixel_prior_baseline(train: Split, test: Split, num_classes: int) -> dict:
    """What predicting `pixel_prior(train)` for every test slice scores on test."""
    pred = pixel_prior(train, num_classes).expand_as(test.masks)
    return scores_from_confusion(confusion_matrix(pred, test.masks, num_classes))


CASE_METRICS = ("mdice", "miou", "hd95_px", "asd_px", "nsd", "hd95_mm", "asd_mm")


def case_scores(pred: torch.Tensor, split: Split, num_classes: int,
                tolerance_px: float = 1.0) -> list[dict]:
    """One row per case of the split (`split.groups`, in first-seen order): `case`, `slices`,
    mdice and miou from the case's own confusion matrix (foreground classes; NaN when no
    foreground class occurs in the case's reference or prediction), and hd95_px, asd_px, nsd
    (hd95_mm, asd_mm when the split's spacing is known, else None) from `boundary_metrics`
    over the case's slices."""
    if pred.shape != split.masks.shape:
        raise ValueError(f"pred {tuple(pred.shape)} must match the split's masks "
                         f"{tuple(split.masks.shape)}")
    rows = []
    for case in dict.fromkeys(split.groups):
        index = torch.tensor([i for i, g in enumerate(split.groups) if g == case])
        case_pred, case_target = pred[index], split.masks[index]
        overlap = scores_from_confusion(confusion_matrix(case_pred, case_target, num_classes))
        spacing = None if split.spacing_mm is None else split.spacing_mm[index]
        boundary = boundary_metrics(case_pred, case_target, num_classes, spacing, tolerance_px)
        rows.append({"case": case, "slices": len(index),
                     **{key: overlap[key] for key in ("mdice", "miou")},
                     **{key: boundary[key] for key in CASE_METRICS[2:]}})
    return rows
