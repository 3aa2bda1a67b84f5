"""The end-to-end step of scripts/gpu_check.sh --dry-run: `segbench run --arch
swin,segnet,deeplabv3plus --kernels both` on the CPU in the Triton interpreter, at a tiny
budget, through the runner (the CLI offers --kernels both only with --device cuda until it
accepts the interpreter), on two test images. Exit 1 unless all six rows (three architectures x
two backends) are ok.

    TRITON_INTERPRET=1 python scripts/end_to_end_rehearsal.py OUT_DIR
"""

from __future__ import annotations

import sys
from dataclasses import replace
from pathlib import Path

from segbench import runner
from segbench.config import PROFILES, RunConfig

ARCHS = ("swin", "segnet", "deeplabv3plus")
TINY = replace(PROFILES["smoke"], image_size=32, batch_size=4, latency_warmup=0,
               latency_repeats=1, throughput_batches=(1,), throughput_repeats=1)


def _small_test_split(load):
    """Two test images: every measurement runs, in a fraction of the interpreter's time."""
    def load_small(*args, **kwargs):
        data = load(*args, **kwargs)
        test = data.splits["test"]
        data.splits["test"] = type(test)(test.images[:2], test.masks[:2])
        return data
    return load_small


def main(out_dir: str) -> int:
    runner.load_dataset = _small_test_split(runner.load_dataset)
    cfg = RunConfig(archs=ARCHS, dataset="phantom", profile=TINY, device="cpu", kernels="both",
                    out_dir=Path(out_dir))
    rows = list(runner.run(cfg))
    for row in rows:
        print(f"{row.variant} [{row.kernels}]: {row.status} {row.reason}".rstrip())
    return 0 if len(rows) == 2 * len(ARCHS) and all(r.status == "ok" for r in rows) else 1


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: TRITON_INTERPRET=1 python scripts/end_to_end_rehearsal.py OUT_DIR")
    sys.exit(main(sys.argv[1]))
