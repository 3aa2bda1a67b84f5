"""Cutting one 3D volume into 2D slices with a slab split, shared by the single-brain datasets.

Within each orientation the slices that hold enough foreground are cut into ten contiguous
slabs, the cases of this dataset (named "axial/3": slab 3 of the axial slices, counted from
the start of the volume). Whole slabs go to the splits: by default train (7), val (1) and test
(2), chosen by the seed; with K folds, fold k's slabs are the test split (see
`segbench.data.folds`, one partition per orientation). The first slice after each change of
split is dropped so that neighbouring slices never straddle a split.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from segbench.data.base import Split, resize_slice, resized_spacing
from segbench.data.folds import fold_assignment

ORIENTATIONS = ("sagittal", "coronal", "axial")  # slicing axis 0, 1, 2 of an RAS volume
SPLIT_NAMES = ("train", "val", "test")
SLABS, TEST_SLABS, VAL_SLABS = 10, 2, 1


def seeded_slab_splits(rng: np.random.Generator) -> np.ndarray:
    """Split name per slab: 2 test and 1 val slab drawn by the seed, the rest train."""
    order = rng.permutation(SLABS)
    split_of_slab = np.array(["train"] * SLABS, dtype=object)
    split_of_slab[order[:TEST_SLABS]] = "test"
    split_of_slab[order[TEST_SLABS:TEST_SLABS + VAL_SLABS]] = "val"
    return split_of_slab


def split_rule(folds: int, fold: int) -> str:
    if folds == 1:
        return f"slab split 7/1/2 of {SLABS} slabs per orientation"
    return (f"fold {fold} of {folds} over the {SLABS} slabs per orientation (test: that fold's "
            f"slabs; val: {VAL_SLABS} slab of the other folds; train: the rest)")


def slab_of_slices(n_slices: int) -> np.ndarray:
    return np.arange(n_slices) * SLABS // n_slices


def slab_assignment(n_slices: int, rng: np.random.Generator, folds: int = 1, fold: int = 0,
                    where: str = "dataset") -> np.ndarray:
    """Split name per slice ('train' / 'val' / 'test' / '' for dropped boundary slices)."""
    if folds == 1:
        split_of_slab = seeded_slab_splits(rng)
    else:
        split_of_slab = fold_assignment(SLABS, folds, fold, VAL_SLABS, rng,
                                        "slabs per orientation", where)
    splits = split_of_slab[slab_of_slices(n_slices)]
    changes = np.nonzero(splits[1:] != splits[:-1])[0]
    splits[changes + 1] = ""  # the first slice after each change of split is dropped
    return splits


def take_slice(volume: np.ndarray, index: int, axis: int) -> np.ndarray:
    """`np.take(volume, index, axis)` as a view: far cheaper than a copy on large volumes."""
    return volume[(slice(None),) * axis + (index,)]


@dataclass
class SliceList:
    """Prepared slices of one split, gathered one at a time, then stacked into a Split."""
    images: list[np.ndarray] = field(default_factory=list)
    masks: list[np.ndarray] = field(default_factory=list)
    groups: list[str] = field(default_factory=list)
    spacing: list[tuple[float, float]] = field(default_factory=list)

    def append(self, image: np.ndarray, mask: np.ndarray, group: str,
               spacing: tuple[float, float] | None) -> None:
        self.images.append(image)
        self.masks.append(mask)
        self.groups.append(group)
        if spacing is not None:
            self.spacing.append(spacing)

    def extend(self, other: SliceList) -> None:
        for image, mask, group, spacing in zip(other.images, other.masks, other.groups,
                                               other.spacing or [None] * len(other.images),
                                               strict=True):
            self.append(image, mask, group, spacing)

    def __len__(self) -> int:
        return len(self.images)

    def stack(self) -> Split:
        """(C, H, W) float images and (H, W) label masks -> tensors; spacing None when it is
        unknown for every slice (it must be known for all or none)."""
        if self.spacing and len(self.spacing) != len(self.images):
            raise ValueError("pixel spacing must be known for every slice or for none")
        spacing = (torch.tensor(self.spacing, dtype=torch.float64).reshape(-1, 2)
                   if self.spacing else None)
        return Split(torch.from_numpy(np.stack(self.images)).float(),
                     torch.from_numpy(np.stack(self.masks)).long(), list(self.groups), spacing)


def stack_splits(slices: dict[str, SliceList]) -> dict[str, Split]:
    return {name: slices[name].stack() for name in slices}


def slab_split_slices(image: np.ndarray, probabilities: np.ndarray, image_size: int,
                      rng: np.random.Generator, min_foreground_fraction: float,
                      voxel_mm: tuple[float, float, float], folds: int = 1, fold: int = 0,
                      where: str = "dataset",
                      ) -> tuple[dict[str, Split], dict[str, dict[str, int]]]:
    """Slices of a (C, X, Y, Z) image and its (K, X, Y, Z) class probabilities (class 0 =
    background; a boolean one-hot will do) with voxel sides `voxel_mm`, in all three
    orientations, resized to image_size and slab-split. Returns the splits (each slice with
    its slab and its pixel size in mm) and, per orientation, the slice count of each split."""
    slices = {s: SliceList() for s in SPLIT_NAMES}
    facts = {}
    for axis, orientation in enumerate(ORIENTATIONS):
        other_axes = tuple(a for a in range(3) if a != axis)
        in_plane_shape = tuple(image.shape[a + 1] for a in other_axes)
        spacing = resized_spacing(in_plane_shape, tuple(voxel_mm[a] for a in other_axes),
                                  image_size)
        foreground_fraction = 1.0 - probabilities[0].mean(axis=other_axes)
        kept = np.nonzero(foreground_fraction >= min_foreground_fraction)[0]
        splits = slab_assignment(len(kept), rng, folds, fold, where)
        for index, split, slab in zip(kept, splits, slab_of_slices(len(kept)), strict=True):
            if not split:
                continue
            resized_image, mask = resize_slice(take_slice(image, index, axis + 1),
                                               take_slice(probabilities, index, axis + 1),
                                               image_size)
            slices[split].append(resized_image, mask, f"{orientation}/{slab}", spacing)
        facts[orientation] = {s: int((splits == s).sum()) for s in SPLIT_NAMES}
        facts[orientation]["pixel_mm"] = [round(v, 4) for v in spacing]
    return stack_splits(slices), facts
