"""Trained weights kept in a run folder, so that its rows can be measured again without
training (`segbench measure`).

One file per training unit, `weights/<variant>_seed<S>_fold<F>_<digest>.pt` (the digest is of
the unit's identity: every row-key field a training shares), written with torch.save and read
with `weights_only=True`. It holds the state_dict of the best validation epoch, what
create_model needs to rebuild the model (variant, classes, input channels), the unit, the
study of the folder (dataset, device, profile) and the facts of the training (params, FLOPs,
training time, best epoch, baseline, per-epoch history), which re-measured rows carry again.
"""

from __future__ import annotations

import hashlib
import io
import json
from dataclasses import dataclass
from pathlib import Path

import torch

from segbench.config import Profile, RunConfig, UsageError
from segbench.grid import Row, Unit
from segbench.models import create_model
from segbench.results import Record
from segbench.store import differences, json_safe, weights_paths

FORMAT = 1
DEFAULT_MAX_MB = 100  # without --save-weights/--no-save-weights: kept up to this size (fp32)


def state_mb(state: dict) -> float:
    return sum(t.numel() * t.element_size() for t in state.values()) / 2**20


def should_save(cfg: RunConfig, state: dict) -> bool:
    return cfg.save_weights if cfg.save_weights is not None else \
        state_mb(state) <= DEFAULT_MAX_MB


IDENTITY_FIELDS = ("arch", "variant", "seed", "split_seed", "fold", "folds", "train_kernels",
                   "recipe", "lr_sweep", "pretrained", "threads")


def identity(record: Record) -> dict:
    """The training a row was measured from: every row-key field that one training fixes,
    besides the folder's study."""
    return {name: getattr(record, name) for name in IDENTITY_FIELDS}


def file_name(identity: dict) -> str:
    digest = hashlib.sha1(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:8]
    return f"{identity['variant']}_seed{identity['seed']}_fold{identity['fold']}_{digest}.pt"


def encode(study: dict, identity: dict, model: dict, facts: dict, history: list[dict],
           state: dict) -> bytes:
    """The bytes of one weights file (see the module docstring)."""
    payload = {"format": FORMAT, "study": json_safe(study), "unit": identity, "model": model,
               "facts": json_safe(facts), "history": json_safe(history), "state_dict": state}
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    return buffer.getvalue()


@dataclass(frozen=True)
class SavedUnit:
    """One weights file, read back."""

    path: Path  # as found under the source folder
    name: str  # relative to that folder, e.g. weights/unet-small_seed0_fold0_1a2b3c4d.pt
    payload: dict

    @property
    def identity(self) -> dict:
        return self.payload["unit"]

    @property
    def model(self) -> dict:
        return self.payload["model"]

    def unit(self, rows: tuple[Row, ...]) -> Unit:
        fields = ("arch", "variant", "seed", "split_seed", "fold", "folds", "train_kernels")
        return Unit(**{key: self.identity[key] for key in fields}, rows=rows)

    def build(self) -> torch.nn.Module:
        """The trained model, rebuilt with create_model and loaded strictly."""
        model = create_model(self.model["variant"], self.model["num_classes"],
                             self.model["in_channels"])
        model.load_state_dict(self.payload["state_dict"])
        return model


def _read(path: Path) -> dict:
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001  (unpickling raises many kinds)
        raise UsageError(f"{path} cannot be read as saved weights "
                         f"({str(e).strip().splitlines()[0][:160]})") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise UsageError(f"{path} is not a segbench weights file (format {FORMAT})")
    return payload


def load_saved(folder: Path, study: dict) -> list[SavedUnit]:
    """Every weights file of a run folder, each checked against the folder's study and
    against the model it names; any mismatch is one line, before anything is measured."""
    paths = weights_paths(folder)
    if not paths:
        raise UsageError(f"{folder} holds no saved weights (weights/*.pt); segbench run keeps "
                         "them for small models by default, for every model with "
                         "--save-weights")
    saved = []
    for path in paths:
        unit = SavedUnit(path, f"{path.parent.name}/{path.name}", _read(path))
        differs = differences(unit.payload["study"], study, "in the weights", "in run.json")
        if differs:
            raise UsageError(f"{path} holds weights of another config: {'; '.join(differs)}")
        try:
            unit.build()
        except (RuntimeError, ValueError, KeyError) as e:
            raise UsageError(f"{path} holds weights of another config: they do not fit "
                             f"{unit.model['variant']} with {unit.model['num_classes']} classes "
                             f"and {unit.model['in_channels']} channel(s) "
                             f"({str(e).strip().splitlines()[0][:160]})") from None
        saved.append(unit)
    return saved


def check_data(saved: list[SavedUnit], num_classes: int, in_channels: int,
               dataset: str) -> None:
    """The data the rows are measured on must be what the weights were trained for."""
    for unit in saved:
        expected = (unit.model["num_classes"], unit.model["in_channels"])
        if expected != (num_classes, in_channels):
            raise UsageError(f"{unit.path} holds weights of another config: "
                             f"{expected[0]} classes and {expected[1]} channel(s), but "
                             f"{dataset} gives {num_classes} and {in_channels} now")


def profile_of(study: dict) -> Profile:
    """The Profile a run folder's study names (run.json keeps it as a dict)."""
    fields = dict(study["profile"])
    fields["throughput_batches"] = tuple(fields["throughput_batches"])
    try:
        return Profile(**fields)
    except TypeError as e:
        raise UsageError(f"run.json's profile is not one this segbench knows ({e})") from None


def model_config(variant: str, num_classes: int, in_channels: int) -> dict:
    return {"variant": variant, "num_classes": num_classes, "in_channels": in_channels}
