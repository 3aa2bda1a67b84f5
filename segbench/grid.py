"""The grid of a run, built once from its RunConfig: training units, each measured as rows.

A unit is one training (architecture variant, seed, fold, split); its rows are the kernels
backends x deployment modes measured on the same trained weights. Units and rows are plain
frozen data, so an executor can hand them to other processes.
"""

from __future__ import annotations

import difflib
import os
from dataclasses import dataclass

from segbench.config import Mode, RunConfig, UsageError
from segbench.results import Record


@dataclass(frozen=True)
class Row:
    kernels: str  # "torch" | "triton"
    mode: Mode  # resolved for the run's device


@dataclass(frozen=True)
class Unit:
    arch: str
    variant: str
    seed: int  # the training seed: weight init, shuffling, augmentation
    split_seed: int  # draws the train/val/test split (or the folds)
    fold: int
    folds: int
    train_kernels: str
    rows: tuple[Row, ...]

    @property
    def label(self) -> str:
        fold = f", fold {self.fold + 1}/{self.folds}" if self.folds > 1 else ""
        return f"{self.variant} seed {self.seed}{fold}"


def resolve_arch_names(names: tuple[str, ...]) -> tuple[str, ...]:
    """Registered names for what the user typed: case-insensitive, 'all' for every
    architecture, duplicates dropped; an unknown name gets the closest matches."""
    from segbench.models import list_models, registered_architectures

    architectures, variants = registered_architectures(), list_models()
    resolved: list[str] = []
    for name in (n.lower() for n in names):
        if name == "all":
            found = architectures
        elif name in architectures or name in variants:
            found = [name]
        else:
            known = list(dict.fromkeys([*architectures, *variants]))
            close = difflib.get_close_matches(name, known, n=3, cutoff=0.6)
            hint = f"did you mean {' or '.join(close)}? " if close else ""
            raise UsageError(f"unknown architecture {name!r}; {hint}architectures: "
                             f"{', '.join(architectures)} (variants: segbench list)")
        resolved += [n for n in found if n not in resolved]
    return tuple(resolved)


def resolve_variants(names: tuple[str, ...], small: bool) -> list:
    """ModelSpecs: an architecture name takes the profile's variant, a variant name is taken
    as given; two names for one variant give it once."""
    from segbench.models import ARCHITECTURES, model_spec, variant_for_profile

    specs = []
    for name in resolve_arch_names(names):
        try:
            spec = variant_for_profile(name, small) if name in ARCHITECTURES else model_spec(name)
        except ValueError as e:
            raise UsageError(str(e)) from None
        if spec not in specs:
            specs.append(spec)
    return specs


def backends_for(kernels: str, device: str) -> list[str]:
    """The backends a run measures: both, or the one `kernels` names (auto resolved)."""
    from segbench.layers import KERNEL_BACKENDS, resolve_backend

    if kernels == "both":
        return list(KERNEL_BACKENDS)
    return [resolve_backend(kernels, device)]


def check_kernels(kernels: str, device: str) -> None:
    """Triton on a CPU runs only in the interpreter: for rehearsals and tests."""
    if "triton" in backends_for(kernels, device) and device != "cuda" \
            and os.environ.get("TRITON_INTERPRET") != "1":
        raise UsageError(f"--kernels {kernels} needs --device cuda, or TRITON_INTERPRET=1 in "
                         "the environment (the Triton interpreter: for rehearsals and tests)")


def rows_for(cfg: RunConfig) -> tuple[Row, ...]:
    """The rows every unit of a run is measured as: its kernels backends x deployment modes."""
    backends = backends_for(cfg.kernels, cfg.device)
    return tuple(Row(backend, mode.resolved(cfg.device))
                 for mode in dict.fromkeys(cfg.modes) for backend in backends)


def build_grid(cfg: RunConfig) -> list[Unit]:
    """Seed-major, then fold, then architecture: consecutive units share their data split."""
    specs = resolve_variants(cfg.archs, cfg.profile.small_models)
    backends = backends_for(cfg.kernels, cfg.device)
    train_kernels = "torch" if cfg.kernels == "both" else backends[0]
    rows = rows_for(cfg)
    return [Unit(spec.arch, spec.name, seed, cfg.split_seed_for(seed), fold, cfg.folds,
                 train_kernels, rows)
            for seed in cfg.seeds for fold in range(cfg.folds) for spec in specs]


def lr_sweep_label(cfg: RunConfig) -> str:
    """The row key's lr_sweep: "" without a sweep, else the lr factors tried, e.g. "0.1,1,10"."""
    if not cfg.lr_sweep:
        return ""
    from segbench.train import LR_SWEEP_FACTORS

    return ",".join(f"{factor:g}" for factor in LR_SWEEP_FACTORS)


def base_record(cfg: RunConfig, unit: Unit, row: Row) -> Record:
    """A row's identity: every field of its key, nothing measured yet."""
    return Record(
        arch=unit.arch, variant=unit.variant, kernels=row.kernels, dataset=cfg.dataset,
        image_size=cfg.profile.image_size, device=cfg.device, profile=cfg.profile.name,
        epochs=cfg.profile.epochs, recipe=cfg.recipe, lr_sweep=lr_sweep_label(cfg),
        seed=unit.seed, split_seed=unit.split_seed, fold=unit.fold, folds=unit.folds,
        mode=row.mode.label, threads=cfg.threads, train_kernels=unit.train_kernels,
        pretrained=cfg.pretrained or "", train_batch=cfg.profile.batch_size,
    )


def row_count(units: list[Unit]) -> int:
    return sum(len(unit.rows) for unit in units)
