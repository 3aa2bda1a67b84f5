"""Cutting one 3D volume into 2D slices with a slab split, shared by the single-brain datasets.

Within each orientation the slices that hold enough foreground are cut into ten contiguous
slabs; whole slabs go to train (7), val (1) and test (2), chosen by the seed, and the first
slice after each change of split is dropped so that neighbouring slices never straddle a split.
"""

from __future__ import annotations

import numpy as np
import torch

from segbench.data.base import Split, resize_slice

ORIENTATIONS = ("sagittal", "coronal", "axial")  # slicing axis 0, 1, 2 of an RAS volume
SPLIT_NAMES = ("train", "val", "test")
SLABS, TEST_SLABS, VAL_SLABS = 10, 2, 1


def slab_assignment(n_slices: int, rng: np.random.Generator) -> np.ndarray:
    """Split name per slice ('train' / 'val' / 'test' / '' for dropped boundary slices)."""
    slab_of = np.arange(n_slices) * SLABS // n_slices
    order = rng.permutation(SLABS)
    split_of_slab = np.array(["train"] * SLABS, dtype=object)
    split_of_slab[order[:TEST_SLABS]] = "test"
    split_of_slab[order[TEST_SLABS:TEST_SLABS + VAL_SLABS]] = "val"
    splits = split_of_slab[slab_of]
    changes = np.nonzero(splits[1:] != splits[:-1])[0]
    splits[changes + 1] = ""  # the first slice after each change of split is dropped
    return splits


def take_slice(volume: np.ndarray, index: int, axis: int) -> np.ndarray:
    """`np.take(volume, index, axis)` as a view: far cheaper than a copy on large volumes."""
    return volume[(slice(None),) * axis + (index,)]


def slab_split_slices(image: np.ndarray, probabilities: np.ndarray, image_size: int,
                      rng: np.random.Generator, min_foreground_fraction: float,
                      ) -> tuple[dict[str, Split], dict[str, dict[str, int]]]:
    """Slices of a (C, X, Y, Z) image and its (K, X, Y, Z) class probabilities (class 0 =
    background; a boolean one-hot will do) in all three orientations, resized to image_size and
    slab-split. Returns the splits and, per orientation, the slice count of each split."""
    images: dict[str, list] = {s: [] for s in SPLIT_NAMES}
    masks: dict[str, list] = {s: [] for s in SPLIT_NAMES}
    facts = {}
    for axis, orientation in enumerate(ORIENTATIONS):
        other_axes = tuple(a for a in range(3) if a != axis)
        foreground_fraction = 1.0 - probabilities[0].mean(axis=other_axes)
        kept = np.nonzero(foreground_fraction >= min_foreground_fraction)[0]
        splits = slab_assignment(len(kept), rng)
        for index, split in zip(kept, splits, strict=True):
            if not split:
                continue
            resized_image, mask = resize_slice(take_slice(image, index, axis + 1),
                                               take_slice(probabilities, index, axis + 1),
                                               image_size)
            images[split].append(resized_image)
            masks[split].append(mask)
        facts[orientation] = {s: int((splits == s).sum()) for s in SPLIT_NAMES}
    return stack_splits(images, masks), facts


def stack_splits(images: dict[str, list], masks: dict[str, list]) -> dict[str, Split]:
    """Lists of (C, H, W) float images and (H, W) label masks per split -> tensors."""
    return {s: Split(torch.from_numpy(np.stack(images[s])).float(),
                     torch.from_numpy(np.stack(masks[s])).long()) for s in images}
