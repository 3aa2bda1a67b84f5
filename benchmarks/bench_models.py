"""Model forward, one benchmark per registered architecture.

CUDA: the paper-default variant at 256 px, bf16 autocast, torch and triton kernels.
CPU: the small variant at 64 px, fp32, 2 threads. Batch 1, eval mode, synchronised.
Run: pytest benchmarks/bench_models.py --benchmark-json=bench_models.json
"""

from __future__ import annotations

import pytest
import torch

from segbench.layers import set_kernels
from segbench.models import create_model, registered_architectures, variant_for_profile

ON_GPU = torch.cuda.is_available()
DEVICE = torch.device("cuda" if ON_GPU else "cpu")
SIZE = 256 if ON_GPU else 64
THREADS = 2
BACKENDS = ["torch", "triton"] if ON_GPU else ["torch"]


@pytest.mark.parametrize("kernels", BACKENDS)
@pytest.mark.parametrize("arch", registered_architectures())
def test_model_forward(benchmark, arch, kernels):
    torch.set_num_threads(THREADS)
    spec = variant_for_profile(arch, small=not ON_GPU)
    model = set_kernels(create_model(spec.name, num_classes=4, in_channels=1), kernels)
    model = model.to(DEVICE).eval()
    x = torch.randn(1, 1, SIZE, SIZE, device=DEVICE)

    @torch.no_grad()
    def forward():
        with torch.autocast(DEVICE.type, dtype=torch.bfloat16, enabled=ON_GPU):
            out = model(x)
        if ON_GPU:
            torch.cuda.synchronize()
        return out

    benchmark.extra_info.update(variant=spec.name, device=str(DEVICE), image_size=SIZE, batch=1,
                                dtype="bf16 autocast" if ON_GPU else "fp32",
                                threads=THREADS if not ON_GPU else None, kernels=kernels)
    out = benchmark.pedantic(forward, warmup_rounds=3, rounds=10 if ON_GPU else 5, iterations=1)
    assert out.shape == (1, 4, SIZE, SIZE)
