"""`segbench data check DATASET`: load a dataset, with every check, and describe what came out."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from segbench.data import prepare_dataset
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


def _spacing_text(dataset: PreparedDataset) -> str:
    spacings = [s.spacing_mm for s in dataset.splits.values()]
    if any(s is None for s in spacings):
        return "unknown (mm metrics unavailable)"
    every = torch.cat(spacings)
    if dataset.spacing_mm is not None:
        return f"{dataset.spacing_mm:.4g} mm per pixel"
    return (f"{float(every.min()):.4g}-{float(every.max()):.4g} mm per pixel (per slice, "
            "dy and dx)")


def summarize(spec: str, image_size: int, seed: int, cache_dir: Path | None = None, *,
              folds: int = 1, fold: int = 0) -> str:
    dataset, cache_state = prepare_dataset(spec, image_size, seed, cache_dir, folds=folds,
                                           fold=fold)
    first = dataset.splits["train"].images
    split = f"seed {seed}" + (f", fold {fold} of {folds}" if folds > 1 else "")
    if cache_state.startswith("rebuilt"):  # never "checks passed" next to a broken cache
        verdict = (f"{cache_state.replace('rebuilt: ', 'rebuilt from its sources, because ')}"
                   "; the rebuilt data passes every check")
    else:
        verdict = f"checks passed (data {cache_state})"
    lines = [
        f"dataset {dataset.name}: {verdict}",
        f"  {dataset.description}",
        f"image size {image_size} px, {dataset.in_channels} channel(s), {first.dtype}; "
        f"split {split}; pixel spacing {_spacing_text(dataset)}",
        "slices per split: " + ", ".join(f"{s} {len(dataset.splits[s])}" for s in SPLIT_NAMES),
        "cases per split: " + ", ".join(f"{s} {len(set(dataset.splits[s].groups))}"
                                        for s in SPLIT_NAMES),
        f"classes ({dataset.num_classes}) and their share of pixels per split:",
        *_frequency_table(dataset),
        "facts:",
        *(f"  {key}: {json.dumps(value)}" for key, value in dataset.facts.items()),
    ]
    return "\n".join(lines)
