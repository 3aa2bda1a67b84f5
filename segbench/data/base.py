"""What every dataset loader returns: 2D slices as tensors, split into train/val/test."""

from __future__ import annotations

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

    def __len__(self) -> int:
        return self.images.shape[0]


@dataclass
class PreparedDataset:
    name: str
    class_names: list[str]
    splits: dict[str, Split]  # "train", "val", "test"
    description: str  # provenance and preparation, one paragraph: goes into run.json
    spacing_mm: float | None = None  # in-plane pixel size after resizing, when known
    facts: dict = field(default_factory=dict)  # slices per orientation, split rule, ...

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def in_channels(self) -> int:
        return self.splits["train"].images.shape[1]

    def check(self) -> None:
        for name in ("train", "val", "test"):
            if name not in self.splits or len(self.splits[name]) == 0:
                raise DataError(f"dataset {self.name!r}: the {name} split is empty")
            masks = self.splits[name].masks
            if int(masks.min()) < 0 or int(masks.max()) >= self.num_classes:
                raise DataError(f"dataset {self.name!r}: {name} labels outside "
                                f"0..{self.num_classes - 1}")


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
