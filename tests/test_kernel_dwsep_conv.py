"""kernels.depthwise_separable_conv2d against its PyTorch reference, forward and gradients of
every input, on the kernel contract (tests/kernel_contract.py). The reference is evaluated in
float64 on the same (rounded) inputs. On CPU the kernels run in the Triton interpreter
(tests/conftest.py sets TRITON_INTERPRET=1), so shapes are tiny; larger shapes run under the
`gpu` marker.
"""

from __future__ import annotations

import pytest
import torch
from kernel_contract import DEVICE, KernelContract, pytest_generate_tests  # noqa: F401

from kernels import dwsep_conv
from kernels._common import FVCORE_HANDLES
from kernels.dwsep_conv import (
    depthwise_separable_conv2d,
    depthwise_separable_conv2d_reference,
    dwsep_macs,
)
from segbench.layers import SeparableConv2d, set_kernels


@pytest.fixture(autouse=True)
def exact_fp32(monkeypatch):
    """fp32 tl.dot follows cudnn.allow_tf32 (the module docstring): "ieee" unless a test
    turns TF32 back on. Matters on a GPU only; the interpreter is exact either way."""
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)


def make_inputs(n, c, h, w, cout, k, dtype=torch.float32, biases=True, dilation=1,
                activation=None, layout="contiguous"):
    """Weights scaled by 1/sqrt(fan-in) so that every output is of order 1. layout:
    "contiguous", "channels_last" (x), or "strided" (x and every weight a strided view)."""
    def rand(*shape, scale=1.0):
        return (torch.randn(*shape, device=DEVICE) * scale).to(dtype)

    inputs = dict(x=rand(n, c, h, w), dw_weight=rand(c, 1, k, k, scale=1 / k),
                  dw_bias=rand(c) if biases else None,
                  pw_weight=rand(cout, c, 1, 1, scale=c ** -0.5),
                  pw_bias=rand(cout) if biases else None,
                  dilation=dilation, mid_activation=activation)
    if layout == "channels_last":
        inputs["x"] = inputs["x"].contiguous(memory_format=torch.channels_last)
    elif layout == "strided":  # strided channels, offset rows, strided cols, transposed weights
        inputs["x"] = rand(n, 2 * c, h + 1, 2 * w)[:, ::2, 1:, ::2]
        inputs["dw_weight"] = rand(2 * c, 1, k, k, scale=1 / k)[::2]
        inputs["dw_bias"] = rand(2 * c)[::2] if biases else None
        inputs["pw_weight"] = rand(c, cout, 1, 1, scale=c ** -0.5).transpose(0, 1)
        inputs["pw_bias"] = rand(2 * cout)[::2] if biases else None
    return inputs


# (n, c, h, w, cout, k, dilation): odd sizes, channel counts that are not multiples of the
# 16-wide blocks (several channel blocks), K=5, dilation reaching past the image.
SHAPES = {
    "odd-3x3": (2, 20, 5, 7, 18, 3, 1),
    "dilated": (1, 17, 9, 6, 5, 3, 2),
    "k5": (1, 6, 7, 5, 33, 5, 1),
    "dilation>=H": (1, 3, 3, 4, 4, 3, 3),
    "k5-dilation>=H": (1, 4, 5, 5, 3, 5, 3),
}

# Tiny shapes whose sizes and strides are divisible as those of the canonical benchmark
# shapes (benchmarks/bench_dwsep_conv.py) are: Triton specialises a kernel on which integer
# arguments are multiples of 16 or equal to 1, so these make the sm_90 compile check
# (scripts/sm90_compile_check.sh over this file) compile what the benchmark launches.
BENCHMARK_LIKE_SHAPES = {
    "aspp-d12": (1, 32, 16, 16, 32, 3, 12),  # C, C_out, H, W multiples of 16
    "decoder-d1": (1, 32, 16, 16, 16, 3, 1),  # dilation 1
    "xception-d2": (1, 24, 16, 16, 24, 3, 2),  # 728 channels: a multiple of 8, not of 16
}
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


# GPU only: larger shapes, both layouts, every dtype.
GPU_SHAPES = {
    "aspp-d12": (2, 256, 33, 64, 96, 3, 12),
    "xception-d2": (2, 728, 16, 17, 728, 3, 2),
    "decoder": (1, 304, 40, 40, 256, 3, 1),
    "k5-d18": (1, 130, 30, 30, 70, 5, 18),
}


def shape_case(shape, **more) -> dict:
    n, c, h, w, cout, k, dilation = shape
    return dict(n=n, c=c, h=h, w=w, cout=cout, k=k, dilation=dilation, **more)


CASES = {
    **{f"{name}-{activation or 'linear'}": shape_case(shape, activation=activation)
       for name, shape in SHAPES.items() for activation in (None, "relu")},
    # bf16 passes in the interpreter too because tl.dot operands stay fp32 there.
    **{f"{dtype}-dilated-relu": shape_case((2, 20, 5, 7, 18, 3, 2), dtype=DTYPES[dtype],
                                           activation="relu") for dtype in ("fp16", "bf16")},
    **{f"benchmark-like-{name}-{dtype}": shape_case(shape, dtype=DTYPES[dtype], activation="relu")
       for name, shape in BENCHMARK_LIKE_SHAPES.items() for dtype in DTYPES},
    **{f"biases-dw{int(dw)}-pw{int(pw)}": shape_case((1, 5, 4, 6, 7, 3, 2), activation="relu",
                                                     biases=(dw, pw))
       for dw, pw in [(False, True), (True, False), (False, False)]},
    **{f"channels-last-d{d}": shape_case((2, 18, 5, 3, 6, 3, d), activation="relu",
                                         layout="channels_last") for d in (1, 2)},
    "non-contiguous": shape_case((2, 3, 8, 6, 5, 3, 1), activation="relu", layout="strided"),
}


def _with_biases(inputs: dict, biases) -> dict:
    if isinstance(biases, tuple):
        dw, pw = biases
        inputs["dw_bias"] = inputs["dw_bias"] if dw else None
        inputs["pw_bias"] = inputs["pw_bias"] if pw else None
    return inputs


def _bad_x(*shape, dtype=torch.float32):
    return lambda _: dict(x=torch.ones(*shape, dtype=dtype, device=DEVICE))


def _bad(name, *shape, dtype=torch.float32):
    return lambda _: {name: torch.randn(*shape, device=DEVICE).to(dtype)}


class TestDepthwiseSeparableConv(KernelContract):
    cases = CASES
    empty_case = dict(n=0, c=4, h=5, w=5, cout=3, k=3)
    small_case = dict(n=1, c=4, h=5, w=5, cout=3, k=3)
    differentiable = ("x", "dw_weight", "dw_bias", "pw_weight", "pw_bias")
    # (rtol, atol) against a float64 reference computed from the same (rounded) inputs, atol
    # scaled by the largest reference magnitude (at least 1): fp32 exact products with fp32
    # sums; fp16/bf16 round the depthwise intermediate and the output once each (2^-11 and
    # 2^-8 relative).
    output_tolerance = {
        torch.float32: dict(rtol=1e-4, atol=1e-4),
        torch.float16: dict(rtol=5e-3, atol=5e-3),
        torch.bfloat16: dict(rtol=3e-2, atol=3e-2),
    }
    grad_tolerance = output_tolerance
    atol_scales_with_reference = True
    rejected = {
        "3-d x": (_bad_x(4, 5, 5), "4-d"),
        "K=4": (_bad("dw_weight", 4, 1, 4, 4), "K in"),
        "K=1": (_bad("dw_weight", 4, 1, 1, 1), "K in"),
        "non-square K": (_bad("dw_weight", 4, 1, 3, 5), "K in"),
        "dw channels": (_bad("dw_weight", 5, 1, 3, 3), "dw_weight"),
        "pw channels": (_bad("pw_weight", 3, 5, 1, 1), "pw_weight"),
        "pw not 1x1": (_bad("pw_weight", 3, 4, 3, 3), "pw_weight"),
        "dw_bias shape": (_bad("dw_bias", 3), "dw_bias"),
        "pw_bias shape": (_bad("pw_bias", 4), "pw_bias"),
        "dilation 0": (lambda _: dict(dilation=0), "dilation"),
        "tuple dilation": (lambda _: dict(dilation=(2, 2)), "dilation"),
        "activation": (lambda _: dict(mid_activation="gelu"), "mid_activation"),
        "int dtype": (_bad_x(1, 4, 5, 5, dtype=torch.int32), "float32"),
        "mixed dtypes": (_bad("x", 1, 4, 5, 5, dtype=torch.float64), "float32"),
        "weight dtype": (_bad("pw_bias", 3, dtype=torch.float16), "dtype"),
    }

    def make_inputs(self, n, c, h, w, cout, k, biases=True, **more):
        return _with_biases(make_inputs(n, c, h, w, cout, k, **more), biases)

    def kernel(self, **inputs):
        return depthwise_separable_conv2d(**inputs)

    def reference(self, **inputs):
        return depthwise_separable_conv2d_reference(**inputs)

    def reference_inputs(self, inputs):
        return {n: t.double() if isinstance(t, torch.Tensor) else t for n, t in inputs.items()}

    def opcheck_cases(self):
        inputs = make_inputs(1, 5, 4, 3, 6, 3)
        tensors = [inputs[n] for n in self.differentiable]
        return [(torch.ops.segbench.dwsep_conv2d.default, (*tensors, 2, True))]

    def expected_flops(self, inputs):
        # 2 FLOPs per multiply-add, as the counter does for aten.convolution: the forward; the
        # recomputed depthwise, and the input and weight gradients of each conv backward
        n, c, h, w = inputs["x"].shape
        depthwise = n * h * w * c * inputs["dw_weight"].shape[-1] ** 2
        pointwise = n * h * w * c * inputs["pw_weight"].shape[0]
        return {"segbench.dwsep_conv2d": 2 * (depthwise + pointwise),
                "segbench.dwsep_conv2d_backward": 2 * (3 * depthwise + 2 * pointwise)}

    def expected_fvcore_flops(self, inputs):
        return dwsep_macs(inputs["x"].shape, inputs["dw_weight"].shape,
                          inputs["pw_weight"].shape)

    def test_channels_last_input_keeps_its_layout(self):
        inputs = self.make_inputs(2, 18, 5, 3, 6, 3, activation="relu", layout="channels_last")
        out, = self.assert_matches_reference(inputs)
        assert out.is_contiguous(memory_format=torch.channels_last)

    def test_fp32_with_tf32_allowed(self, monkeypatch):
        """The fp32 default of a model run (cudnn.allow_tf32 is on unless turned off)."""
        monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", True)
        for tolerances in (self.output_tolerance, self.grad_tolerance):  # 10-bit TF32 mantissa
            monkeypatch.setitem(tolerances, torch.float32, dict(rtol=5e-3, atol=5e-3))
        self.assert_matches_reference(
            self.make_inputs(**shape_case(BENCHMARK_LIKE_SHAPES["aspp-d12"], activation="relu")))

    def test_gradient_through_a_broadcast_grad_output(self):
        """out.sum() hands backward an expanded grad_out with zero strides."""
        inputs = self.make_inputs(1, 5, 4, 3, 6, 3, dilation=2, activation="relu")
        outputs, _, grads = self.run_with_grads(self.kernel, inputs,
                                                [torch.ones(()).expand(1, 6, 4, 3)])
        _, _, expected = self.run_with_grads(self.reference, self.reference_inputs(inputs),
                                             [torch.ones(()).expand(1, 6, 4, 3)])
        for name, grad in grads.items():
            self.assert_close(grad, expected[name], self.grad_tolerance[torch.float32],
                              f"grad {name}")

    @pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-without-interpreter path")
    def test_rejects_cpu_tensors_outside_the_interpreter(self, monkeypatch):
        monkeypatch.setenv("TRITON_INTERPRET", "0")
        with pytest.raises(ValueError, match="CUDA"):
            self.kernel(**self.make_inputs(**self.small_case))

    def test_flop_counter_counts_like_the_reference(self):
        from torch.utils.flop_counter import FlopCounterMode

        inputs = self.make_inputs(2, 5, 4, 3, 6, 5, activation="relu")
        counts = []
        for fn in (self.kernel, self.reference):
            with FlopCounterMode(display=False) as counter:
                fn(**inputs)
            counts.append(counter.get_total_flops())
        n, c, h, w, cout, k = 2, 5, 4, 3, 6, 5
        assert counts[0] == counts[1] == 2 * n * h * w * c * (k * k + cout)

    @pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:DeprecationWarning")
    def test_fvcore_handle_counts_multiply_adds_like_the_reference(self):
        from fvcore.nn import FlopCountAnalysis

        class Wrap(torch.nn.Module):
            def __init__(self, fn):
                super().__init__()
                self.fn = fn

            def forward(self, x, dw_weight, dw_bias, pw_weight, pw_bias):
                return self.fn(x, dw_weight, dw_bias, pw_weight, pw_bias, 2, "relu")

        inputs = make_inputs(1, 5, 4, 3, 6, 3)
        tensors = tuple(inputs[n] for n in self.differentiable)
        fused = FlopCountAnalysis(Wrap(depthwise_separable_conv2d), tensors)
        fused.set_op_handle(**FVCORE_HANDLES).unsupported_ops_warnings(False)
        reference = FlopCountAnalysis(Wrap(depthwise_separable_conv2d_reference), tensors)
        reference.unsupported_ops_warnings(False)
        assert fused.by_operator() == {"dwsep_conv2d": 4 * 3 * 5 * (9 + 6)}  # no "segbench::"
        assert fused.total() == reference.total()

    def test_torch_compile_traces_the_op_without_graph_breaks(self):
        inputs = self.make_inputs(1, 5, 4, 3, 6, 3, dilation=2, activation="relu")
        compiled = torch.compile(depthwise_separable_conv2d, backend="aot_eager",
                                 fullgraph=True)
        self.assert_matches_reference(inputs, kernel=lambda **args: compiled(**args))

    @pytest.mark.gpu
    @pytest.mark.parametrize("dtype", DTYPES.values(), ids=DTYPES.keys())
    @pytest.mark.parametrize("shape", GPU_SHAPES.values(), ids=GPU_SHAPES.keys())
    @pytest.mark.parametrize("layout", ["contiguous", "channels_last"], ids=["nchw", "nhwc"])
    def test_gpu_shapes_forward_and_gradients(self, shape, dtype, layout):
        self.assert_matches_reference(self.make_inputs(**shape_case(
            shape, dtype=dtype, activation="relu", layout=layout)))

    @pytest.mark.gpu
    def test_gpu_fp32_with_tf32_allowed(self, monkeypatch):
        monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", True)
        for tolerances in (self.output_tolerance, self.grad_tolerance):  # 10-bit TF32 mantissa
            monkeypatch.setitem(tolerances, torch.float32, dict(rtol=5e-3, atol=5e-3))
        self.assert_matches_reference(self.make_inputs(**shape_case(GPU_SHAPES["aspp-d12"],
                                                                    activation="relu")))


# ----------------------------------------------------------------------------- autotuning

H100_SHARED_MEMORY = 232448  # bytes a block may use on sm_90


def test_every_gpu_config_fits_hopper_shared_memory():
    for tiles in (dwsep_conv.FORWARD_TILES, dwsep_conv.EXACT_FORWARD_TILES,
                  dwsep_conv.BACKWARD_MID_TILES):
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
