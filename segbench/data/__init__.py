"""Datasets by name: `load_dataset("brain-tissue", image_size=64, seed=0)`.

A spec is `name` or `name:ARG` (e.g. `folder:/data/kvasir`). `seed` is the split seed. With
`folds=K` (K >= 2), `fold=k` takes fold k of a seeded K-fold partition of the dataset's cases
(slabs of the built-in volumes, images of `folder:`, cases of `nnunet:`) as the test split,
validating on cases of the other folds; `folds=1` is the dataset's own default split.

Prepared splits are cached on disk, keyed by the spec, size, split seed, folds, loader version
and the source files' sizes and times, so a changed source rebuilds the cache; a cache that is
unreadable or fails its checksum is rebuilt with one notice, never trusted. Every load checks
the data (labels in range, finite intensities, one case id per slice) and warns, in one line,
about a split with fewer than MIN_SLICES_PER_SPLIT slices or without some class (also listed in
`facts["split_warnings"]`); with folds, a train or test split without some class is an error.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from pathlib import Path
from types import ModuleType

import torch

from segbench.data import brain_atlas, brain_tissue, cache, folder, nnunet, phantom
from segbench.data.base import DataError, PreparedDataset, Split, bytes_text
from segbench.data.slicing import SPLIT_NAMES
from segbench.data.validate import stat_or_fail

__all__ = ["DATASETS", "DataError", "PreparedDataset", "Split", "default_cache_dir",
           "estimate_prepared_bytes", "load_dataset", "prepare_dataset", "validate_folds"]

# name -> module with build(arg, image_size, seed, folds, fold), source_files(arg) and
# estimate_bytes(arg, image_size); bump CACHE_VERSION when a loader's output changes.
DATASETS: dict[str, ModuleType] = {
    "brain-tissue": brain_tissue,
    "brain-atlas": brain_atlas,
    "phantom": phantom,
    "folder": folder,
    "nnunet": nnunet,
}
CACHE_VERSION = 2  # 2: case ids and per-slice spacing, folds, checksum
UNCACHED = {"phantom"}  # cheaper to draw than to read back
MIN_SLICES_PER_SPLIT = 5  # fewer gives a warning: too few to validate or test on


def default_cache_dir() -> Path:
    return Path(os.environ.get("SEGBENCH_CACHE", Path.home() / ".cache" / "segbench"))


def parse_spec(spec: str) -> tuple[str, str | None]:
    name, _, arg = spec.partition(":")
    if name not in DATASETS:
        raise DataError(f"unknown dataset {name!r}; valid: {', '.join(DATASETS)} "
                        "(folder:PATH and nnunet:PATH take a path)")
    return name, arg or None


def _fingerprint(files: list[Path]) -> list:
    stats = [(f, stat_or_fail(f)) for f in files]
    return [[str(f), s.st_size, s.st_mtime_ns] for f, s in stats]


def _cache_path(cache_dir: Path, name: str, arg: str | None, image_size: int, seed: int,
                folds: int, fold: int) -> Path:
    files = DATASETS[name].source_files(arg)
    key = json.dumps([name, arg, image_size, seed, folds, fold, CACHE_VERSION,
                      _fingerprint(files)])
    digest = hashlib.sha256(key.encode()).hexdigest()[:16]
    fold_part = f"-fold{fold}of{folds}" if folds > 1 else ""
    return cache_dir / f"{name}-{image_size}px-seed{seed}{fold_part}-{digest}.pt"


def estimate_prepared_bytes(spec: str, image_size: int) -> int:
    """About the peak bytes that preparing `spec` at `image_size` needs (an upper bound), from
    file headers and listings only: cheap enough to refuse a size before preparing anything."""
    name, arg = parse_spec(spec)
    return int(DATASETS[name].estimate_bytes(arg, image_size))


def _out_of_memory(spec: str, image_size: int, error: Exception) -> MemoryError:
    detail = str(error).splitlines()[0] if str(error) else type(error).__name__
    try:
        needed = f"; it needs about {bytes_text(estimate_prepared_bytes(spec, image_size))}"
    except Exception:  # noqa: BLE001  (the estimate is a courtesy; the error stands without it)
        needed = ""
    return MemoryError(f"dataset {spec} at {image_size} px: out of memory while preparing it "
                       f"({detail}){needed}; use a smaller --image-size")


def _build(spec: str, image_size: int, seed: int, folds: int, fold: int) -> PreparedDataset:
    name, arg = parse_spec(spec)
    try:
        return DATASETS[name].build(arg, image_size, seed, folds=folds, fold=fold)
    except MemoryError as e:
        raise _out_of_memory(spec, image_size, e) from None
    except RuntimeError as e:
        if "DefaultCPUAllocator" in str(e):  # torch's CPU allocation failure
            raise _out_of_memory(spec, image_size, e) from None
        raise


def split_warnings(dataset: PreparedDataset) -> list[str]:
    """Splits too small to validate or test on, and classes a split never shows."""
    warnings = []
    for name in SPLIT_NAMES:
        split = dataset.splits[name]
        if len(split) < MIN_SLICES_PER_SPLIT:
            warnings.append(f"the {name} split has {len(split)} slice(s), fewer than "
                            f"{MIN_SLICES_PER_SPLIT}")
        missing = missing_classes(dataset, name)
        if missing:
            warnings.append(f"the {name} split has no pixel of {', '.join(missing)}")
    return warnings


def missing_classes(dataset: PreparedDataset, split: str) -> list[str]:
    counts = torch.bincount(dataset.splits[split].masks.flatten(), minlength=dataset.num_classes)
    return [n for n, c in zip(dataset.class_names, counts.tolist(), strict=True) if c == 0]


def _check_fold_classes(dataset: PreparedDataset, spec: str, folds: int, fold: int) -> None:
    for split in ("train", "test"):
        missing = missing_classes(dataset, split)
        if missing:
            raise DataError(f"dataset {spec}: fold {fold} of {folds}: the {split} split has no "
                            f"pixel of {', '.join(missing)}; use fewer folds")


def prepare_dataset(spec: str, image_size: int, seed: int = 0, cache_dir: Path | None = None, *,
                    folds: int = 1, fold: int = 0) -> tuple[PreparedDataset, str]:
    """`load_dataset`, and how the cache served it: "read from the cache", "built" or
    "rebuilt: the cache ... <problem>" (data check prints it)."""
    name, arg = parse_spec(spec)
    if image_size < 16:
        raise DataError(f"image size must be at least 16 pixels, got {image_size}")
    if folds < 1 or not 0 <= fold < folds:
        raise DataError(f"dataset {spec}: fold {fold} of {folds} folds; expected folds >= 1 "
                        "and 0 <= fold < folds")
    if name in UNCACHED:
        dataset, state = _build(spec, image_size, seed, folds, fold), "built (not cached)"
    else:
        path = _cache_path(Path(cache_dir or default_cache_dir()), name, arg, image_size, seed,
                           folds, fold)
        dataset, problem = cache.read(path)
        state = "read from the cache"
        if dataset is None:
            if problem:
                print(f"segbench: cache {path} {problem}; rebuilding it", file=sys.stderr)
                path.unlink(missing_ok=True)
            dataset = _build(spec, image_size, seed, folds, fold)
            try:
                cache.save(dataset, path)
            except OSError as e:  # a full or read-only disk costs the cache, not the run
                print(f"segbench: could not write the cache {path} ({e.strerror or e}); "
                      "going on without it", file=sys.stderr)
            state = f"rebuilt: the cache {problem}" if problem else "built"
    dataset.check()
    if folds > 1:
        _check_fold_classes(dataset, spec, folds, fold)
    dataset.facts["split"] = {"seed": seed, "folds": folds, "fold": fold}
    dataset.facts["split_warnings"] = split_warnings(dataset)
    if dataset.facts["split_warnings"]:
        print(f"segbench: warning: dataset {dataset.name}"
              + (f" fold {fold} of {folds}" if folds > 1 else "")
              + ": " + "; ".join(dataset.facts["split_warnings"]), file=sys.stderr)
    return dataset, state


def load_dataset(spec: str, image_size: int, seed: int = 0, cache_dir: Path | None = None, *,
                 folds: int = 1, fold: int = 0) -> PreparedDataset:
    return prepare_dataset(spec, image_size, seed, cache_dir, folds=folds, fold=fold)[0]


def validate_folds(spec: str, image_size: int, seed: int, folds: int,
                   cache_dir: Path | None = None) -> list[dict[str, int]]:
    """Prepare (and cache) every fold, so that a fold the dataset cannot honour (more folds
    than cases, a train or test split without some class) fails, as one DataError line,
    before any training. Returns the slices per split of each fold."""
    sizes = []
    for fold in range(folds):
        dataset = load_dataset(spec, image_size, seed, cache_dir, folds=folds, fold=fold)
        sizes.append({name: len(split) for name, split in dataset.splits.items()})
    return sizes
