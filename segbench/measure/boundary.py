"""Boundary metrics of 2D label maps: HD95, ASSD and normalised surface Dice, per class.

For each image and each foreground class c, P and T are the pixels labelled c in the prediction
and the reference. A region's surface is its pixels with at least one 4-neighbour outside it
(pixels on the image edge count as surface). Distances are Euclidean between pixel centres,
in pixels, and in mm when the pixel size is known: `spacing_mm` is one number (square
pixels), one (dy, dx) pair, or one (dy, dx) pair per image (shape (N, 2)); mm distances come
from scipy's exact Euclidean distance transform with that sampling, so anisotropic pixels are
measured exactly, not scaled afterwards. NSD's tolerance is in pixels.
- HD95: the larger of the two directed 95th percentiles (P's surface to T's, T's to P's).
- ASSD: the mean of all distances from each surface to the other, both directions pooled
  (sum of both / total number of surface pixels).
- NSD (normalised surface Dice) at `tolerance_px`: the fraction of both surfaces' pixels
  lying within the tolerance of the other surface.

Empty regions, per image and class, explicitly counted in the result:
- both empty: the image is skipped for that class (`both_empty_per_class`);
- one empty: HD95 = ASSD = the image diagonal, the largest distance possible, and NSD = 0
  (`pred_empty_per_class`, `target_empty_per_class`).
A class's value is the mean over the images not skipped for it; a class skipped in every image
has no value (NaN in the per-class lists, listed in `classes_without_value`) and is left out of
the mean over classes, which is therefore over `len(classes_with_value)` classes (NaN when
that is none). The per-class lists are indexed by foreground class: entry i is class i + 1.
The mm keys (`hd95_mm`, `asd_mm` and their per-class lists) are None when spacing_mm is None;
the image diagonal in mm is hypot(H * dy, W * dx) of that image.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from scipy import ndimage

CROSS = ndimage.generate_binary_structure(2, 1)
Sampling = tuple[float, float] | None  # (dy, dx) in mm of one image, None when unknown


def surface(region: np.ndarray) -> np.ndarray:
    return region & ~ndimage.binary_erosion(region, CROSS, border_value=0)


def surface_distances(pred: np.ndarray, target: np.ndarray,
                      sampling: Sampling = None) -> tuple[np.ndarray, np.ndarray]:
    """Distances from each surface pixel of pred to target's surface, and the reverse, in
    pixels (or in mm with `sampling` = (dy, dx)). Both regions non-empty. Computed inside the
    bounding box of both surfaces, which holds every nearest surface pixel, so the result is
    exact and cheap for small structures."""
    pred_surface, target_surface = surface(pred), surface(target)
    rows, cols = np.nonzero(pred_surface | target_surface)
    box = (slice(rows.min(), rows.max() + 1), slice(cols.min(), cols.max() + 1))
    pred_surface, target_surface = pred_surface[box], target_surface[box]
    to_target = ndimage.distance_transform_edt(~target_surface, sampling=sampling)[pred_surface]
    to_pred = ndimage.distance_transform_edt(~pred_surface, sampling=sampling)[target_surface]
    return to_target, to_pred


def _hd95_and_assd(to_target: np.ndarray, to_pred: np.ndarray) -> tuple[float, float]:
    hd95 = max(np.percentile(to_target, 95), np.percentile(to_pred, 95))
    return float(hd95), float(np.concatenate([to_target, to_pred]).mean())


def image_scores(pred: np.ndarray, target: np.ndarray, tolerance_px: float,
                 sampling: Sampling = None) -> dict[str, float]:
    """HD95, ASSD and NSD in pixels, and HD95 and ASSD in mm when `sampling` is given, for two
    non-empty regions."""
    to_target, to_pred = surface_distances(pred, target)
    hd95, asd = _hd95_and_assd(to_target, to_pred)
    pooled = np.concatenate([to_target, to_pred])
    scores = {"hd95": hd95, "asd": asd, "nsd": float((pooled <= tolerance_px).mean())}
    if sampling is not None:
        scores["hd95_mm"], scores["asd_mm"] = _hd95_and_assd(
            *surface_distances(pred, target, sampling))
    return scores


def per_image_spacing(spacing_mm, images: int) -> np.ndarray | None:
    """(images, 2) array of (dy, dx) in mm from None, a number, a (dy, dx) pair or one pair
    per image; anything else is a ValueError that says what is expected."""
    if spacing_mm is None:
        return None
    spacing = np.asarray(spacing_mm.cpu() if isinstance(spacing_mm, torch.Tensor) else spacing_mm,
                         dtype=np.float64)
    if spacing.ndim == 0:
        spacing = np.full((images, 2), float(spacing))
    elif spacing.shape == (2,):
        spacing = np.tile(spacing, (images, 1))
    if spacing.shape != (images, 2):
        raise ValueError(f"spacing_mm must be None, a number, (dy, dx) or one (dy, dx) per "
                         f"image, shape ({images}, 2); got shape {spacing.shape}")
    if not (np.isfinite(spacing).all() and (spacing > 0).all()):
        raise ValueError("spacing_mm must be positive and finite")
    return spacing


def _mean_or_nan(values: list[float]) -> float:
    return float(np.mean(values)) if values else math.nan


METRICS = ("hd95", "asd", "nsd", "hd95_mm", "asd_mm")


def boundary_metrics(pred: torch.Tensor, target: torch.Tensor, num_classes: int,
                     spacing_mm=None, tolerance_px: float = 1.0) -> dict:
    """The metrics above for (N, H, W) label maps; `spacing_mm`: None, a number, (dy, dx), or
    (N, 2) with one (dy, dx) per image (a tensor or an array)."""
    if pred.shape != target.shape or pred.dim() != 3:
        raise ValueError(f"pred and target must both be (N, H, W), got {tuple(pred.shape)} "
                         f"and {tuple(target.shape)}")
    pred_np, target_np = pred.cpu().numpy(), target.cpu().numpy()
    spacing = per_image_spacing(spacing_mm, pred_np.shape[0])
    height, width = pred_np.shape[1:]
    foreground = range(1, num_classes)
    scores = {c: {name: [] for name in METRICS} for c in foreground}
    counts = {key: [0] * len(foreground) for key in ("both_empty", "pred_empty", "target_empty")}
    for index, (pred_map, target_map) in enumerate(zip(pred_np, target_np, strict=True)):
        sampling = None if spacing is None else tuple(spacing[index])
        for c in foreground:
            p, t = pred_map == c, target_map == c
            p_any, t_any = bool(p.any()), bool(t.any())
            if not p_any and not t_any:
                counts["both_empty"][c - 1] += 1
                continue
            if p_any and t_any:
                image = image_scores(p, t, tolerance_px, sampling)
            else:
                counts["pred_empty" if t_any else "target_empty"][c - 1] += 1
                diagonal = math.hypot(height, width)
                image = {"hd95": diagonal, "asd": diagonal, "nsd": 0.0}
                if sampling is not None:
                    diagonal_mm = math.hypot(height * sampling[0], width * sampling[1])
                    image["hd95_mm"] = image["asd_mm"] = diagonal_mm
            for name, value in image.items():
                scores[c][name].append(value)
    per_class = {name: [_mean_or_nan(scores[c][name]) for c in foreground] for name in METRICS}
    with_value = [c for c in foreground if scores[c]["hd95"]]
    over_classes = {name: _mean_or_nan([per_class[name][c - 1] for c in with_value])
                    for name in METRICS}
    known = spacing is not None
    return {
        "hd95_px_per_class": per_class["hd95"],
        "asd_px_per_class": per_class["asd"],
        "nsd_per_class": per_class["nsd"],
        "hd95_mm_per_class": per_class["hd95_mm"] if known else None,
        "asd_mm_per_class": per_class["asd_mm"] if known else None,
        "hd95_px": over_classes["hd95"],
        "asd_px": over_classes["asd"],
        "nsd": over_classes["nsd"],
        "hd95_mm": over_classes["hd95_mm"] if known else None,
        "asd_mm": over_classes["asd_mm"] if known else None,
        "nsd_tolerance_px": tolerance_px,
        "images": int(pred_np.shape[0]),
        "evaluated_per_class": [len(scores[c]["hd95"]) for c in foreground],
        **{f"{key}_per_class": value for key, value in counts.items()},
        "classes_with_value": with_value,
        "classes_without_value": [c for c in foreground if c not in with_value],
        "spacing_mm_range": [float(spacing.min()), float(spacing.max())] if known else None,
    }
