"""`phantom`: procedural images with exact ground truth, for tests and smoke runs.

Each image holds a few random ellipses (class 1) and rectangles (class 2) on background, with
smooth intensity, a multiplicative bias field and Gaussian noise, so a model must use shape and
context, not one threshold. Fully determined by the seed: 48 train, 8 val and 16 test images
are drawn in that order; with K folds the 72 images are K-folded instead (each image is a case,
named by the seed and its draw index). The pixel size is unknown (no mm metrics).
"""

from __future__ import annotations

import numpy as np

from segbench.data.base import DataError, PreparedDataset, prepared_bytes
from segbench.data.folds import fold_assignment
from segbench.data.slicing import SPLIT_NAMES, SliceList, stack_splits

CLASS_NAMES = ["background", "ellipse", "rectangle"]
SPLIT_SIZES = {"train": 48, "val": 8, "test": 16}


def _draw(rng: np.random.Generator, size: int) -> tuple[np.ndarray, np.ndarray]:
    yy, xx = np.mgrid[0:size, 0:size] / size
    mask = np.zeros((size, size), np.int64)
    for _ in range(rng.integers(1, 4)):
        if rng.random() < 0.5:
            cy, cx, ry, rx = rng.uniform(0.2, 0.8, 2).tolist() + rng.uniform(0.06, 0.2, 2).tolist()
            mask[((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1] = 1
        else:
            y0, x0 = rng.uniform(0.05, 0.7, 2)
            h, w = rng.uniform(0.1, 0.3, 2)
            mask[(yy >= y0) & (yy < y0 + h) & (xx >= x0) & (xx < x0 + w)] = 2
    level = np.array([0.0, 1.0, 1.0])[mask]  # both shapes equally bright: shape decides
    bias = 1.0 + 0.3 * np.sin(2 * np.pi * (yy * rng.uniform(0.5, 1.5) + xx * rng.uniform(0.5, 1.5)))
    image = level * bias + rng.normal(0.0, 0.2, (size, size))
    return image.astype(np.float32)[None], mask


def source_files(arg: str | None = None) -> list:
    return []


def estimate_bytes(arg: str | None, image_size: int) -> int:
    """Peak bytes of `build`: twice the prepared images (gathered, then stacked) and the
    float64 drawing grids of one image."""
    images = sum(SPLIT_SIZES.values())
    return 2 * prepared_bytes(images, 1, image_size) + 8 * 8 * image_size * image_size


def build(arg: str | None, image_size: int, seed: int, folds: int = 1,
          fold: int = 0) -> PreparedDataset:
    if arg:
        raise DataError(f"dataset 'phantom' takes no argument, got {arg!r}")
    rng = np.random.default_rng(seed)
    drawn = [_draw(rng, image_size) for _ in range(sum(SPLIT_SIZES.values()))]
    if folds == 1:
        split_of = np.repeat(list(SPLIT_SIZES), list(SPLIT_SIZES.values()))
        rule = "seeded draw of 48 train, 8 val, 16 test images"
    else:
        split_of = fold_assignment(len(drawn), folds, fold, SPLIT_SIZES["val"], rng, "images",
                                   "phantom")
        rule = f"fold {fold} of {folds} over the {len(drawn)} images, 8 val from the other folds"
    slices = {s: SliceList() for s in SPLIT_NAMES}
    for index, ((image, mask), split) in enumerate(zip(drawn, split_of, strict=True)):
        slices[split].append(image, mask, f"seed{seed}/{index}", None)
    return PreparedDataset(
        name="phantom",
        class_names=list(CLASS_NAMES),
        splits=stack_splits(slices),
        description="procedural ellipses and rectangles of equal brightness with bias field "
        f"and noise; exact ground truth; {rule}",
        facts={"split_sizes": {s: len(slices[s]) for s in SPLIT_NAMES}, "split_rule": rule},
    )
