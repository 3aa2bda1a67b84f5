"""Command line: argument parsing and validation; everything else lives in the runner and report.

Importing this module is cheap (no torch): the heavy modules are imported inside the commands,
after the arguments are parsed, so --help, argument errors and an early Ctrl-C are instant and
end in one line.
"""

from __future__ import annotations

import argparse
import errno
import itertools
import re
import signal
import sys
from dataclasses import replace
from pathlib import Path

from segbench.config import (
    BATCH_SWEEP_RULE,
    COMPILE_MODES,
    DTYPES,
    PROFILES,
    RECIPES,
    Mode,
    RunConfig,
    UsageError,
    default_profile,
)

EXAMPLES = """
examples:
  segbench list                                  architectures, variants, params, GFLOPs
  segbench run --arch all                        every architecture, built-in brain MRI
  segbench run --arch unet,swin --profile smoke  two architectures in seconds
  segbench run --arch fcn,unet --seeds 0,1,2     three trainings of each, one row per seed;
                                                 summary.md: means, sds, CIs, ranks with ties
  segbench run --arch fcn,unet --seeds 0,1 --folds 5
                                                 5-fold cross-validation, two seeds per fold
  segbench run --arch deeplabv3plus --kernels both --device cuda
                                                 torch and Triton rows on the same weights
  segbench run --arch all --seeds 0,1,2 --workers 4
                                                 four trainings at a time on a local Ray
  segbench run --arch unet --compile none,default --channels-last
                                                 eager and compiled rows of one training
  segbench measure runs/cpu_cpu_brain-tissue_96px_s0 --batch-sweep 1,2,4,8
                                                 re-time saved weights, no training
  segbench report runs/a runs/b                  one table, accuracy-cost plots, curves
  segbench data check brain-tissue               validate a dataset and summarise it
"""

# every name of segbench.data.DATASETS (a test keeps the two in step)
DATASETS_HELP = """datasets:
  brain-tissue          real T1 MRI with grey/white-matter maps, shipped with nilearn (default)
  brain-atlas           Colin27 T1 MRI with the AAL atlas in 7 classes (apt: mricron-data)
  phantom               procedural shapes with exact ground truth, for tests
  folder:PATH           your PNG/JPG/TIFF images in PATH/images and masks in PATH/masks
  nnunet:PATH           an nnU-Net v2 raw or Medical Segmentation Decathlon folder
"""

SIGNAL_EXIT = {"SIGINT": 130, "SIGTERM": 143}


class Terminated(BaseException):
    """SIGTERM, raised in the main thread as Ctrl-C raises KeyboardInterrupt."""


def _raise_terminated(signum, frame):
    raise Terminated


class OneLineParser(argparse.ArgumentParser):
    """Argument errors in one line, like every other error of segbench."""

    def error(self, message: str):
        self.exit(2, f"segbench: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(
        prog="segbench",
        description="Which segmentation architecture, at what cost? Trains every architecture "
        "on the same medical data and measures accuracy, FLOPs, latency, memory and throughput.",
        epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    listing = commands.add_parser(
        "list", help="architectures and variants with params and GFLOPs",
        description="Every registered variant with its params and GFLOPs. The defaults read "
        "the committed table (instant); other channels, classes or input sizes build each "
        "model to count it (with progress) and cache the counts, keyed by the model code.")
    listing.add_argument("--models", help="comma-separated names (default: every variant)")
    listing.add_argument("--in-channels", type=int, default=1, help="default 1 (MRI)")
    listing.add_argument("--num-classes", type=int, default=4, help="default 4 (brain-tissue)")
    listing.add_argument("--input-size", help="H or HxW for the FLOP count (default: each "
                         "paper's input size), e.g. 512x2048")
    listing.add_argument("--count", action="store_true",
                         help="count the models whose table entry is older than today's model "
                         "code instead of showing that entry (minutes; cached)")
    listing.add_argument("--no-flops", action="store_true",
                         help="never count FLOPs: params only for the models without a "
                         "stored count")

    run = commands.add_parser(
        "run", help="train, evaluate and measure architectures; writes CSV, markdown and JSON",
        description="Train and measure. Rows already finished in --out are skipped, so the\n"
        "same command resumes an interrupted run; a failing architecture becomes a row with\n"
        "its reason and the run goes on.",
        epilog=DATASETS_HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    run.add_argument("--arch", required=True,
                     help="'all', or comma-separated architecture names (the profile picks the "
                     "variant) or variant names such as segformer-b2; any case")
    run.add_argument("--dataset", default="brain-tissue",
                     help="brain-tissue (default), brain-atlas, phantom, folder:PATH or "
                     "nnunet:PATH (listed below)")
    run.add_argument("--profile", choices=list(PROFILES), help=" ".join(
        f"{p.name}: {p.description}." for p in PROFILES.values())
        + " Default: gpu with CUDA, else cpu.")
    run.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    run.add_argument("--kernels", choices=["auto", "torch", "triton", "both"], default="auto",
                     help="backend of the ops with Triton kernels; 'both' measures a torch and "
                     "a triton row on the same trained weights (auto: triton on CUDA). On a "
                     "CPU, triton and both need TRITON_INTERPRET=1 (the interpreter: for "
                     "rehearsals and tests)")
    run.add_argument("--out", type=Path,
                     help="run folder (default: runs/<profile>_<device>_<dataset>_<size>px_"
                     "s<seeds>, from the settings, so the same command resumes)")
    run.add_argument("--seeds", default="0",
                     help="comma-separated training seeds, one row per seed (default 0)")
    run.add_argument("--folds", type=int,
                     help="K-fold cross-validation with K >= 2, one row per fold (default 1: "
                     "the dataset's train/val/test split)")
    run.add_argument("--split-seed", type=int,
                     help="one seed for the data split of every row (default: each row's "
                     "training seed also draws its split)")
    run.add_argument("--recipe", choices=RECIPES, default=RunConfig.recipe,
                     help="family (default): each architecture family's optimizer, lr, weight "
                     "decay and schedule from its paper, with a linear warm-up; shared: one "
                     "AdamW recipe for every architecture (the profile's lr), for ablations")
    run.add_argument("--lr-sweep", action="store_true",
                     help="train each model at 0.1x, 1x and 10x its recipe's lr for the same "
                     "steps and keep the best on the validation split (3x the training time); "
                     "rows record the lr picked and what each tried scored")
    run.add_argument("--image-size", type=int, help="override the profile's image size")
    run.add_argument("--epochs", type=int, help="override the profile's number of epochs")
    run.add_argument("--threads", type=int, default=2,
                     help="CPU threads for training and every measurement (default 2)")
    add_measure_arguments(run)
    run.add_argument("--save-weights", action=argparse.BooleanOptionalAction,
                     help="keep each training's weights in the run folder for segbench measure "
                     "(default: for models up to 100 MB)")
    run.add_argument("--pretrained", help="local state_dict of the backbone (no downloads)")
    run.add_argument("--force", action="store_true",
                     help="run a gpu profile on a CPU, or past the memory estimate")
    ray = run.add_mutually_exclusive_group()
    ray.add_argument("--workers", type=int, metavar="N",
                     help="run the trainings N at a time on a local Ray (N GPUs with CUDA, N x "
                     "--threads CPUs otherwise; one timing at a time); needs "
                     "pip install 'segbench[ray]'")
    ray.add_argument("--ray-address", metavar="ADDR|auto",
                     help="run on the Ray cluster at ADDR (auto: the one started on this "
                     "machine), each node started with ray start --resources='{\"bench\": 1}'")

    measure = commands.add_parser(
        "measure", help="measure a run folder's saved weights again: other modes, another "
        "device, a batch sweep, or a re-timing; appends rows, no training",
        description="Measure the trained weights a run kept (weights/*.pt) again, without\n"
        "training: in other deployment modes, with other kernels or threads, with a batch\n"
        "sweep, on another device (into another --out), or simply again, to re-time rows\n"
        "flagged timing_unstable. Rows with the same settings are replaced by the new ones.",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    measure.add_argument("folder", type=Path, help="a run folder written by segbench run")
    measure.add_argument("--arch", help="comma-separated architecture or variant names "
                         "(default: every saved training)")
    measure.add_argument("--device", choices=["cpu", "cuda"],
                         help="default: the folder's device; another one needs --out")
    measure.add_argument("--kernels", choices=["auto", "torch", "triton", "both"],
                         default="auto", help="as for segbench run (default auto)")
    measure.add_argument("--threads", type=int, default=2,
                         help="CPU threads for every measurement (default 2)")
    add_measure_arguments(measure)
    measure.add_argument("--out", type=Path,
                         help="run folder for the rows (default: the folder itself)")

    report = commands.add_parser("report", help="merge run folders into one table and plots")
    report.add_argument("folders", nargs="+", type=Path)
    report.add_argument("--out", type=Path, help="where to write report.md and the plots "
                        "(default: the first folder)")
    report.add_argument("--cost", choices=["latency", "gflops", "params", "memory"],
                        help="the one cost axis of the accuracy-vs-cost plot (default: a "
                        "panel for each of the four)")

    data = commands.add_parser("data", help="dataset tools")
    data_commands = data.add_subparsers(dest="data_command", required=True, metavar="COMMAND")
    check = data_commands.add_parser(
        "check", help="validate a dataset and print a summary", epilog=DATASETS_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    check.add_argument("dataset", help="one of the datasets below")
    check.add_argument("--image-size", type=int,
                       help="default: the size `segbench run` uses here (its default profile: "
                       f"{PROFILES['cpu'].image_size} px on a CPU, "
                       f"{PROFILES['gpu'].image_size} px with CUDA)")
    check.add_argument("--seed", type=int, default=0, help="the split seed (default 0)")
    return parser


def add_measure_arguments(parser: argparse.ArgumentParser) -> None:
    """Deployment modes and the batch sweep, shared by run and measure."""
    parser.add_argument("--compile", default="none",
                        help="torch.compile mode(s), comma-separated: none (eager, default), "
                        "default, max-autotune; several give one row each. Compile time is "
                        "its own column (compile_s)")
    parser.add_argument("--dtype", default="auto",
                        help="autocast dtype(s), comma-separated: fp32, bf16, fp16 (CUDA "
                        "only); auto (default): bf16 on CUDA, fp32 on a CPU")
    parser.add_argument("--channels-last", action="store_true",
                        help="weights and inputs in channels-last memory format")
    parser.add_argument("--cuda-graphs", action="store_true",
                        help="capture the inference step in a CUDA graph and replay it (CUDA)")
    parser.add_argument("--batch-sweep",
                        help="batch sizes, e.g. 1,2,4,8: latency and throughput at each until "
                        "out of memory, into sweep.csv and throughput_vs_batch.png")


def fail(message: str) -> int:
    print(f"segbench: error: {message}", file=sys.stderr)
    return 2


def resolve_device(requested: str) -> str:
    import torch

    if requested == "cuda" and not torch.cuda.is_available():
        raise UsageError("--device cuda asked for, but no CUDA GPU is visible; use --device cpu")
    if requested == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return requested


def parse_seeds(text: str) -> tuple[int, ...]:
    parts = [part.strip() for part in text.split(",")]
    if not any(parts):
        raise UsageError("--seeds is empty; give integers such as 0,1,2")
    if not all(re.fullmatch(r"\d+", part) for part in parts):
        raise UsageError(f"--seeds must be integers of 0 or more separated by commas, such as "
                         f"0,1,2; got {text!r}")
    seeds = tuple(int(part) for part in parts)
    repeated = sorted({s for s in seeds if seeds.count(s) > 1})
    if repeated:
        raise UsageError(f"--seeds names {', '.join(map(str, repeated))} more than once")
    return seeds


def parse_choices(text: str, flag: str, choices: tuple[str, ...]) -> tuple[str, ...]:
    values = tuple(dict.fromkeys(part.strip().lower() for part in text.split(",")))
    wrong = [v for v in values if v not in choices]
    if wrong or not values:
        raise UsageError(f"{flag} takes {', '.join(choices)} (comma-separated for several), "
                         f"got {text!r}")
    return values


def parse_modes(args) -> tuple[Mode, ...]:
    """One mode per compile mode x dtype given, each with the memory-format and graph flags."""
    compiles = parse_choices(args.compile, "--compile", COMPILE_MODES)
    dtypes = parse_choices(args.dtype, "--dtype", DTYPES)
    return tuple(Mode(compile=c, dtype=d, channels_last=args.channels_last,
                      cuda_graphs=args.cuda_graphs)
                 for c, d in itertools.product(compiles, dtypes))


def parse_batch_sweep(text: str | None) -> tuple[int, ...]:
    if text is None:
        return ()
    parts = [part.strip() for part in text.split(",")]
    if not all(re.fullmatch(r"\d+", part) for part in parts):
        raise UsageError(f"--batch-sweep must be {BATCH_SWEEP_RULE}; got {text!r}")
    return tuple(int(part) for part in parts)


def _slug(dataset: str) -> str:
    name, _, arg = dataset.partition(":")
    if arg:
        name = f"{name}-{Path(arg.split('@')[0].split(',')[0]).name}"
    return re.sub(r"[^A-Za-z0-9.]+", "-", name).strip("-")


def default_out(cfg: RunConfig) -> Path:
    """runs/<profile>_<device>_<dataset>_<size>px[_<epochs>ep]_s<seeds>[_<K>fold][_split<N>]
    [_shared][_lrsweep]:
    everything that tells one study from another, so the same command finds its folder."""
    profile = cfg.profile
    parts = [profile.name, cfg.device, _slug(cfg.dataset), f"{profile.image_size}px"]
    if profile.epochs != PROFILES[profile.name].epochs:
        parts.append(f"{profile.epochs}ep")
    parts.append("s" + "-".join(map(str, cfg.seeds)))
    if cfg.folds > 1:
        parts.append(f"{cfg.folds}fold")
    if cfg.split_seed is not None:
        parts.append(f"split{cfg.split_seed}")
    if cfg.recipe != RunConfig.recipe:
        parts.append(cfg.recipe)
    if cfg.lr_sweep:
        parts.append("lrsweep")
    return Path("runs") / "_".join(parts)


def _profile(args, device: str):
    profile = PROFILES[args.profile] if args.profile else default_profile(device)
    if profile.needs_gpu and device != "cuda" and not args.force:
        raise UsageError(f"--profile {profile.name} trains paper-size models for "
                         f"{profile.epochs} epochs, hours on a CPU; use --profile cpu, or add "
                         "--force to run it anyway")
    if args.image_size is not None:
        if not 16 <= args.image_size <= 4096:
            raise UsageError(f"--image-size must be between 16 and 4096, got {args.image_size}")
        profile = replace(profile, image_size=args.image_size)
    if args.epochs is not None:
        if args.epochs < 1:
            raise UsageError(f"--epochs must be at least 1, got {args.epochs}")
        profile = replace(profile, epochs=args.epochs)
    return profile


def run_config(args) -> RunConfig:
    """Every check that needs no data: done before anything is printed or created."""
    from segbench.data import parse_spec
    from segbench.grid import check_kernels, resolve_arch_names

    device = resolve_device(args.device)
    profile = _profile(args, device)
    if args.threads < 1:
        raise UsageError(f"--threads must be at least 1, got {args.threads}")
    if args.folds is not None and args.folds < 2:
        raise UsageError(f"--folds must be at least 2 for cross-validation, got {args.folds} "
                         "(without --folds: the dataset's train/val/test split)")
    if args.split_seed is not None and args.split_seed < 0:
        raise UsageError(f"--split-seed must be 0 or more, got {args.split_seed}")
    check_kernels(args.kernels, device)
    names = tuple(a.strip() for a in args.arch.split(",") if a.strip())
    if not names:
        raise UsageError("--arch is empty; give 'all' or names such as unet,swin")
    parse_spec(args.dataset)
    cfg = RunConfig(archs=resolve_arch_names(names), dataset=args.dataset, profile=profile,
                    device=device, kernels=args.kernels, out_dir=Path("."),
                    seeds=parse_seeds(args.seeds), folds=args.folds or 1,
                    split_seed=args.split_seed, recipe=args.recipe, lr_sweep=args.lr_sweep,
                    modes=parse_modes(args), threads=args.threads,
                    batch_sweep=parse_batch_sweep(args.batch_sweep),
                    save_weights=args.save_weights, pretrained=args.pretrained,
                    force=args.force)
    return replace(cfg, out_dir=args.out or default_out(cfg))


def executor_for(args, device: str):
    """None (in process) unless --workers or --ray-address asks for Ray."""
    if args.workers is None and args.ray_address is None:
        return None
    from segbench.distributed import RayExecutor

    return RayExecutor(device, workers=args.workers, address=args.ray_address)


def _outcome(record) -> str:
    if record.status != "ok":
        return f"{record.status}: {record.reason}"
    flag = " (timing unstable: see timing_reason)" if record.extra.get("timing_unstable") \
        else ""
    return f"mDice {record.mdice:.3f}, {record.latency_ms:.1f} ms{flag}"


def _report_rows(records, out: Path, again: str) -> int:
    """Print each row as it is written; the folder's figures at the end, with their paths;
    Ctrl-C keeps the rows."""
    from tqdm.auto import tqdm

    from segbench.plots import draw_folder

    try:
        for record in records:
            fold = f" fold {record.fold + 1}/{record.folds}" if record.folds > 1 else ""
            tqdm.write(f"  {record.variant} [{record.kernels}, {record.mode}] seed "
                       f"{record.seed}{fold}: {_outcome(record)}")
    except (KeyboardInterrupt, Terminated) as e:
        name = "SIGTERM" if isinstance(e, Terminated) else "SIGINT"
        print(f"\nsegbench: stopped by {name}; finished rows are kept in {out}; {again}",
              file=sys.stderr)
        return SIGNAL_EXIT[name]
    figures = ", ".join(map(str, draw_folder(out))) or "none (no finished rows)"
    print(f"segbench: results in {out}/results.md, summary in {out}/summary.md; plots: "
          f"{figures}")
    return 0


def command_run(args) -> int:
    from segbench.runner import run

    cfg = run_config(args)
    records = run(cfg, executor=executor_for(args, cfg.device))
    return _report_rows(records, cfg.out_dir, "run the same command to resume")


def measure_config(args, study: dict, saved: list) -> RunConfig:
    """The RunConfig of a re-measurement: the folder's study, the saved trainings chosen,
    this command's device, kernels, modes, threads and sweep."""
    from segbench.grid import check_kernels
    from segbench.weights import profile_of

    device = resolve_device(args.device or study["device"])
    if device != study["device"] and args.out is None:
        raise UsageError(f"{args.folder} holds {study['device']} rows; measuring on {device} "
                         "writes another run folder: add --out PATH")
    if args.threads < 1:
        raise UsageError(f"--threads must be at least 1, got {args.threads}")
    check_kernels(args.kernels, device)
    variants = tuple(dict.fromkeys(entry.identity["variant"] for entry in saved))
    return RunConfig(archs=variants, dataset=study["dataset"], profile=profile_of(study),
                     device=device, kernels=args.kernels, out_dir=args.out or args.folder,
                     seeds=tuple(sorted({entry.identity["seed"] for entry in saved})),
                     modes=parse_modes(args), threads=args.threads,
                     batch_sweep=parse_batch_sweep(args.batch_sweep), save_weights=False)


def chosen_trainings(saved: list, arch: str | None, folder: Path) -> list:
    """The saved trainings --arch names (architecture or variant names), or all of them."""
    from segbench.grid import resolve_arch_names

    if arch is None:
        return saved
    names = set(resolve_arch_names(tuple(a.strip() for a in arch.split(",") if a.strip())))
    chosen = [e for e in saved if {e.identity["arch"], e.identity["variant"]} & names]
    if not chosen:
        held = ", ".join(dict.fromkeys(e.identity["variant"] for e in saved))
        raise UsageError(f"{folder} has no saved weights of {arch} (it has: {held})")
    return chosen


def command_measure(args) -> int:
    from segbench import results
    from segbench.runner import measure_saved
    from segbench.weights import load_saved

    manifest = results.read_manifest(args.folder) if args.folder.is_dir() else None
    if manifest is None:
        raise UsageError(f"{args.folder} is not a segbench run folder (no run.json)")
    saved = chosen_trainings(load_saved(args.folder, manifest["study"]), args.arch,
                             args.folder)
    cfg = measure_config(args, manifest["study"], saved)
    return _report_rows(measure_saved(cfg, args.folder, saved), cfg.out_dir,
                        "run the same command to measure again")


def parse_input_size(text: str | None) -> tuple[int, int] | None:
    if text is None:
        return None
    parts = text.lower().split("x")
    if len(parts) not in (1, 2) or not all(p.isdigit() for p in parts):
        raise UsageError(f"--input-size must be H or HxW in pixels, e.g. 512x2048, got {text!r}")
    height, width = int(parts[0]), int(parts[-1])
    if not (16 <= height <= 4096 and 16 <= width <= 4096):
        raise UsageError(f"--input-size sides must be between 16 and 4096, got {text!r}")
    return height, width


def command_list(args) -> int:
    from segbench.listing import model_listing

    if args.in_channels < 1:
        raise UsageError(f"--in-channels must be at least 1, got {args.in_channels}")
    if args.num_classes < 2:
        raise UsageError(f"--num-classes must be at least 2, got {args.num_classes}")
    names = [n.strip() for n in args.models.split(",") if n.strip()] if args.models else None
    print(model_listing(names, args.in_channels, args.num_classes,
                        parse_input_size(args.input_size), with_flops=not args.no_flops,
                        recount=args.count))
    return 0


def command_report(args) -> int:
    from segbench.report import write_report

    out, figures = write_report(args.folders, args.out, args.cost)
    print(f"segbench: report in {out}; plots: {', '.join(map(str, figures)) or 'none'}")
    return 0


def command_data(args) -> int:
    from segbench.data.check import summarize

    size = args.image_size or default_profile(resolve_device("auto")).image_size
    print(summarize(args.dataset, size, args.seed))
    return 0


COMMANDS = {"run": command_run, "measure": command_measure, "list": command_list,
            "report": command_report, "data": command_data}


def _is_user_error(error: Exception) -> bool:
    data = sys.modules.get("segbench.data.base")  # loaded whenever a DataError can exist
    return isinstance(error, UsageError) or (data is not None
                                             and isinstance(error, data.DataError))


def main(argv: list[str] | None = None) -> int:
    previous = signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        try:
            args = build_parser().parse_args(argv)
        except SystemExit as e:  # --help, or an argument error, already printed in one line
            return int(e.code or 0)
        return COMMANDS[args.command](args)
    except (KeyboardInterrupt, Terminated) as e:
        name = "SIGTERM" if isinstance(e, Terminated) else "SIGINT"
        print(f"\nsegbench: stopped by {name}", file=sys.stderr)
        return SIGNAL_EXIT[name]
    except BrokenPipeError:  # output piped into `head` and friends
        sys.stderr.close()
        return 0
    except OSError as e:
        if e.errno != errno.ENOSPC:
            raise
        return fail(f"no space left on device ({e.filename or 'while writing'}); make room "
                    "and run the same command again")
    except Exception as e:
        if not _is_user_error(e):
            raise
        return fail(str(e))  # the user's mistake: one line, no traceback
    finally:
        signal.signal(signal.SIGTERM, previous)


if __name__ == "__main__":
    sys.exit(main())
