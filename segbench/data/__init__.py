"""Datasets by name: `load_dataset("brain-tissue", image_size=64, seed=0)`.

A spec is `name` or `name:ARG` (e.g. `folder:/data/kvasir`). Prepared slices are cached on disk,
keyed by the spec, size, seed, loader version and the source files' sizes and times, so a
changed source rebuilds the cache; an unreadable cache is rebuilt, never trusted.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from dataclasses import asdict
from pathlib import Path
from types import ModuleType

import torch

from segbench.data import brain_atlas, brain_tissue, folder, nnunet, phantom
from segbench.data.base import DataError, PreparedDataset, Split

__all__ = ["DATASETS", "DataError", "PreparedDataset", "Split", "default_cache_dir", "load_dataset"]

# name -> module with build(arg, image_size, seed) and source_files(arg); bump VERSION of a
# loader's preparation by editing CACHE_VERSION when its output changes.
DATASETS: dict[str, ModuleType] = {
    "brain-tissue": brain_tissue,
    "brain-atlas": brain_atlas,
    "phantom": phantom,
    "folder": folder,
    "nnunet": nnunet,
}
CACHE_VERSION = 1
UNCACHED = {"phantom"}  # cheaper to draw than to read back


def default_cache_dir() -> Path:
    return Path(os.environ.get("SEGBENCH_CACHE", Path.home() / ".cache" / "segbench"))


def parse_spec(spec: str) -> tuple[str, str | None]:
    name, _, arg = spec.partition(":")
    if name not in DATASETS:
        raise DataError(f"unknown dataset {name!r}; valid: {', '.join(DATASETS)} "
                        "(folder:PATH and nnunet:PATH take a path)")
    return name, arg or None


def _fingerprint(files: list[Path]) -> list:
    return [[str(f), f.stat().st_size, f.stat().st_mtime_ns] for f in files]


def _cache_path(cache_dir: Path, name: str, arg: str | None, image_size: int, seed: int) -> Path:
    files = DATASETS[name].source_files(arg)
    key = json.dumps([name, arg, image_size, seed, CACHE_VERSION, _fingerprint(files)])
    digest = hashlib.sha256(key.encode()).hexdigest()[:16]
    return cache_dir / f"{name}-{image_size}px-seed{seed}-{digest}.pt"


def _save(dataset: PreparedDataset, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = asdict(dataset)
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    torch.save(payload, tmp)
    tmp.replace(path)  # atomic: a crash never leaves a half-written cache under the real name


def _load(path: Path) -> PreparedDataset | None:
    if not path.is_file():
        return None
    try:
        payload = torch.load(path, weights_only=True)
        payload["splits"] = {k: Split(**v) for k, v in payload["splits"].items()}
        dataset = PreparedDataset(**payload)
        dataset.check()
        return dataset
    except Exception as e:  # any unreadable or inconsistent cache is rebuilt
        print(f"segbench: cache {path} is unreadable ({type(e).__name__}); rebuilding it",
              file=sys.stderr)
        path.unlink(missing_ok=True)
        return None


def load_dataset(spec: str, image_size: int, seed: int = 0,
                 cache_dir: Path | None = None) -> PreparedDataset:
    name, arg = parse_spec(spec)
    if image_size < 16:
        raise DataError(f"image size must be at least 16 pixels, got {image_size}")
    if name in UNCACHED:
        dataset = DATASETS[name].build(arg, image_size, seed)
    else:
        path = _cache_path(Path(cache_dir or default_cache_dir()), name, arg, image_size, seed)
        dataset = _load(path)
        if dataset is None:
            dataset = DATASETS[name].build(arg, image_size, seed)
            _save(dataset, path)
    dataset.check()
    return dataset
