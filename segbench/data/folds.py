"""Fold k of a K-fold partition of a dataset's cases (slabs, images or nnU-Net cases).

The units are permuted by the seed and dealt round-robin into K folds (sizes differ by at most
one). Fold k is the test split; validation comes from the other folds: the first `n_val`
units in permutation order, counting from the fold after k, so folds validate on different
units; the rest is train. No unit is in two splits, and the K test splits partition the units.
"""

from __future__ import annotations

import numpy as np

from segbench.data.base import DataError


def check_folds(folds: int, fold: int, units: int, unit: str, where: str) -> None:
    """One DataError line for a fold request the dataset cannot honour."""
    if folds < 1:
        raise DataError(f"{where}: --folds must be at least 1, got {folds}")
    if not 0 <= fold < folds:
        raise DataError(f"{where}: fold {fold} is outside 0..{folds - 1} of {folds} folds")
    if folds > units:
        raise DataError(f"{where}: --folds {folds} is more than its {units} {unit}")


def fold_assignment(units: int, folds: int, fold: int, n_val: int,
                    rng: np.random.Generator, unit: str, where: str) -> np.ndarray:
    """'train' / 'val' / 'test' for each of `units` units, for fold `fold` of `folds` >= 2."""
    check_folds(folds, fold, units, unit, where)
    order = rng.permutation(units)
    fold_of = np.empty(units, np.int64)
    fold_of[order] = np.arange(units) % folds
    splits = np.where(fold_of == fold, "test", "train").astype(object)
    candidates = [u for u in np.roll(order, -(fold + 1)) if fold_of[u] != fold]
    if len(candidates) - n_val < 1:
        raise DataError(f"{where}: with --folds {folds}, fold {fold} leaves {len(candidates)} "
                        f"{unit} outside its test split, too few for {n_val} validation and "
                        "at least 1 training; use fewer folds")
    splits[candidates[:n_val]] = "val"
    return splits
