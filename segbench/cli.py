"""Command line: argument parsing only; everything else lives in the runner and report."""

from __future__ import annotations

import argparse
import sys
from dataclasses import replace
from datetime import datetime
from pathlib import Path

from segbench.config import UsageError
from segbench.data.base import DataError

EXAMPLES = """
examples:
  segbench list                                  architectures, variants, params, GFLOPs
  segbench run --arch all                        every architecture, built-in brain MRI
  segbench run --arch unet,swin --profile smoke  two architectures in seconds
  segbench run --arch deeplabv3plus --kernels both --device cuda
                                                 torch and Triton rows on the same weights
  segbench report runs/a runs/b                  one table and an accuracy-latency plot
  segbench data check brain-tissue               validate a dataset and summarise it
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="segbench",
        description="Which segmentation architecture, at what cost? Trains every architecture "
        "on the same medical data and measures accuracy, FLOPs, latency, memory and throughput.",
        epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    listing = commands.add_parser("list", help="architectures and variants with params and GFLOPs")
    listing.add_argument("--models", help="comma-separated names (default: every variant)")
    listing.add_argument("--in-channels", type=int, default=1, help="default 1 (MRI)")
    listing.add_argument("--num-classes", type=int, default=4, help="default 4 (brain-tissue)")
    listing.add_argument("--input-size", help="H or HxW for the FLOP count (default: each "
                         "paper's input size), e.g. 512x2048")
    listing.add_argument("--no-flops", action="store_true",
                         help="skip the FLOP count (it builds every paper-size model)")

    run = commands.add_parser(
        "run", help="train, evaluate and measure architectures; writes CSV, markdown and JSON",
        description="Train and measure. Rows already finished in --out are skipped, so the "
        "same command resumes an interrupted run; a failing architecture becomes a row with "
        "its reason and the run goes on.")
    run.add_argument("--arch", required=True,
                     help="'all', or comma-separated architecture names (the profile picks the "
                     "variant) or variant names such as segformer-b2")
    run.add_argument("--dataset", default="brain-tissue",
                     help="brain-tissue (default, real MRI shipped with nilearn), phantom, ... "
                     "(see 'segbench data check --help')")
    run.add_argument("--profile", choices=["smoke", "cpu", "gpu"],
                     help="smoke: seconds per architecture; cpu: small variants at 64 px; "
                     "gpu: paper defaults at 256 px (default: gpu with CUDA, else cpu)")
    run.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    run.add_argument("--kernels", choices=["auto", "torch", "triton", "both"], default="auto",
                     help="backend of the ops with Triton kernels; 'both' measures a torch and "
                     "a triton row on the same trained weights (auto: triton on CUDA)")
    run.add_argument("--out", type=Path,
                     help="run folder (default runs/<date>_<profile>_<device>); reuse it to resume")
    run.add_argument("--seed", type=int, default=0)
    run.add_argument("--image-size", type=int, help="override the profile's image size")
    run.add_argument("--epochs", type=int, help="override the profile's number of epochs")
    run.add_argument("--threads", type=int, default=2,
                     help="CPU threads for training and every measurement (default 2)")
    run.add_argument("--pretrained", help="local state_dict of the backbone (no downloads)")

    report = commands.add_parser("report", help="merge run folders into one table and a plot")
    report.add_argument("folders", nargs="+", type=Path)
    report.add_argument("--out", type=Path, help="where to write report.md and the plots "
                        "(default: the first folder)")

    data = commands.add_parser("data", help="dataset tools")
    data_commands = data.add_subparsers(dest="data_command", required=True, metavar="COMMAND")
    check = data_commands.add_parser("check", help="validate a dataset and print a summary")
    check.add_argument("dataset")
    check.add_argument("--image-size", type=int, default=64)
    check.add_argument("--seed", type=int, default=0)
    return parser


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


def run_config(args):
    from segbench.config import PROFILES, RunConfig
    from segbench.models import registered_architectures

    device = resolve_device(args.device)
    if args.kernels in ("triton", "both") and device != "cuda":
        raise UsageError(f"--kernels {args.kernels} needs --device cuda "
                         "(the Triton interpreter is for tests)")
    profile = PROFILES[args.profile or ("gpu" if device == "cuda" else "cpu")]
    if args.image_size is not None:
        if not 16 <= args.image_size <= 4096:
            raise UsageError(f"--image-size must be between 16 and 4096, got {args.image_size}")
        profile = replace(profile, image_size=args.image_size)
    if args.epochs is not None:
        if args.epochs < 1:
            raise UsageError(f"--epochs must be at least 1, got {args.epochs}")
        profile = replace(profile, epochs=args.epochs)
    if args.threads < 1:
        raise UsageError(f"--threads must be at least 1, got {args.threads}")
    archs = tuple(a.strip() for a in args.arch.split(",") if a.strip())
    if archs == ("all",):
        archs = tuple(registered_architectures())
    if not archs:
        raise UsageError("--arch is empty; give 'all' or names such as unet,swin")
    out = args.out or Path("runs") / f"{datetime.now():%Y-%m-%d_%H%M}_{profile.name}_{device}"
    return RunConfig(archs=archs, dataset=args.dataset, profile=profile, device=device,
                     kernels=args.kernels, out_dir=out, seed=args.seed, threads=args.threads,
                     pretrained=args.pretrained)


def command_run(args) -> int:
    from segbench.runner import run

    cfg = run_config(args)
    print(f"segbench: {len(cfg.archs)} architecture(s), profile {cfg.profile.name}, "
          f"device {cfg.device}, kernels {cfg.kernels}, writing {cfg.out_dir}")
    try:
        for record in run(cfg):
            outcome = (f"mDice {record.mdice:.3f}, {record.latency_ms:.1f} ms"
                       if record.status == "ok" else f"{record.status}: {record.reason}")
            print(f"  {record.variant} [{record.kernels}] {outcome}")
    except KeyboardInterrupt:
        print(f"\nsegbench: interrupted; finished rows are kept in {cfg.out_dir}; "
              "run the same command to resume", file=sys.stderr)
        return 130
    print(f"segbench: results in {cfg.out_dir}/results.md")
    return 0


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
    from segbench.report import model_listing

    if args.in_channels < 1:
        raise UsageError(f"--in-channels must be at least 1, got {args.in_channels}")
    if args.num_classes < 2:
        raise UsageError(f"--num-classes must be at least 2, got {args.num_classes}")
    names = [n.strip() for n in args.models.split(",") if n.strip()] if args.models else None
    print(model_listing(names, args.in_channels, args.num_classes,
                        parse_input_size(args.input_size), with_flops=not args.no_flops))
    return 0


def command_report(args) -> int:
    from segbench.report import write_report

    out = write_report(args.folders, args.out)
    print(f"segbench: report in {out}")
    return 0


def command_data(args) -> int:
    from segbench.data.check import summarize

    print(summarize(args.dataset, args.image_size, args.seed))
    return 0


COMMANDS = {"run": command_run, "list": command_list, "report": command_report,
            "data": command_data}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except (UsageError, DataError) as e:  # the user's mistake: one line, no traceback
        return fail(str(e))
    except KeyboardInterrupt:
        print("\nsegbench: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # output piped into `head` and friends
        sys.stderr.close()
        return 0


if __name__ == "__main__":
    sys.exit(main())
