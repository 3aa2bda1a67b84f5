"""Run configuration: frozen dataclasses, filled by the CLI, read by everything else.

Nothing here imports torch, so `segbench --help` and argument errors are instant.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from pathlib import Path


class UsageError(ValueError):
    """A run that cannot go on as asked; the CLI prints it as one line, without traceback."""


@dataclass(frozen=True, kw_only=True)
class Profile:
    name: str
    small_models: bool  # the cpu=True variants instead of the paper defaults
    image_size: int
    epochs: int
    batch_size: int
    lr: float
    weight_decay: float
    augment: bool
    latency_warmup: int
    latency_repeats: int
    throughput_batches: tuple[int, ...]  # tried largest first; the largest that fits is used
    throughput_repeats: int
    needs_gpu: bool  # refused on a CPU unless forced: it would take hours
    description: str


SMOKE = Profile(
    name="smoke", small_models=True, image_size=32, epochs=1, batch_size=8,
    lr=2e-3, weight_decay=1e-4, augment=False,
    latency_warmup=1, latency_repeats=3, throughput_batches=(2,), throughput_repeats=2,
    needs_gpu=False, description="seconds per architecture, for tests: 1 epoch at 32 px",
)
CPU = Profile(
    name="cpu", small_models=True, image_size=96, epochs=16, batch_size=16,
    lr=2e-3, weight_decay=1e-4, augment=False,
    latency_warmup=5, latency_repeats=30, throughput_batches=(16, 4), throughput_repeats=3,
    needs_gpu=False, description="small variants at 96 px, 16 epochs: all eleven architectures "
    "in about 10-15 minutes on 2 CPU cores",
)
GPU = Profile(
    name="gpu", small_models=False, image_size=256, epochs=40, batch_size=16,
    lr=3e-4, weight_decay=1e-2, augment=True,
    latency_warmup=20, latency_repeats=100, throughput_batches=(64, 32, 16, 8),
    throughput_repeats=10,
    needs_gpu=True, description="paper-default variants at 256 px, 40 epochs, augmentation on",
)
GPU_QUICK = replace(
    GPU, name="gpu-quick", epochs=2,
    description="the gpu profile for 2 epochs: a quick end-to-end check on a GPU",
)
PROFILES = {p.name: p for p in (SMOKE, CPU, GPU, GPU_QUICK)}


def default_profile(device: str) -> Profile:
    return GPU if device == "cuda" else CPU


COMPILE_MODES = ("none", "default", "max-autotune")
DTYPES = ("auto", "fp32", "bf16", "fp16")
# "family": each architecture family's recipe from its paper (segbench.recipes, the default);
# "shared": one recipe for every architecture (the profile's AdamW lr and weight decay)
RECIPES = ("family", "shared")
BATCH_SWEEP_RULE = "increasing positive integers such as 1,2,4,8"


def default_dtype(device: str) -> str:
    """The one place that decides autocast: bf16 on CUDA, plain fp32 elsewhere."""
    return "bf16" if device == "cuda" else "fp32"


@dataclass(frozen=True)
class Mode:
    """How a trained model is deployed for measuring: one axis of the grid of rows."""

    compile: str = "none"
    channels_last: bool = False
    dtype: str = "auto"  # autocast dtype; auto = default_dtype(device)
    cuda_graphs: bool = False

    def __post_init__(self) -> None:
        if self.compile not in COMPILE_MODES:
            raise UsageError(f"compile mode must be one of {', '.join(COMPILE_MODES)}, "
                             f"got {self.compile!r}")
        if self.dtype not in DTYPES:
            raise UsageError(f"dtype must be one of {', '.join(DTYPES)}, got {self.dtype!r}")

    def check_device(self, device: str) -> None:
        """fp16 autocast and CUDA graphs exist only on a GPU."""
        if device == "cuda":
            return
        if self.dtype == "fp16":
            raise UsageError(f"--dtype fp16 needs --device cuda (on {device}: fp32 or bf16)")
        if self.cuda_graphs:
            raise UsageError(f"--cuda-graphs needs --device cuda (no CUDA graphs on {device})")

    def resolved(self, device: str) -> Mode:
        return replace(self, dtype=default_dtype(device)) if self.dtype == "auto" else self

    @property
    def label(self) -> str:
        """Stable and short, e.g. `eager-fp32` or `max-autotune-bf16-cl-graphs`; part of the
        row key. Call on a resolved mode."""
        parts = ["eager" if self.compile == "none" else self.compile, self.dtype]
        parts += ["cl"] * self.channels_last + ["graphs"] * self.cuda_graphs
        return "-".join(parts)


@dataclass(frozen=True)
class RunConfig:
    archs: tuple[str, ...]  # architecture or variant names
    dataset: str
    profile: Profile
    device: str  # "cpu" or "cuda"
    kernels: str  # "auto" | "torch" | "triton" | "both"
    out_dir: Path
    seeds: tuple[int, ...] = (0,)  # one training per seed
    folds: int = 1  # 1: the dataset's train/val/test split; K: K-fold cross-validation
    split_seed: int | None = None  # None: each row's training seed also draws its split
    recipe: str = "family"  # one of RECIPES
    lr_sweep: bool = False  # pick each training's lr among 3 on the validation split
    modes: tuple[Mode, ...] = (Mode(),)
    threads: int = 2  # CPU threads for training and every measurement
    batch_sweep: tuple[int, ...] = ()  # inference batches timed per row, increasing, until OOM
    save_weights: bool | None = None  # None: save the trained weights of small models only
    pretrained: str | None = None
    cache_dir: Path | None = field(default=None)
    force: bool = False  # run a profile that needs a GPU on a CPU, or past the memory estimate

    def __post_init__(self) -> None:
        if not self.seeds:
            raise UsageError("seeds is empty")
        if self.folds < 1:
            raise UsageError(f"folds must be at least 1, got {self.folds}")
        if list(self.batch_sweep) != sorted(set(self.batch_sweep)) or \
                any(b < 1 for b in self.batch_sweep):
            raise UsageError(f"--batch-sweep must be {BATCH_SWEEP_RULE}; got "
                             f"{','.join(map(str, self.batch_sweep))}")
        for mode in self.modes:
            mode.check_device(self.device)
        if self.recipe not in RECIPES:
            raise UsageError(f"recipe must be one of {', '.join(RECIPES)}, got {self.recipe!r}")

    def split_seed_for(self, seed: int) -> int:
        return seed if self.split_seed is None else self.split_seed

    def to_json(self) -> dict:
        data = asdict(self)
        data["out_dir"] = str(self.out_dir)
        data["cache_dir"] = self.cache_dir and str(self.cache_dir)
        data["modes"] = [m.resolved(self.device).label for m in self.modes]
        return data
