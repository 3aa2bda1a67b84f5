"""kernels.depthwise_separable_conv2d against its PyTorch reference, forward and gradients.

On CPU the kernels run in the Triton interpreter (tests/conftest.py sets TRITON_INTERPRET=1),
so shapes are tiny; larger shapes run under the `gpu` marker. Inputs are fresh random
numbers every run; each test prints its seed, and SEGBENCH_TEST_SEED=<seed> replays it.
"""

from __future__ import annotations

import os
import secrets

import pytest
import torch

from kernels import dwsep_conv
from kernels._common import FVCORE_HANDLES
from kernels.dwsep_conv import (
    depthwise_separable_conv2d,
    depthwise_separable_conv2d_reference,
)
from segbench.layers import SeparableConv2d, set_kernels

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"

# (rtol, atol) against a float64 reference computed from the same (rounded) inputs, for
# outputs of order 1: fp32 exact products with fp32 sums; fp16/bf16 round the depthwise
# intermediate and the output once each (2^-11 and 2^-8 relative).
TOLERANCES = {
    torch.float32: (1e-4, 1e-4),
    torch.float16: (5e-3, 5e-3),
    torch.bfloat16: (3e-2, 3e-2),
}


@pytest.fixture(autouse=True)
def seed():
    value = int(os.environ.get("SEGBENCH_TEST_SEED", secrets.randbits(31)))
    print(f"seed={value} (replay with SEGBENCH_TEST_SEED={value})")
    torch.manual_seed(value)
    return value


@pytest.fixture(autouse=True)
def exact_fp32(monkeypatch):
    """fp32 tl.dot follows cudnn.allow_tf32 (the module docstring): "ieee" unless a test
    turns TF32 back on. Matters on a GPU only; the interpreter is exact either way."""
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)


@pytest.fixture(autouse=True)
def poisoned_outputs(monkeypatch):
    """Every kernel output starts as NaN, so an element no program writes fails the check."""
    monkeypatch.setattr(dwsep_conv, "POISON_OUTPUTS", True)


def make_inputs(n, c, h, w, cout, k, dtype=torch.float32, biases=True, device=DEVICE):
    """Weights scaled by 1/sqrt(fan-in) so that every output is of order 1."""
    def rand(*shape, scale=1.0):
        return (torch.randn(*shape, device=device) * scale).to(dtype)

    return dict(
        x=rand(n, c, h, w),
        dw_weight=rand(c, 1, k, k, scale=1 / k),
        dw_bias=rand(c) if biases else None,
        pw_weight=rand(cout, c, 1, 1, scale=c ** -0.5),
        pw_bias=rand(cout) if biases else None,
    )


def as_float64(inputs):
    return {name: None if t is None else t.detach().double() for name, t in inputs.items()}


def assert_matches(actual, expected, dtype, what="output"):
    rtol, atol = TOLERANCES[dtype]
    scale = max(1.0, expected.abs().max().item())
    assert actual.dtype == dtype, what
    assert not torch.isnan(actual).any(), f"{what}: NaN left (element never written?)"
    torch.testing.assert_close(actual.double(), expected, rtol=rtol, atol=atol * scale,
                               msg=lambda m: f"{what}: {m}")


def run_forward(inputs, dilation, activation):
    return depthwise_separable_conv2d(**inputs, dilation=dilation, mid_activation=activation)


def check_forward(inputs, dilation=1, activation=None):
    out = run_forward(inputs, dilation, activation)
    expected = depthwise_separable_conv2d_reference(**as_float64(inputs), dilation=dilation,
                                                    mid_activation=activation)
    assert_matches(out, expected, inputs["x"].dtype)
    return out


def check_gradients(inputs, dilation=1, activation=None):
    dtype = inputs["x"].dtype
    leaves = {name: None if t is None else t.detach().requires_grad_()
              for name, t in inputs.items()}
    out = run_forward(leaves, dilation, activation)
    grad_out = torch.randn_like(out)
    out.backward(grad_out)
    reference = {name: None if t is None else t.detach().double().requires_grad_()
                 for name, t in inputs.items()}
    expected = depthwise_separable_conv2d_reference(**reference, dilation=dilation,
                                                    mid_activation=activation)
    expected.backward(grad_out.double())
    assert_matches(out, expected.detach(), dtype)
    for name, leaf in leaves.items():
        if leaf is not None:
            assert_matches(leaf.grad, reference[name].grad, dtype, what=f"grad of {name}")


# (n, c, h, w, cout, k, dilation): odd sizes, channel counts that are not multiples of the
# 16-wide blocks (several channel blocks), K=5, dilation reaching past the image.
SHAPES = {
    "odd-3x3": (2, 20, 5, 7, 18, 3, 1),
    "dilated": (1, 17, 9, 6, 5, 3, 2),
    "k5": (1, 6, 7, 5, 33, 5, 1),
    "dilation>=H": (1, 3, 3, 4, 4, 3, 3),
    "k5-dilation>=H": (1, 4, 5, 5, 3, 5, 3),
}


@pytest.mark.parametrize("activation", [None, "relu"])
@pytest.mark.parametrize("shape", SHAPES.values(), ids=SHAPES.keys())
def test_forward_matches_reference(shape, activation):
    n, c, h, w, cout, k, dilation = shape
    check_forward(make_inputs(n, c, h, w, cout, k), dilation, activation)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
def test_half_precision_forward_and_gradients(dtype):
    # bf16 passes in the interpreter too because tl.dot operands stay fp32 there.
    check_gradients(make_inputs(2, 20, 5, 7, 18, 3, dtype), dilation=2, activation="relu")


@pytest.mark.parametrize("activation", [None, "relu"])
@pytest.mark.parametrize("shape", SHAPES.values(), ids=SHAPES.keys())
def test_gradients_match_reference(shape, activation):
    n, c, h, w, cout, k, dilation = shape
    check_gradients(make_inputs(n, c, h, w, cout, k), dilation, activation)


# Tiny shapes whose sizes and strides are divisible as those of the canonical benchmark
# shapes (benchmarks/bench_dwsep_conv.py) are: Triton specialises a kernel on which integer
# arguments are multiples of 16 or equal to 1, so these make the sm_90 compile check
# (tools/triton_aot_check.py over this file) compile what the benchmark launches.
BENCHMARK_LIKE_SHAPES = {
    "aspp-d12": (1, 32, 16, 16, 32, 3, 12),  # C, C_out, H, W multiples of 16
    "decoder-d1": (1, 32, 16, 16, 16, 3, 1),  # dilation 1
    "xception-d2": (1, 24, 16, 16, 24, 3, 2),  # 728 channels: a multiple of 8, not of 16
}


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16],
                         ids=["fp32", "fp16", "bf16"])
@pytest.mark.parametrize("shape", BENCHMARK_LIKE_SHAPES.values(),
                         ids=BENCHMARK_LIKE_SHAPES.keys())
def test_benchmark_like_shapes(shape, dtype):
    n, c, h, w, cout, k, dilation = shape
    check_gradients(make_inputs(n, c, h, w, cout, k, dtype), dilation, "relu")


def test_fp32_with_tf32_allowed(monkeypatch):
    """The fp32 default of a model run (cudnn.allow_tf32 is on unless turned off)."""
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", True)
    monkeypatch.setitem(TOLERANCES, torch.float32, (5e-3, 5e-3))  # 10-bit TF32 mantissa
    n, c, h, w, cout, k, dilation = BENCHMARK_LIKE_SHAPES["aspp-d12"]
    check_gradients(make_inputs(n, c, h, w, cout, k), dilation, "relu")


@pytest.mark.parametrize("dw_bias, pw_bias", [(False, True), (True, False), (False, False)])
def test_missing_biases(dw_bias, pw_bias):
    inputs = make_inputs(1, 5, 4, 6, 7, 3)
    inputs["dw_bias"] = inputs["dw_bias"] if dw_bias else None
    inputs["pw_bias"] = inputs["pw_bias"] if pw_bias else None
    check_gradients(inputs, dilation=2, activation="relu")


def test_channels_last_input_keeps_its_layout():
    inputs = make_inputs(2, 18, 5, 3, 6, 3)
    inputs["x"] = inputs["x"].contiguous(memory_format=torch.channels_last)
    out = check_forward(inputs, dilation=1, activation="relu")
    assert out.is_contiguous(memory_format=torch.channels_last)
    check_gradients(inputs, dilation=2, activation="relu")


def test_non_contiguous_inputs():
    inputs = make_inputs(2, 6, 9, 11, 5, 3)
    inputs["x"] = inputs["x"][:, ::2, 1:, ::2]  # strided channels, offset rows, strided cols
    inputs["dw_weight"] = inputs["dw_weight"][::2]
    inputs["dw_bias"] = inputs["dw_bias"][::2]
    inputs["pw_weight"] = torch.randn(3, 5, 1, 1, device=DEVICE).transpose(0, 1)
    inputs["pw_bias"] = torch.randn(10, device=DEVICE)[::2]
    assert not inputs["x"].is_contiguous()
    check_gradients(inputs, dilation=1, activation="relu")


def test_gradient_through_a_broadcast_grad_output():
    """out.sum() hands backward an expanded grad_out with zero strides."""
    inputs = {name: None if t is None else t.requires_grad_()
              for name, t in make_inputs(1, 5, 4, 3, 6, 3).items()}
    run_forward(inputs, 2, "relu").sum().backward()
    reference = {name: t.detach().double().requires_grad_() for name, t in inputs.items()}
    depthwise_separable_conv2d_reference(**reference, dilation=2,
                                         mid_activation="relu").sum().backward()
    for name, leaf in inputs.items():
        assert_matches(leaf.grad, reference[name].grad, torch.float32, what=f"grad of {name}")


def test_empty_batch():
    inputs = make_inputs(0, 4, 5, 5, 3, 3)
    assert run_forward(inputs, 1, None).shape == (0, 3, 5, 5)


def _bad(**changes):
    inputs = make_inputs(1, 4, 5, 5, 3, 3)
    inputs.update(changes)
    return inputs


BAD_INPUTS = {
    "3-d x": (_bad(x=torch.randn(4, 5, 5)), 1, None, "4-d"),
    "K=4": (_bad(dw_weight=torch.randn(4, 1, 4, 4)), 1, None, "K in"),
    "K=1": (_bad(dw_weight=torch.randn(4, 1, 1, 1)), 1, None, "K in"),
    "non-square K": (_bad(dw_weight=torch.randn(4, 1, 3, 5)), 1, None, "K in"),
    "dw channels": (_bad(dw_weight=torch.randn(5, 1, 3, 3)), 1, None, "dw_weight"),
    "pw channels": (_bad(pw_weight=torch.randn(3, 5, 1, 1)), 1, None, "pw_weight"),
    "pw not 1x1": (_bad(pw_weight=torch.randn(3, 4, 3, 3)), 1, None, "pw_weight"),
    "dw_bias shape": (_bad(dw_bias=torch.randn(3)), 1, None, "dw_bias"),
    "pw_bias shape": (_bad(pw_bias=torch.randn(4)), 1, None, "pw_bias"),
    "dilation 0": (_bad(), 0, None, "dilation"),
    "tuple dilation": (_bad(), (2, 2), None, "dilation"),
    "activation": (_bad(), 1, "gelu", "mid_activation"),
    "int dtype": (_bad(x=torch.ones(1, 4, 5, 5, dtype=torch.int32)), 1, None, "float32"),
    "mixed dtypes": (_bad(x=torch.randn(1, 4, 5, 5, dtype=torch.float64)), 1, None, "float32"),
    "weight dtype": (_bad(pw_bias=torch.randn(3, dtype=torch.float16)), 1, None, "dtype"),
}


@pytest.mark.parametrize("inputs, dilation, activation, message", BAD_INPUTS.values(),
                         ids=BAD_INPUTS.keys())
def test_rejects_what_it_cannot_compute(inputs, dilation, activation, message):
    with pytest.raises(ValueError, match=message):
        run_forward(inputs, dilation, activation)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-without-interpreter path")
def test_rejects_cpu_tensors_outside_the_interpreter(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(ValueError, match="CUDA"):
        run_forward(make_inputs(1, 4, 5, 5, 3, 3), 1, None)


def test_registered_as_custom_op():
    inputs = make_inputs(1, 5, 4, 3, 6, 3)
    args = (*inputs.values(), 2, True)
    torch.library.opcheck(torch.ops.segbench.dwsep_conv2d.default, args,
                          test_utils=("test_schema", "test_faketensor",
                                      "test_autograd_registration"))


def test_flop_counter_counts_like_the_reference():
    from torch.utils.flop_counter import FlopCounterMode

    inputs = make_inputs(2, 5, 4, 3, 6, 5)
    counts = []
    for fn in (depthwise_separable_conv2d, depthwise_separable_conv2d_reference):
        with FlopCounterMode(display=False) as counter:
            fn(**inputs, dilation=1, mid_activation="relu")
        counts.append(counter.get_total_flops())
    n, c, h, w, cout, k = 2, 5, 4, 3, 6, 5
    assert counts[0] == counts[1] == 2 * n * h * w * c * (k * k + cout)


@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:DeprecationWarning")
def test_fvcore_handle_counts_multiply_adds_like_the_reference():
    from fvcore.nn import FlopCountAnalysis

    class Wrap(torch.nn.Module):
        def __init__(self, fn):
            super().__init__()
            self.fn = fn

        def forward(self, x, dw_weight, dw_bias, pw_weight, pw_bias):
            return self.fn(x, dw_weight, dw_bias, pw_weight, pw_bias, 2, "relu")

    inputs = tuple(make_inputs(1, 5, 4, 3, 6, 3).values())
    fused = FlopCountAnalysis(Wrap(depthwise_separable_conv2d), inputs)
    fused.set_op_handle(**FVCORE_HANDLES).unsupported_ops_warnings(False)
    reference = FlopCountAnalysis(Wrap(depthwise_separable_conv2d_reference), inputs)
    reference.unsupported_ops_warnings(False)
    assert fused.by_operator() == {"dwsep_conv2d": 4 * 3 * 5 * (9 + 6)}  # fvcore drops "segbench::"
    assert fused.total() == reference.total()


def test_torch_compile_traces_the_op_without_graph_breaks():
    inputs = {name: t.requires_grad_() for name, t in make_inputs(1, 5, 4, 3, 6, 3).items()}
    compiled = torch.compile(run_forward, backend="aot_eager", fullgraph=True)
    out = compiled(inputs, 2, "relu")
    out.backward(torch.ones_like(out))
    expected = depthwise_separable_conv2d_reference(**as_float64(inputs), dilation=2,
                                                    mid_activation="relu")
    assert_matches(out, expected.detach(), torch.float32)


# ----------------------------------------------------------------------------- autotuning

H100_SHARED_MEMORY = 232448  # bytes a block may use on sm_90


def test_every_gpu_config_fits_hopper_shared_memory():
    for tiles in (dwsep_conv.FORWARD_TILES, dwsep_conv.BACKWARD_MID_TILES):
        configs = dwsep_conv._configs(tiles)
        for element_bytes in (2, 4):
            kept = dwsep_conv._prune(configs, {"BLOCK_P": 4096, "BLOCK_CI": 2048,
                                               "BLOCK_CO": 256}, element_bytes,
                                     H100_SHARED_MEMORY)
            assert kept == configs


def test_pruning_keeps_blocks_the_problem_needs():
    configs = dwsep_conv._configs(dwsep_conv.FORWARD_TILES)
    kept = dwsep_conv._prune(configs, {"BLOCK_P": 4096, "BLOCK_CI": 2048, "BLOCK_CO": 70},
                             2, H100_SHARED_MEMORY)
    assert kept and all(c.kwargs["BLOCK_CO"] <= 128 for c in kept)
    assert len(kept) < len(configs)
    # Nothing fits five output channels: the smallest tile is the one left to run.
    tiny = dwsep_conv._prune(configs, {"BLOCK_P": 35, "BLOCK_CI": 20, "BLOCK_CO": 5},
                             2, H100_SHARED_MEMORY)
    elements = [c.kwargs["BLOCK_P"] * c.kwargs["BLOCK_CI"] * c.kwargs["BLOCK_CO"]
                for c in configs]
    assert len(tiny) == 1
    assert tiny[0].kwargs["BLOCK_P"] * tiny[0].kwargs["BLOCK_CI"] * tiny[0].kwargs[
        "BLOCK_CO"] == min(elements)


def test_pruning_drops_configs_over_the_device_shared_memory():
    configs = dwsep_conv._configs(dwsep_conv.FORWARD_TILES)
    extents = {"BLOCK_P": 4096, "BLOCK_CI": 2048, "BLOCK_CO": 256}
    limit = 180 * 1024
    kept = dwsep_conv._prune(configs, extents, 4, limit)
    assert kept and len(kept) < len(configs)
    assert all(dwsep_conv._smem_bound(c, 4) <= limit for c in kept)
    with pytest.raises(ValueError, match="shared memory"):
        dwsep_conv._prune(configs, extents, 4, 64 * 1024)


# ----------------------------------------------------------------------------- the layer


def randomised_layer(in_channels, out_channels, kernel_size, dilation, relu_out, kernels):
    layer = set_kernels(SeparableConv2d(in_channels, out_channels, kernel_size, dilation=dilation,
                                        relu_out=relu_out), kernels).to(DEVICE)
    with torch.no_grad():
        for bn in (layer.bn_depthwise, layer.bn_pointwise):
            bn.weight.uniform_(0.5, 1.5)
            bn.bias.normal_()
            bn.running_mean.normal_()
            bn.running_var.uniform_(0.5, 2.0)
    return layer


@pytest.mark.parametrize("kernel_size, dilation, relu_out", [(3, 2, True), (5, 1, False)])
def test_layer_triton_eval_matches_torch_eval(kernel_size, dilation, relu_out):
    torch_layer = randomised_layer(6, 7, kernel_size, dilation, relu_out, "torch").eval()
    triton_layer = set_kernels(SeparableConv2d(6, 7, kernel_size, dilation=dilation,
                                               relu_out=relu_out), "triton").to(DEVICE).eval()
    triton_layer.load_state_dict(torch_layer.state_dict())
    x = torch.randn(2, 6, 5, 4, device=DEVICE)
    with torch.no_grad():
        torch.testing.assert_close(triton_layer(x), torch_layer(x), rtol=1e-4, atol=1e-4)


def test_layer_triton_training_step_matches_torch():
    layers = {kernels: randomised_layer(6, 7, 3, 2, True, kernels)
              for kernels in ("torch", "triton")}
    layers["triton"].load_state_dict(layers["torch"].state_dict())
    x = torch.randn(2, 6, 5, 4, device=DEVICE)
    for layer in layers.values():
        optimizer = torch.optim.SGD(layer.parameters(), lr=0.1)
        layer.train()(x).square().mean().backward()
        optimizer.step()
    triton_state = layers["triton"].state_dict()
    for name, value in layers["torch"].state_dict().items():
        torch.testing.assert_close(triton_state[name], value,
                                   msg=lambda m, name=name: f"{name}: {m}")


def test_layer_rejects_unknown_backend():
    with pytest.raises(ValueError, match="kernels"):
        set_kernels(SeparableConv2d(4, 4), "cuda")


# ----------------------------------------------------------------------------- GPU only

GPU_SHAPES = {
    "aspp-d12": (2, 256, 33, 64, 96, 3, 12),
    "xception-d2": (2, 728, 16, 17, 728, 3, 2),
    "decoder": (1, 304, 40, 40, 256, 3, 1),
    "k5-d18": (1, 130, 30, 30, 70, 5, 18),
}


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16],
                         ids=["fp32", "fp16", "bf16"])
@pytest.mark.parametrize("shape", GPU_SHAPES.values(), ids=GPU_SHAPES.keys())
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "nhwc"])
def test_gpu_shapes_forward_and_gradients(shape, dtype, channels_last):
    n, c, h, w, cout, k, dilation = shape
    inputs = make_inputs(n, c, h, w, cout, k, dtype)
    if channels_last:
        inputs["x"] = inputs["x"].contiguous(memory_format=torch.channels_last)
    check_gradients(inputs, dilation, "relu")


@pytest.mark.gpu
def test_gpu_fp32_with_tf32_allowed(monkeypatch):
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", True)
    monkeypatch.setitem(TOLERANCES, torch.float32, (5e-3, 5e-3))  # 10-bit TF32 mantissa
    check_gradients(make_inputs(*GPU_SHAPES["aspp-d12"][:6]), 12, "relu")
