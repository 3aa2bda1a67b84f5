"""Run configuration: frozen dataclasses, filled by the CLI, read by everything else."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path


class UsageError(ValueError):
    """A run that cannot start as asked; the CLI prints it as one line, without traceback."""


@dataclass(frozen=True)
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
    description: str


PROFILES = {
    "smoke": Profile("smoke", True, 32, 1, 8, 2e-3, 1e-4, False, 1, 3, (2,), 2,
                     "seconds per architecture, for tests: 1 epoch at 32 px"),
    "cpu": Profile("cpu", True, 96, 16, 16, 2e-3, 1e-4, False, 5, 30, (16, 4), 3,
                   "small variants at 96 px, 16 epochs: all eleven architectures in about "
                   "10-15 minutes on 2 CPU cores"),
    "gpu": Profile("gpu", False, 256, 40, 16, 3e-4, 1e-2, True, 20, 100, (64, 32, 16, 8), 10,
                   "paper-default variants at 256 px, 40 epochs, augmentation on"),
}


@dataclass(frozen=True)
class RunConfig:
    archs: tuple[str, ...]  # architecture or variant names
    dataset: str
    profile: Profile
    device: str  # "cpu" or "cuda"
    kernels: str  # "auto" | "torch" | "triton" | "both"
    out_dir: Path
    seed: int = 0
    threads: int = 2  # CPU threads for every measurement (torch.set_num_threads)
    pretrained: str | None = None
    cache_dir: Path | None = field(default=None)

    def to_json(self) -> dict:
        data = asdict(self)
        data["out_dir"] = str(self.out_dir)
        data["cache_dir"] = self.cache_dir and str(self.cache_dir)
        return data
