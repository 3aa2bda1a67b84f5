"""The arch x kernels loop: build, train, evaluate, measure, record.

A failure or an out-of-memory becomes a recorded row and the loop goes on; rows already
finished in the output folder are skipped, so re-running the same command resumes.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from tqdm.auto import tqdm

from segbench import results
from segbench.config import RunConfig, UsageError
from segbench.data import PreparedDataset, load_dataset
from segbench.layers import set_kernels, switch_kernels
from segbench.measure.accuracy import accuracy, majority_baseline
from segbench.measure.boundary import boundary_metrics
from segbench.measure.device import device_facts
from segbench.measure.flops import count_flops, count_params
from segbench.measure.latency import latency
from segbench.measure.memory import (
    inference_peak_mb,
    is_out_of_memory,
    memory_method,
    training_peak_mb,
)
from segbench.measure.throughput import throughput
from segbench.models import ARCHITECTURES, ModelSpec, create_model, model_spec, variant_for_profile
from segbench.train import fit, make_optimizer, make_train_step


def resolve_variants(names: tuple[str, ...], small: bool) -> list[ModelSpec]:
    """Architecture names take the profile's variant; variant names are taken as given."""
    specs = []
    for name in names:
        try:
            spec = variant_for_profile(name, small) if name in ARCHITECTURES else model_spec(name)
        except ValueError as e:
            raise UsageError(str(e)) from None
        specs.append(spec)
    return specs


def backends_for(cfg: RunConfig) -> list[str]:
    if cfg.kernels == "both":
        return ["torch", "triton"]
    if cfg.kernels == "auto":
        return ["triton" if cfg.device == "cuda" else "torch"]
    return [cfg.kernels]


def check_output_folder(folder: Path, manifest: dict) -> None:
    if folder.exists() and not folder.is_dir():
        raise UsageError(f"output folder {folder} is a file; give a folder path with --out")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / ".write-test"
        probe.write_text("")
        probe.unlink()
    except OSError as e:
        raise UsageError(f"output folder {folder} is not writable ({e.strerror})") from None
    earlier = results.read_manifest(folder)
    if earlier is None:
        return
    keys = ("dataset", "device", "seed")
    old, new = earlier["config"], json.loads(json.dumps(manifest["config"], default=str))
    differs = [k for k in keys if old.get(k) != new.get(k)]
    if old["profile"] != new["profile"]:
        differs.append("profile")
    if differs:
        raise UsageError(f"output folder {folder} holds a run with a different "
                         f"{', '.join(differs)}; "
                         "choose another --out to keep both")


def preflight(specs: list[ModelSpec], data: PreparedDataset, cfg: RunConfig) -> None:
    """Every model must take the run's image size: fail now, in one line, not after hours."""
    size = cfg.profile.image_size
    device = torch.device(cfg.device)
    for spec in specs:
        model = create_model(spec.name, data.num_classes, data.in_channels)
        model = model.to(device)
        try:
            with torch.no_grad():
                out = model.eval()(torch.zeros(1, data.in_channels, size, size, device=device))
        except RuntimeError as e:
            if is_out_of_memory(e):
                continue  # too large for the device: recorded as an oom row when it runs
            raise UsageError(f"image size {size} is too small for {spec.name} "
                             f"({str(e).splitlines()[0]}); use a larger --image-size") from None
        if out.shape[-2:] != (size, size):
            raise UsageError(f"{spec.name} returns {tuple(out.shape[-2:])} "
                             f"for a {size}x{size} input")
        del model


NSD_TOLERANCE_PX = 1.0


@dataclass
class Context:
    cfg: RunConfig
    data: PreparedDataset
    device: torch.device
    amp: bool
    folder: Path
    manifest: dict


def build_manifest(cfg: RunConfig, data: PreparedDataset, device: torch.device) -> dict:
    amp = device.type == "cuda"
    return {
        "config": cfg.to_json(),
        "environment": results.environment(device_facts(device)),
        "dataset": {"name": data.name, "classes": data.class_names,
                    "split_sizes": {k: len(v) for k, v in data.splits.items()},
                    "spacing_mm": data.spacing_mm, "description": data.description,
                    "facts": data.facts},
        "method": {
            "dtype": "bf16 autocast (weights fp32)" if amp else "fp32",
            "timer": "CUDA events" if amp else "time.perf_counter",
            "memory": memory_method(device),
            "accuracy": "test split; IoU/Dice per class from one confusion matrix; mIoU and "
                        "mDice average the foreground classes; weights of the best val epoch",
            "boundary": f"per 2D test slice and foreground class: HD95, average symmetric "
                        f"surface distance, normalised surface Dice at {NSD_TOLERANCE_PX} px; "
                        "one region empty = image diagonal / NSD 0, both empty = skipped "
                        "(segbench.measure.boundary)",
        },
    }


def run(cfg: RunConfig) -> Iterator[results.Record]:
    device = torch.device(cfg.device)
    torch.set_num_threads(cfg.threads)
    specs = resolve_variants(cfg.archs, cfg.profile.small_models)
    data = load_dataset(cfg.dataset, cfg.profile.image_size, cfg.seed, cfg.cache_dir)
    manifest = build_manifest(cfg, data, device)
    check_output_folder(cfg.out_dir, manifest)
    preflight(specs, data, cfg)
    results.write_manifest(cfg.out_dir, manifest)
    ctx = Context(cfg, data, device, device.type == "cuda", cfg.out_dir, manifest)
    finished = {results.row_key(r) for r in results.read_rows(cfg.out_dir) if r["status"] == "ok"}
    for spec in specs:
        records = [base_record(spec, backend, ctx) for backend in backends_for(cfg)]
        todo = [r for r in records if r.key not in finished]
        if not todo:
            continue
        for record in measure_variant(spec, todo, ctx):
            rows = results.upsert(ctx.folder, record)
            results.write_markdown(ctx.folder, rows, manifest)
            results.write_json(ctx.folder, rows, manifest)
            yield record


def base_record(spec: ModelSpec, backend: str, ctx: Context) -> results.Record:
    return results.Record(
        arch=spec.arch, variant=spec.name, kernels=backend, dataset=ctx.data.name,
        image_size=ctx.cfg.profile.image_size, device=ctx.cfg.device,
        profile=ctx.cfg.profile.name, dtype=ctx.manifest["method"]["dtype"],
        train_batch=ctx.cfg.profile.batch_size, epochs=ctx.cfg.profile.epochs,
    )


def measure_variant(spec: ModelSpec, records: list[results.Record],
                    ctx: Context) -> Iterator[results.Record]:
    """Train once, then evaluate and measure each kernels backend on the same weights."""
    try:
        model, trained = train_variant(spec, ctx)
    except Exception as e:  # noqa: BLE001  (any failure becomes a row; the run goes on)
        for record in records:
            yield failure(record, e, ctx)
        return
    torch_pred = None
    for record in records:
        try:
            with switch_kernels(model, record.kernels):
                measured, pred = measure_backend(spec, model, record.kernels, ctx, torch_pred)
        except Exception as e:  # noqa: BLE001
            yield failure(record, e, ctx)
            continue
        if record.kernels == "torch":
            torch_pred = pred
        record.__dict__.update(trained)
        for key, value in measured.items():
            if hasattr(record, key) and key != "extra":
                setattr(record, key, value)
            else:
                record.extra[key] = value
        yield record


def failure(record: results.Record, error: Exception, ctx: Context) -> results.Record:
    if ctx.device.type == "cuda":
        torch.cuda.empty_cache()
    status = "oom" if is_out_of_memory(error) else "error"
    return results.record_from_failure(record, status, f"{type(error).__name__}: {error}")


def train_variant(spec: ModelSpec, ctx: Context) -> tuple[nn.Module, dict]:
    torch.manual_seed(ctx.cfg.seed)
    train_backend = "torch" if ctx.cfg.kernels == "both" else backends_for(ctx.cfg)[0]
    model = create_model(spec.name, ctx.data.num_classes, ctx.data.in_channels,
                         pretrained=ctx.cfg.pretrained).to(ctx.device)
    set_kernels(model, train_backend)
    image_shape = (ctx.data.in_channels, ctx.cfg.profile.image_size, ctx.cfg.profile.image_size)
    flops = count_flops(model, torch.randn(1, *image_shape, device=ctx.device))
    outcome = fit(model, ctx.data, ctx.cfg.profile, ctx.device, ctx.cfg.seed, desc=spec.name)
    baseline = majority_baseline(ctx.data.splits["train"], ctx.data.splits["test"],
                                 ctx.data.num_classes)
    return model, {
        "params_m": count_params(model) / 1e6,
        "gflops": flops["gflops"],
        "flops_uncounted_ops": flops["flops_uncounted_ops"],
        "train_time_s": outcome.train_time_s,
        "best_epoch": outcome.best_epoch,
        "majority_baseline_mdice": baseline["mdice"],
    }


def measure_backend(spec: ModelSpec, model: nn.Module, backend: str, ctx: Context,
                    torch_pred: torch.Tensor | None) -> tuple[dict, torch.Tensor]:
    """Measure `model`, already switched to `backend`."""
    profile, device, amp = ctx.cfg.profile, ctx.device, ctx.amp
    image_shape = (ctx.data.in_channels, profile.image_size, profile.image_size)
    test = ctx.data.splits["test"]
    phases = tqdm(total=5, desc=f"{spec.name} [{backend}] measure", unit="phase", leave=False)
    scores, pred = accuracy(model, test, ctx.data.num_classes, device, profile.batch_size, amp)
    measured = {
        "miou": scores["miou"], "mdice": scores["mdice"],
        "pixel_accuracy": scores["pixel_accuracy"],
        "iou_per_class": " ".join(map(str, scores["iou_per_class"])),
        "dice_per_class": " ".join(map(str, scores["dice_per_class"])),
    }
    measured.update(boundary_columns(pred, test.masks, ctx.data))
    if torch_pred is not None:
        measured["agrees_with_torch"] = float((pred == torch_pred).float().mean())
    phases.update()
    measured.update(latency(model, image_shape, device, profile.latency_warmup,
                            profile.latency_repeats, amp))
    phases.update()
    measured.update(throughput(model, image_shape, device, profile.throughput_batches,
                               profile.throughput_repeats, amp))
    phases.update()
    measured["peak_mem_mb"] = inference_peak_mb(model, image_shape, device, amp)
    phases.update()
    measured["train_peak_mem_mb"] = training_step_peak_mb(model, ctx)
    phases.update()
    phases.close()
    return measured, pred


def boundary_columns(pred: torch.Tensor, target: torch.Tensor, data: PreparedDataset) -> dict:
    scores = boundary_metrics(pred, target, data.num_classes, data.spacing_mm, NSD_TOLERANCE_PX)
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


def training_step_peak_mb(model: nn.Module, ctx: Context) -> float:
    """Peak memory of one training step at the profile's batch, on a copy of the model."""
    scratch = copy.deepcopy(model)
    step = make_train_step(scratch, make_optimizer(scratch, ctx.cfg.profile), ctx.device, ctx.amp)
    train = ctx.data.splits["train"]
    batch = ctx.cfg.profile.batch_size
    images, masks = train.images[:batch], train.masks[:batch]
    peak = training_peak_mb(lambda: step(images, masks), ctx.device)
    del scratch
    return peak
