"""Checks that the folder and nnU-Net loaders run on every file before any training.

Each check raises a DataError of one line that names the file (or folder) and the problem:
a missing mask or image, a size mismatch, labels outside the declared classes, a mask that
is not integer-valued, NaN/Inf intensities, an unreadable file, a symbolic link that loops or
points nowhere, an empty split.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import numpy as np

from segbench.data.base import DataError

T = TypeVar("T")


def fail(path: Path | str, problem: str) -> DataError:
    return DataError(f"{path}: {problem}")


def read_or_fail(read: Callable[[Path], T], path: Path, what: str) -> T:
    """`read(path)`, with any failure to read or decode it turned into one DataError line."""
    try:
        return read(path)
    except DataError:
        raise
    except Exception as e:
        detail = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise fail(path, f"unreadable {what} ({detail})") from e


def stat_or_fail(path: Path) -> os.stat_result:
    """`path.stat()`, with a symlink loop, a dangling symlink or any other failure as one line."""
    try:
        return path.stat()
    except OSError as e:
        if e.errno == errno.ELOOP:
            problem = "symbolic link loop (the link resolves to itself)"
        elif path.is_symlink():
            problem = f"dangling symbolic link (its target {os.readlink(path)} does not exist)"
        else:
            problem = f"cannot be read ({e.strerror})"
        raise fail(path, problem) from None


def pair_by_key(images: dict[str, Path], masks: dict[str, Path], images_dir: Path,
                masks_dir: Path) -> list[tuple[str, Path, Path]]:
    """(key, image, mask) for every key, sorted; a key on one side only is an error."""
    for key, image in sorted(images.items()):
        if key not in masks:
            raise fail(image, f"no mask for this image in {masks_dir}")
    for key, mask in sorted(masks.items()):
        if key not in images:
            raise fail(mask, f"no image for this mask in {images_dir}")
    return [(key, images[key], masks[key]) for key in sorted(images)]


def check_same_shape(image_path: Path, image_shape: tuple, mask_path: Path,
                     mask_shape: tuple) -> None:
    if tuple(image_shape) != tuple(mask_shape):
        raise fail(mask_path, f"size {tuple(mask_shape)} differs from its image's "
                              f"{tuple(image_shape)} ({image_path.name})")


def check_finite(image: np.ndarray, path: Path) -> None:
    if not np.isfinite(image).all():
        bad = int((~np.isfinite(image)).sum())
        raise fail(path, f"{bad} NaN or Inf intensities")


def integer_labels(mask: np.ndarray, path: Path) -> np.ndarray:
    """The mask as int64 label indices; fractional or negative values are an error."""
    if not np.issubdtype(mask.dtype, np.integer) and mask.dtype != bool:
        if not np.isfinite(mask).all() or (mask != np.round(mask)).any():
            raise fail(path, "mask holds non-integer values; expected label indices")
    labels = mask.astype(np.int64)
    if labels.size and labels.min() < 0:
        raise fail(path, f"mask holds negative label {int(labels.min())}")
    return labels


def check_label_range(labels: np.ndarray, num_classes: int, path: Path, declared_in: str) -> None:
    outside = np.unique(labels[labels >= num_classes])
    if outside.size:
        shown = ", ".join(str(v) for v in outside[:5]) + (" ..." if outside.size > 5 else "")
        raise fail(path, f"label values {shown} outside the {num_classes} classes "
                         f"0..{num_classes - 1} declared in {declared_in}")


def check_splits_nonempty(counts: dict[str, int], where: Path | str, unit: str) -> None:
    for split, count in counts.items():
        if count == 0:
            raise fail(where, f"the {split} split has no {unit}")
