"""Runs the grid: train each unit, measure its rows, hand every record to the one writer.

`train_unit` and `measure_unit` are pure: plain data in, records out, nothing written, no
global state beyond torch's thread count. `run` checks the grid, then an executor calls them:
`InProcess` (the default) one unit after another here, or `segbench.distributed.RayExecutor`
on Ray workers; either way the records come back to `run`, the folder's only writer. A
failure, an out-of-memory or a diverged training becomes a recorded row and the run goes on;
rows already finished in the output folder are skipped, so re-running the same command
resumes.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, closing, contextmanager, nullcontext
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Protocol

import torch
from torch import nn
from tqdm.auto import tqdm

from segbench import results, weights
from segbench.config import RunConfig
from segbench.data import PreparedDataset, Split, load_dataset, validate_folds
from segbench.errors import TrainingDiverged
from segbench.grid import Unit, base_record, build_grid, resolve_variants, row_count, rows_for
from segbench.layers import set_kernels
from segbench.measure.accuracy import (
    accuracy,
    case_scores,
    majority_baseline,
    pixel_prior,
    pixel_prior_baseline,
)
from segbench.measure.boundary import boundary_metrics
from segbench.measure.conditions import pinned_cores
from segbench.measure.context import MeasureContext, MeasureInputs
from segbench.measure.device import cpu_name, device_facts
from segbench.measure.flops import count_flops, count_params
from segbench.measure.latency import latency
from segbench.measure.memory import (
    inference_memory,
    is_out_of_memory,
    memory_method,
    training_memory,
)
from segbench.measure.modes import Deployed, deployed
from segbench.measure.sweep import batch_sweep
from segbench.measure.throughput import throughput
from segbench.measure.timing import method_description, row_verdict
from segbench.measure.training_speed import training_speed
from segbench.models import create_model
from segbench.preflight import check_dataset_memory, check_models
from segbench.recipes import Recipe, recipe_for
from segbench.store import RunFolder, check_folder, finished_keys, open_run_folder
from segbench.train import TrainResult, converged, fit, lr_sweep

NSD_TOLERANCE_PX = 1.0
COST_MEASUREMENTS = (latency, throughput, inference_memory, training_memory, training_speed,
                     batch_sweep)


@dataclass(frozen=True)
class UnitContext:
    """What a unit's work needs besides the unit: the run's config and the unit's data."""

    cfg: RunConfig
    data: PreparedDataset


@dataclass
class Trained:
    """What training a unit gives its rows: the best weights and the facts every row shares."""

    facts: dict  # columns: params, FLOPs, recipe, train time, best epoch, baselines
    state: dict | None  # the best epoch's state_dict on the CPU; None when training failed
    history: list[dict] = field(default_factory=list)  # one dict per epoch
    status: str = "ok"
    reason: str = ""


def study_of(cfg: RunConfig) -> dict:
    """What every row of one run folder shares; a run with other values needs another --out."""
    return {"dataset": cfg.dataset, "device": cfg.device, "profile": asdict(cfg.profile)}


def load_unit_data(cfg: RunConfig, unit: Unit, image_size: int | None = None) -> PreparedDataset:
    """The one call that prepares a unit's data (its split seed and fold)."""
    return load_dataset(cfg.dataset, image_size or cfg.profile.image_size, unit.split_seed,
                        cfg.cache_dir, folds=unit.folds, fold=unit.fold)


def check_folds(cfg: RunConfig, units: list[Unit]) -> None:
    """Prepare every fold of every split seed the units need, so that folds the data cannot
    honour (more folds than cases, a fold without some class) fail in one line before
    anything is trained or written."""
    if cfg.folds == 1:
        return
    for split_seed in dict.fromkeys(unit.split_seed for unit in units):
        validate_folds(cfg.dataset, cfg.profile.image_size, split_seed, cfg.folds,
                       cfg.cache_dir)


class SplitData:
    """The prepared data of the last split asked for: consecutive units share their split."""

    def __init__(self) -> None:
        self._split: tuple | None = None
        self._data: PreparedDataset | None = None

    def of(self, cfg: RunConfig, unit: Unit) -> PreparedDataset:
        split = (unit.split_seed, unit.fold)
        if split != self._split or self._data is None:
            self._data = None  # let the previous split go before preparing the next
            self._data = load_unit_data(cfg, unit)
            self._split = split
        return self._data


def failure_status(error: BaseException) -> str:
    if isinstance(error, TrainingDiverged):
        return "diverged"
    return "oom" if is_out_of_memory(error) else "error"


def _reason(error: BaseException) -> str:
    return f"{type(error).__name__}: {error}"


def _release_device_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()


def unit_recipe(cfg: RunConfig, unit: Unit) -> Recipe:
    return recipe_for(unit.arch, cfg.recipe, cfg.profile)


def recipe_facts(recipe: dict) -> dict:
    """The row's recipe columns from `Recipe.to_json()`."""
    return {"recipe_name": recipe["name"], "optimizer": recipe["optimizer"], "lr": recipe["lr"],
            "weight_decay": recipe["weight_decay"], "recipe_description": recipe["description"]}


def baseline_facts(data: PreparedDataset) -> dict:
    """What the two baselines score on the test split."""
    train, test, classes = data.splits["train"], data.splits["test"], data.num_classes
    return {"majority_baseline_mdice": majority_baseline(train, test, classes)["mdice"],
            "pixel_prior_baseline_mdice": pixel_prior_baseline(train, test, classes)["mdice"]}


def baseline_cases(data: PreparedDataset) -> list[dict]:
    """The pixel prior's scores per test case (for the summary's baseline interval)."""
    train, test, classes = data.splits["train"], data.splits["test"], data.num_classes
    prior = pixel_prior(train, classes).expand_as(test.masks)
    return case_scores(prior, test, classes, NSD_TOLERANCE_PX)


def _new_model(unit: Unit, cfg: RunConfig, data: PreparedDataset) -> nn.Module:
    """The unit's model, freshly initialised from its seed, with its training backend."""
    torch.manual_seed(unit.seed)
    model = create_model(unit.variant, data.num_classes, data.in_channels,
                         pretrained=cfg.pretrained)
    return set_kernels(model, unit.train_kernels).to(torch.device(cfg.device))


def _train(model: nn.Module, unit: Unit, ctx: UnitContext,
           recipe: Recipe) -> tuple[nn.Module, TrainResult, dict]:
    """Train with the recipe, or with --lr-sweep pick its lr among LR_SWEEP_FACTORS x lr on
    the validation split (a fresh model from the unit's seed for each); returns the trained
    model, its result and what the sweep tried."""
    cfg, data = ctx.cfg, ctx.data
    device = torch.device(cfg.device)
    if not cfg.lr_sweep:
        return model, fit(model, data, cfg.profile, device, unit.seed, desc=unit.label,
                          recipe=recipe), {}
    sweep = lr_sweep(lambda: _new_model(unit, cfg, data), data, cfg.profile, device,
                     unit.seed, recipe, desc=unit.label)
    tried = " ".join(f"{t['lr']:g}:{t['best_val_mdice']:.4f}" if t["status"] == "ok"
                     else f"{t['lr']:g}:{t['status']}" for t in sweep.tried)
    return sweep.model, sweep.result, {"lr_tried": tried}


def train_unit(unit: Unit, ctx: UnitContext) -> Trained:
    """Count the model's FLOPs, train it with its recipe, and return its best weights and
    facts."""
    cfg, data = ctx.cfg, ctx.data
    device = torch.device(cfg.device)
    torch.set_num_threads(cfg.threads)
    recipe = unit_recipe(cfg, unit)
    facts = {**baseline_facts(data), **recipe_facts(recipe.to_json())}
    try:
        model = _new_model(unit, cfg, data)
        image_shape = (data.in_channels, cfg.profile.image_size, cfg.profile.image_size)
        flops = count_flops(model, torch.randn(1, *image_shape, device=device))
        facts.update(params_m=count_params(model) / 1e6, gflops=flops["gflops"],
                     flops_uncounted_ops=flops["flops_uncounted_ops"])
        model, outcome, sweep = _train(model, unit, ctx, recipe)
    except Exception as e:  # noqa: BLE001  (any failure becomes the unit's rows; the run goes on)
        _release_device_memory(device)
        return Trained(facts, None, status=failure_status(e), reason=_reason(e))
    facts.update(train_time_s=outcome.train_time_s, best_epoch=outcome.best_epoch,
                 best_val_mdice=outcome.best_val_mdice, converged=converged(outcome.history),
                 **recipe_facts(outcome.recipe), **sweep)
    state = {name: tensor.detach().cpu().clone() for name, tensor in model.state_dict().items()}
    return Trained(facts, state, outcome.history)


def measure_unit(unit: Unit, trained: Trained, ctx: UnitContext) -> list[results.Record]:
    """Every row of a trained unit: accuracy on the same weights, then cost, for each
    kernels backend (switched in place) and deployment mode."""
    cfg, data = ctx.cfg, ctx.data
    records = [base_record(cfg, unit, row) for row in unit.rows]
    prior_cases = baseline_cases(data)
    for record in records:
        record.update(trained.facts)
        record.tables.update(history=trained.history, baseline_cases=prior_cases)
    if trained.state is None:
        for record in records:
            record.failed(trained.status, trained.reason)
        return records
    torch.set_num_threads(cfg.threads)
    device = torch.device(cfg.device)
    model = create_model(unit.variant, data.num_classes, data.in_channels)
    model.load_state_dict(trained.state)
    model.to(device)
    inputs = measure_inputs(data, cfg, unit_recipe(cfg, unit))
    torch_labels: dict[str, torch.Tensor] = {}  # per mode: the torch row's test labels
    for record, row in zip(records, unit.rows, strict=True):
        mctx = MeasureContext.build(device, row.mode, cfg.profile, row.kernels, cfg.threads,
                                    cfg.batch_sweep)
        record.dtype = mctx.dtype_description
        try:
            set_kernels(model, row.kernels)
            columns, tables, labels = measure_row(model, inputs, mctx,
                                                  torch_labels.get(row.mode.label))
        except Exception as e:  # noqa: BLE001  (a mode the model cannot take is a row too)
            _release_device_memory(device)
            record.failed(failure_status(e), _reason(e))
            continue
        record.update(columns)
        record.tables.update(tables)
        if row.kernels == "torch":
            torch_labels[row.mode.label] = labels
    return records


def placement(device: torch.device) -> tuple[str, str]:
    """Where this process computes: its host (and physical GPU), and the device's name."""
    host = socket.gethostname()
    if device.type != "cuda":
        return host, cpu_name()
    index = torch.cuda.current_device() if device.index is None else device.index
    visible = os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",")  # Ray sets it per task
    physical = visible[index] if index < len(visible) and visible[index] else str(index)
    return f"{host} GPU {physical}", torch.cuda.get_device_name(index)


def train_placed(unit: Unit, ctx: UnitContext) -> Trained:
    """`train_unit`, with the place it trained on among the facts of its rows."""
    trained = train_unit(unit, ctx)
    trained.facts["trained_on"] = placement(torch.device(ctx.cfg.device))[0]
    return trained


def measure_placed(unit: Unit, trained: Trained, ctx: UnitContext,
                   ray_node: str = "") -> list[results.Record]:
    """`measure_unit`, each row saying where it was measured: host (and GPU), the device's
    name and the Ray node id (empty in process)."""
    measured_on, device_name = placement(torch.device(ctx.cfg.device))
    records = measure_unit(unit, trained, ctx)
    for record in records:
        record.update({"measured_on": measured_on, "device_name": device_name,
                       "ray_node": ray_node})
    return records


def measure_inputs(data: PreparedDataset, cfg: RunConfig, recipe: Recipe) -> MeasureInputs:
    train, batch = data.splits["train"], cfg.profile.batch_size
    return MeasureInputs(
        image_shape=(data.in_channels, cfg.profile.image_size, cfg.profile.image_size),
        test=data.splits["test"], train_images=train.images[:batch],
        train_masks=train.masks[:batch], num_classes=data.num_classes, recipe=recipe)


def measure_row(model: nn.Module, inputs: MeasureInputs, ctx: MeasureContext,
                torch_labels: torch.Tensor | None,
                ) -> tuple[dict, dict[str, list[dict]], torch.Tensor]:
    """The row's columns and tables (scores per test case, timing, sweep), and its test
    labels (the reference for the triton row), with the model deployed in the row's mode.
    The cost measurements run with this process's threads pinned to fixed cores."""
    with deployed(model, ctx) as deployed_model:
        scores, labels = accuracy(deployed_model, inputs.test, inputs.num_classes, ctx)
        columns = {
            "miou": scores["miou"], "mdice": scores["mdice"],
            "pixel_accuracy": scores["pixel_accuracy"],
            "iou_per_class": " ".join(map(str, scores["iou_per_class"])),
            "dice_per_class": " ".join(map(str, scores["dice_per_class"])),
            **boundary_columns(labels, inputs.test, inputs.num_classes),
        }
        if torch_labels is not None and ctx.kernels != "torch":
            columns["agrees_with_torch"] = float((labels == torch_labels).float().mean())
        tables = {"cases": case_scores(labels, inputs.test, inputs.num_classes,
                                       NSD_TOLERANCE_PX)}
        bar = tqdm(COST_MEASUREMENTS, desc=f"measure [{ctx.kernels}, {ctx.mode.label}]",
                   unit="phase", leave=False)
        with pinned_cores(ctx.threads):
            for measure in bar:
                for name, value in measure(deployed_model, inputs, ctx).items():
                    if isinstance(value, list):
                        tables.setdefault(name, []).extend(value)
                    else:
                        columns[name] = value
        if isinstance(deployed_model, Deployed):
            columns["compile_s"] = deployed_model.compile_s
    columns.update(row_verdict(tables.get("timing", []), columns))
    return columns, tables, labels


def boundary_columns(pred: torch.Tensor, split: Split, num_classes: int) -> dict:
    """Boundary metrics of the predicted labels against the split's masks, in mm from each
    slice's own pixel size (dy, dx) where the split knows it."""
    scores = boundary_metrics(pred, split.masks, num_classes, split.spacing_mm, NSD_TOLERANCE_PX)
    columns = {key: scores[key] for key in ("hd95_px", "asd_px", "nsd", "nsd_tolerance_px")}
    for key in ("hd95_px_per_class", "nsd_per_class"):
        columns[key] = " ".join(f"{v:.4g}" for v in scores[key])
    columns["boundary_empty_cases"] = " ".join(
        f"{kind}={sum(scores[f'{kind}_per_class'])}"
        for kind in ("both_empty", "pred_empty", "target_empty"))
    for key in ("hd95_mm", "asd_mm"):
        if scores[key] is not None:
            columns[key] = scores[key]
    return columns


def shared_manifest(cfg: RunConfig, data: PreparedDataset) -> dict:
    """What run.json says once for the whole folder: the study, the data and the methods."""
    device = torch.device(cfg.device)
    return {
        "study": study_of(cfg),
        "dataset": {"name": data.name, "classes": data.class_names,
                    "spacing_mm": data.spacing_mm, "description": data.description},
        "method": {
            "timer": "CUDA events" if device.type == "cuda" else "time.perf_counter",
            "timing": method_description(),
            "memory": memory_method(device),
            "accuracy": "test split; IoU/Dice per class from one confusion matrix; mIoU and "
                        "mDice average the foreground classes; weights of the best val epoch",
            "boundary": f"per 2D test slice and foreground class: HD95, average symmetric "
                        f"surface distance, normalised surface Dice at {NSD_TOLERANCE_PX} px; "
                        "one region empty = image diagonal / NSD 0, both empty = skipped; mm "
                        "from each slice's own pixel size (dy, dx) after resizing, blank where "
                        "the data has none (segbench.measure.boundary)",
        },
    }


def start_manifest(cfg: RunConfig, executor: dict) -> dict:
    """What run.json says about one start: its configuration, environment, executor and the
    recipe of each architecture (before an lr sweep; each row holds the lr it trained with)."""
    archs = dict.fromkeys(unit.arch for unit in build_grid(cfg))
    return {"config": cfg.to_json(),
            "environment": results.environment(device_facts(torch.device(cfg.device))),
            "executor": executor,
            "recipes": {arch: recipe_for(arch, cfg.recipe, cfg.profile).to_json()
                        for arch in archs}}


class Progress:
    """`unit 3/11` with the ETA of the remaining units, from the ones done in this start."""

    def __init__(self, total: int):
        self.total, self.done, self.started = total, 0, time.perf_counter()

    def line(self, unit: Unit) -> str:
        eta = ""
        if self.done:
            per_unit = (time.perf_counter() - self.started) / self.done
            eta = f", ETA {_duration(per_unit * (self.total - self.done))} for the rest"
        return f"segbench: unit {self.done + 1}/{self.total}: {unit.label}{eta}"


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def _print_line(line: str) -> None:
    tqdm.write(line)  # between progress bars, not through them


def pending_units(cfg: RunConfig, units: list[Unit], finished: set[tuple]) -> list[Unit]:
    """The units with rows still to do, each with only those rows."""
    pending = [replace(unit, rows=tuple(row for row in unit.rows
                                        if base_record(cfg, unit, row).key not in finished))
               for unit in units]
    return [unit for unit in pending if unit.rows]


class Executor(Protocol):
    """Runs units and hands their records back; `run` writes them."""

    def started(self, cfg: RunConfig) -> AbstractContextManager[dict]:
        """Holds the executor's resources (a Ray connection) for the block; gives what
        run.json records about it. Raises UsageError when it cannot start."""

    def records(self, cfg: RunConfig, units: list[Unit], data: SplitData,
                log: Callable[[str], None],
                keep: Callable[[Unit, Trained], None]) -> Iterator[results.Record]:
        """Every row of every unit, as each is done, in any order; `keep` is called in this
        process with each finished training, before its rows (the weights to keep)."""


class InProcess:
    """The default executor: each unit in this process, one after another."""

    @contextmanager
    def started(self, cfg: RunConfig) -> Iterator[dict]:
        yield {"name": "in-process"}

    def records(self, cfg: RunConfig, units: list[Unit], data: SplitData,
                log: Callable[[str], None],
                keep: Callable[[Unit, Trained], None]) -> Iterator[results.Record]:
        progress = Progress(len(units))
        for unit in units:
            ctx = UnitContext(cfg, data.of(cfg, unit))
            log(progress.line(unit))
            trained = train_placed(unit, ctx)
            keep(unit, trained)
            yield from measure_placed(unit, trained, ctx)
            progress.done += 1


def run(cfg: RunConfig, log: Callable[[str], None] = _print_line,
        executor: Executor | None = None) -> Iterator[results.Record]:
    """Check everything, then let the executor train and measure each unit not yet finished
    in cfg.out_dir, writing and yielding each record as it comes back."""
    executor = executor or InProcess()
    units = build_grid(cfg)
    study = study_of(cfg)
    check_folder(cfg.out_dir, study)
    data = SplitData()
    todo = pending_units(cfg, units, finished_keys(cfg.out_dir))
    if todo:
        first = todo[0]
        check_dataset_memory(cfg, lambda size: load_unit_data(cfg, first, size))
        check_folds(cfg, todo)
        specs = resolve_variants(tuple(dict.fromkeys(u.variant for u in todo)),
                                 cfg.profile.small_models)
        check_models(specs, data.of(cfg, first), cfg)
    # started before the folder is touched: an executor that cannot start is bad input
    with executor.started(cfg) if todo else nullcontext() as described, \
            open_run_folder(cfg.out_dir, study) as folder:
        todo = pending_units(cfg, units, folder.finished_keys())
        log(_first_line(cfg, units, todo, folder.rows()))
        for note in folder.notes:
            log(note)
        if not todo:
            return
        first = data.of(cfg, todo[0])
        folder.begin(shared_manifest(cfg, first), start_manifest(cfg, described))
        kept: dict[str, str] = {}  # weights file name -> its path in the folder

        def keep(unit: Unit, trained: Trained) -> None:
            path = keep_weights(folder, cfg, unit, trained, first.num_classes,
                                first.in_channels)
            if path:
                kept[Path(path).name] = path

        with closing(executor.records(cfg, todo, data, log, keep)) as records:
            for record in records:
                path = kept.get(weights.file_name(weights.identity(record)))
                if path:
                    record.update({"weights_file": path})
                folder.append(record)
                yield record


def _first_line(cfg: RunConfig, units: list[Unit], todo: list[Unit], held: list[dict]) -> str:
    """Whether the run resumes, and what the folder already holds."""
    total, left = row_count(units), row_count(todo)
    keys = {base_record(cfg, unit, row).key for unit in units for row in unit.rows}
    retried = sum(results.row_key(row) in keys for row in held) - (total - left)
    others = sum(results.row_key(row) not in keys for row in held)
    notes = [f"{retried} failed row(s) run again"] * bool(retried) + \
        [f"the folder holds {others} row(s) of other settings"] * bool(others)
    notes_text = f" ({'; '.join(notes)})" if notes else ""
    if left < total:
        return f"segbench: resuming {cfg.out_dir}: {total - left}/{total} rows done{notes_text}"
    sweep = ", lr sweep" if cfg.lr_sweep else ""
    return (f"segbench: {total} row(s) from {len(units)} training(s), profile "
            f"{cfg.profile.name}, device {cfg.device}, kernels {cfg.kernels}, recipe "
            f"{cfg.recipe}{sweep}; writing {cfg.out_dir}{notes_text}")


def keep_weights(folder: RunFolder, cfg: RunConfig, unit: Unit, trained: Trained,
                 num_classes: int, in_channels: int) -> str | None:
    """Write a unit's trained weights into the run folder (segbench.weights) when cfg says
    so; the path written, relative to the folder, or None."""
    if trained.state is None or not weights.should_save(cfg, trained.state):
        return None
    identity = weights.identity(base_record(cfg, unit, unit.rows[0]))
    model = weights.model_config(unit.variant, num_classes, in_channels)
    return folder.write_weights(weights.file_name(identity), weights.encode(
        study_of(cfg), identity, model, trained.facts, trained.history, trained.state))


def _saved_unit_config(cfg: RunConfig, saved: weights.SavedUnit) -> RunConfig:
    return replace(cfg, recipe=saved.identity["recipe"],
                   lr_sweep=bool(saved.identity.get("lr_sweep")),
                   pretrained=saved.identity["pretrained"] or None)


def measure_saved(cfg: RunConfig, source: Path, saved: list[weights.SavedUnit],
                  log: Callable[[str], None] = _print_line) -> Iterator[results.Record]:
    """Measure saved trainings again, without training, as cfg's rows (device, kernels
    backends, modes, threads, batch sweep) into cfg.out_dir: the source folder, or another one
    for another device. A row whose key is already there is replaced by the new measurement
    (the journal keeps both); every row names the weights file it was measured from."""
    study = study_of(cfg)
    check_folder(cfg.out_dir, study)
    rows = rows_for(cfg)
    todo = [(entry, entry.unit(rows)) for entry in saved]
    data = SplitData()
    first = data.of(cfg, todo[0][1])
    weights.check_data(saved, first.num_classes, first.in_channels, cfg.dataset)
    with open_run_folder(cfg.out_dir, study) as folder:
        log(f"segbench: measuring {len(todo)} saved training(s) of {source} again, no "
            f"training: {len(todo) * len(rows)} row(s), device {cfg.device}, kernels "
            f"{cfg.kernels}, modes {' '.join(dict.fromkeys(r.mode.label for r in rows))}; "
            f"writing {cfg.out_dir}")
        for note in folder.notes:
            log(note)
        for entry, unit in todo:
            ctx = UnitContext(_saved_unit_config(cfg, entry), data.of(cfg, unit))
            folder.begin(shared_manifest(cfg, ctx.data),
                         {**start_manifest(ctx.cfg, {"name": "in-process"}),
                          "measured_from": str(source)})
            log(f"segbench: {unit.label} from {entry.name}")
            trained = Trained({**entry.payload["facts"], "weights_file": entry.name},
                              entry.payload["state_dict"], entry.payload["history"])
            for record in measure_placed(unit, trained, ctx):
                folder.append(record)
                yield record
