"""`phantom`: procedural images with exact ground truth, for tests and smoke runs.

Each image holds a few random ellipses (class 1) and rectangles (class 2) on background, with
smooth intensity, a multiplicative bias field and Gaussian noise, so a model must use shape and
context, not one threshold. Fully determined by the seed.
"""

from __future__ import annotations

import numpy as np
import torch

from segbench.data.base import DataError, PreparedDataset, Split

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


def build(arg: str | None, image_size: int, seed: int) -> PreparedDataset:
    if arg:
        raise DataError(f"dataset 'phantom' takes no argument, got {arg!r}")
    rng = np.random.default_rng(seed)
    splits = {}
    for name, count in SPLIT_SIZES.items():
        pairs = [_draw(rng, image_size) for _ in range(count)]
        splits[name] = Split(torch.from_numpy(np.stack([p[0] for p in pairs])),
                             torch.from_numpy(np.stack([p[1] for p in pairs])))
    return PreparedDataset(
        name="phantom",
        class_names=list(CLASS_NAMES),
        splits=splits,
        description="procedural ellipses and rectangles of equal brightness with bias field "
        "and noise; exact ground truth",
        facts={"split_sizes": dict(SPLIT_SIZES)},
    )
