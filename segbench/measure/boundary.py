"""Boundary metrics of 2D label maps: HD95, ASSD and normalised surface Dice, per class.

For each image and each foreground class c, P and T are the pixels labelled c in the prediction
and the reference. A region's surface is its pixels with at least one 4-neighbour outside it
(pixels on the image edge count as surface). Distances are Euclidean between pixel centres,
in pixels, and in mm when the pixel size is known (isotropic, `spacing_mm`).
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
The mm keys (`hd95_mm`, `asd_mm` and their per-class lists) are None when spacing_mm is None.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from scipy import ndimage

CROSS = ndimage.generate_binary_structure(2, 1)


def surface(region: np.ndarray) -> np.ndarray:
    return region & ~ndimage.binary_erosion(region, CROSS, border_value=0)


def surface_distances(pred: np.ndarray, target: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Distances (px) from each surface pixel of pred to target's surface, and the reverse.
    Both regions non-empty. Computed inside the bounding box of both surfaces, which holds
    every nearest surface pixel, so the result is exact and cheap for small structures."""
    pred_surface, target_surface = surface(pred), surface(target)
    rows, cols = np.nonzero(pred_surface | target_surface)
    box = (slice(rows.min(), rows.max() + 1), slice(cols.min(), cols.max() + 1))
    pred_surface, target_surface = pred_surface[box], target_surface[box]
    to_target = ndimage.distance_transform_edt(~target_surface)[pred_surface]
    to_pred = ndimage.distance_transform_edt(~pred_surface)[target_surface]
    return to_target, to_pred


def image_scores(pred: np.ndarray, target: np.ndarray,
                 tolerance_px: float) -> tuple[float, float, float]:
    """(HD95, ASSD, NSD) in pixels for two non-empty regions."""
    to_target, to_pred = surface_distances(pred, target)
    hd95 = max(np.percentile(to_target, 95), np.percentile(to_pred, 95))
    pooled = np.concatenate([to_target, to_pred])
    return float(hd95), float(pooled.mean()), float((pooled <= tolerance_px).mean())


def _mean_or_nan(values: list[float]) -> float:
    return float(np.mean(values)) if values else math.nan


def boundary_metrics(pred: torch.Tensor, target: torch.Tensor, num_classes: int,
                     spacing_mm: float | None, tolerance_px: float = 1.0) -> dict:
    if pred.shape != target.shape or pred.dim() != 3:
        raise ValueError(f"pred and target must both be (N, H, W), got {tuple(pred.shape)} "
                         f"and {tuple(target.shape)}")
    pred_np, target_np = pred.cpu().numpy(), target.cpu().numpy()
    height, width = pred_np.shape[1:]
    diagonal = math.hypot(height, width)
    foreground = range(1, num_classes)
    scores = {c: {"hd95": [], "asd": [], "nsd": []} for c in foreground}
    counts = {key: [0] * len(foreground) for key in ("both_empty", "pred_empty", "target_empty")}
    for pred_map, target_map in zip(pred_np, target_np, strict=True):
        for c in foreground:
            p, t = pred_map == c, target_map == c
            p_any, t_any = bool(p.any()), bool(t.any())
            if not p_any and not t_any:
                counts["both_empty"][c - 1] += 1
                continue
            if p_any and t_any:
                hd95, asd, nsd = image_scores(p, t, tolerance_px)
            else:
                counts["pred_empty" if t_any else "target_empty"][c - 1] += 1
                hd95, asd, nsd = diagonal, diagonal, 0.0
            scores[c]["hd95"].append(hd95)
            scores[c]["asd"].append(asd)
            scores[c]["nsd"].append(nsd)
    per_class = {name: [_mean_or_nan(scores[c][name]) for c in foreground]
                 for name in ("hd95", "asd", "nsd")}
    with_value = [c for c in foreground if scores[c]["hd95"]]
    result = {
        "hd95_px_per_class": per_class["hd95"],
        "asd_px_per_class": per_class["asd"],
        "nsd_per_class": per_class["nsd"],
        "hd95_px": _mean_or_nan([per_class["hd95"][c - 1] for c in with_value]),
        "asd_px": _mean_or_nan([per_class["asd"][c - 1] for c in with_value]),
        "nsd": _mean_or_nan([per_class["nsd"][c - 1] for c in with_value]),
        "nsd_tolerance_px": tolerance_px,
        "images": int(pred_np.shape[0]),
        "evaluated_per_class": [len(scores[c]["hd95"]) for c in foreground],
        **{f"{key}_per_class": value for key, value in counts.items()},
        "classes_with_value": with_value,
        "classes_without_value": [c for c in foreground if c not in with_value],
        "spacing_mm": spacing_mm,
    }
    for name in ("hd95", "asd"):
        in_px = result[f"{name}_px_per_class"]
        known = spacing_mm is not None
        result[f"{name}_mm_per_class"] = [v * spacing_mm for v in in_px] if known else None
        result[f"{name}_mm"] = result[f"{name}_px"] * spacing_mm if known else None
    return result
