"""What every dataset loader returns: 2D slices as tensors, split into train/val/test."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F


class DataError(ValueError):
    """A dataset that cannot be used as given; the message names the file and the problem."""


@dataclass
class Split:
    images: torch.Tensor  # (N, C, H, W) float32, normalised
    masks: torch.Tensor  # (N, H, W) int64 label indices
    # The case each slice comes from ("axial/3": a slab of a built-in volume, an image stem, an
    # nnU-Net case id): the unit of case-level resampling. None: each slice is its own case.
    groups: list[str] | None = None
    spacing_mm: torch.Tensor | None = None  # (N, 2) float64: pixel size (dy, dx) after resizing

    def __post_init__(self) -> None:
        if self.groups is None:
            self.groups = [str(i) for i in range(len(self))]

    def __len__(self) -> int:
        return self.images.shape[0]


@dataclass
class PreparedDataset:
    name: str
    class_names: list[str]
    splits: dict[str, Split]  # "train", "val", "test"
    description: str  # provenance and preparation, one paragraph: goes into run.json
    facts: dict = field(default_factory=dict)  # slices per orientation, split rule, ...

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def in_channels(self) -> int:
        return self.splits["train"].images.shape[1]

    @property
    def spacing_mm(self) -> float | None:
        """The pixel size shared by every slice when it is one isotropic value, else None
        (unknown, or differing between slices: then see each split's `spacing_mm`)."""
        spacings = [s.spacing_mm for s in self.splits.values()]
        if any(s is None for s in spacings):
            return None
        every = torch.cat(spacings)
        first = float(every[0, 0])
        return first if bool(torch.isclose(every, every.new_tensor(first)).all()) else None

    def check(self) -> None:
        for name in ("train", "val", "test"):
            if name not in self.splits or len(self.splits[name]) == 0:
                raise DataError(f"dataset {self.name!r}: the {name} split is empty")
            split = self.splits[name]
            if int(split.masks.min()) < 0 or int(split.masks.max()) >= self.num_classes:
                raise DataError(f"dataset {self.name!r}: {name} labels outside "
                                f"0..{self.num_classes - 1}")
            if not bool(torch.isfinite(split.images).all()):
                bad = int((~torch.isfinite(split.images)).sum())
                raise DataError(f"dataset {self.name!r}: {bad} NaN or Inf values in the {name} "
                                "images")
            if len(split.groups) != len(split):
                raise DataError(f"dataset {self.name!r}: {name} has {len(split.groups)} case "
                                f"ids for {len(split)} slices")
            spacing = split.spacing_mm
            if spacing is not None and (spacing.shape != (len(split), 2)
                                        or not bool((spacing > 0).all())):
                raise DataError(f"dataset {self.name!r}: {name} pixel spacing must be positive "
                                f"(dy, dx) per slice, got shape {tuple(spacing.shape)}")


def resize_slice(image: np.ndarray, probabilities: np.ndarray,
                 size: int) -> tuple[np.ndarray, np.ndarray]:
    """Centre a (C, H, W) image and its (K, H, W) class probabilities (class 0 = background) in a
    square, resize both to size x size (bilinear), and label each pixel by its likeliest class."""
    channels, h, w = image.shape
    side = max(h, w)
    top, left = (side - h) // 2, (side - w) // 2
    square_image = np.zeros((channels, side, side), np.float32)
    square_image[:, top:top + h, left:left + w] = image
    square_prob = np.zeros((probabilities.shape[0], side, side), np.float32)
    square_prob[0] = 1.0
    square_prob[:, top:top + h, left:left + w] = probabilities
    both = torch.from_numpy(np.concatenate([square_image, square_prob]))[None]
    resized = F.interpolate(both, size=(size, size), mode="bilinear", align_corners=False)[0]
    return resized[:channels].numpy(), resized[channels:].argmax(0).numpy()


def resized_spacing(shape: tuple[int, int], spacing_mm: tuple[float, float],
                    size: int) -> tuple[float, float]:
    """Pixel size (dy, dx) in mm of a (H, W) slice with voxel sides `spacing_mm` (along H, W)
    after `resize_slice`: padding to a square of side max(H, W) keeps the voxel size, and the
    square's side, in voxels, becomes `size` pixels along both axes."""
    side = max(shape)
    return side * spacing_mm[0] / size, side * spacing_mm[1] / size


def prepared_bytes(slices: int, channels: int, size: int) -> int:
    """Bytes of prepared slices: float32 images, int64 masks and float64 spacing."""
    return slices * (size * size * (4 * channels + 8) + 16)


def bytes_text(count: float) -> str:
    return f"{count / 2**30:.1f} GiB" if count >= 2**30 else f"{math.ceil(count / 2**20)} MiB"
