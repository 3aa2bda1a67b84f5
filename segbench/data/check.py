"""`segbench data check DATASET`: load a dataset, with every check, and describe what came out."""

from __future__ import annotations

import json

import torch

from segbench.data import load_dataset
from segbench.data.base import PreparedDataset
from segbench.data.slicing import SPLIT_NAMES


def class_frequencies(dataset: PreparedDataset, split: str) -> list[float]:
    """Fraction of the split's pixels in each class."""
    masks = dataset.splits[split].masks
    counts = torch.bincount(masks.flatten(), minlength=dataset.num_classes)
    return (counts.double() / masks.numel()).tolist()


def _frequency_table(dataset: PreparedDataset) -> list[str]:
    width = max(len(name) for name in dataset.class_names)
    lines = [f"  {'class':<{width + 4}}" + "".join(f"{s:>9}" for s in SPLIT_NAMES)]
    frequencies = {s: class_frequencies(dataset, s) for s in SPLIT_NAMES}
    for index, name in enumerate(dataset.class_names):
        row = "".join(f"{100 * frequencies[s][index]:8.2f}%" for s in SPLIT_NAMES)
        lines.append(f"  {index:>2} {name:<{width + 1}}{row}")
    for s in SPLIT_NAMES:
        absent = [n for n, f in zip(dataset.class_names, frequencies[s], strict=True) if f == 0]
        if absent:
            lines.append(f"  note: never in the {s} split: {', '.join(absent)}")
    return lines


def summarize(spec: str, image_size: int, seed: int) -> str:
    dataset = load_dataset(spec, image_size=image_size, seed=seed)
    first = dataset.splits["train"].images
    spacing = (f"{dataset.spacing_mm} mm per pixel" if dataset.spacing_mm is not None
               else "unknown (mm metrics unavailable)")
    lines = [
        f"dataset {dataset.name}: checks passed",
        f"  {dataset.description}",
        f"image size {image_size} px, {dataset.in_channels} channel(s), {first.dtype}; "
        f"seed {seed}; pixel spacing {spacing}",
        "slices per split: " + ", ".join(f"{s} {len(dataset.splits[s])}" for s in SPLIT_NAMES),
        f"classes ({dataset.num_classes}) and their share of pixels per split:",
        *_frequency_table(dataset),
        "facts:",
        *(f"  {key}: {json.dumps(value)}" for key, value in dataset.facts.items()),
    ]
    return "\n".join(lines)
