"""The contract every Triton kernel's tests check, in the style of smp's BaseModelTester: a
test module subclasses `KernelContract` once per public kernel function, fills in its inputs,
reference, cases and rejected inputs, and inherits the tests:

  test_matches_reference[case]  output and the gradient of every differentiable input against
                                the PyTorch reference, every kernel output allocated poisoned
                                (kernels._common.empty_output), so an element no program wrote
                                cannot pass
  test_empty_batch              the same on a batch of zero
  test_rejects[what]            one clear ValueError per unsupported input, with its words
  test_passes_opcheck           torch.library.opcheck on every custom op of the function
  test_flop_counters            torch.utils.flop_counter (per op, by name, forward+backward)
                                and fvcore (with kernels._common.FVCORE_HANDLES) count what the
                                kernel's formula says, and fvcore meets no unsupported op

Inputs are fresh random numbers every test; the seed is printed and SEGBENCH_TEST_SEED=<seed>
replays it. A test module imports `pytest_generate_tests` from here (it parametrizes `case`
and `what` by the class's tables). On CPU the kernels run in the Triton interpreter
(tests/conftest.py), so cases are tiny.
"""

from __future__ import annotations

import math
import os
import random
from collections.abc import Callable
from typing import Any

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from kernels._common import FVCORE_HANDLES, poisoned_outputs

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
EXACT = dict(atol=0.0, rtol=0.0)

Inputs = dict[str, Any]


def pytest_generate_tests(metafunc):
    cls = metafunc.cls
    if cls is None or not issubclass(cls, KernelContract):
        return
    if "case" in metafunc.fixturenames:
        metafunc.parametrize("case", list(cls.cases))
    if "what" in metafunc.fixturenames:
        metafunc.parametrize("what", list(cls.rejected))


def _as_tuple(outputs) -> tuple:
    return outputs if isinstance(outputs, (tuple, list)) else (outputs,)


class _Forward(torch.nn.Module):
    """fn(**inputs) as a module of its tensor inputs only, for fvcore's jit trace."""

    def __init__(self, fn: Callable, inputs: Inputs):
        super().__init__()
        self.fn, self.inputs = fn, inputs
        self.tensor_names = [n for n, v in inputs.items() if isinstance(v, torch.Tensor)]

    def forward(self, *tensors):
        return self.fn(**(self.inputs | dict(zip(self.tensor_names, tensors, strict=True))))


class KernelContract:
    """Subclasses set the tables and implement make_inputs, kernel and reference."""

    # case id -> keyword arguments of make_inputs
    cases: dict[str, dict] = {}
    # make_inputs keyword arguments of an input with an empty batch
    empty_case: dict = {}
    # make_inputs keyword arguments of a small valid input: FLOPs are counted on it and the
    # rejected inputs are variations of it
    small_case: dict = {}
    # what is wrong -> (function of valid inputs giving the arguments that replace some of
    # them, words the ValueError must contain)
    rejected: dict[str, tuple[Callable[[Inputs], Inputs], str]] = {}
    # names of the inputs whose gradients are compared (None values are skipped)
    differentiable: tuple[str, ...] = ()
    # assert_close tolerances by the dtype of the first differentiable input
    output_tolerance: dict[torch.dtype, dict] = {}
    grad_tolerance: dict[torch.dtype, dict] = {}
    # what every kernel output starts as (floating outputs; integer ones start at the dtype's
    # largest value); a NaN poison needs reference outputs without NaN
    poison: float = math.nan
    # compare NaN as equal to NaN (kernels whose references give NaN for some inputs)
    equal_nan: bool = False

    # ------------------------------------------------------------------ to implement

    def make_inputs(self, **case) -> Inputs:
        """Keyword arguments of `kernel` for one case, random, on DEVICE."""
        raise NotImplementedError

    def kernel(self, **inputs):
        raise NotImplementedError

    def reference(self, **inputs):
        raise NotImplementedError

    def reference_inputs(self, inputs: Inputs) -> Inputs:
        """What the reference is evaluated on (e.g. upcast copies); the same by default."""
        return inputs

    def grad_outputs(self, outputs: tuple) -> list[torch.Tensor | None]:
        """Upstream gradients for the floating outputs (None for the others)."""
        return [torch.randn_like(o) if o.is_floating_point() else None for o in outputs]

    def opcheck_cases(self) -> list[tuple[Any, tuple]]:
        """(custom op, arguments) pairs for torch.library.opcheck."""
        raise NotImplementedError

    def expected_flops(self, inputs: Inputs) -> dict[str, int]:
        """torch.utils.flop_counter counts of forward+backward by op name (e.g.
        "segbench.window_attention"), 2 FLOPs per multiply-add."""
        raise NotImplementedError

    def expected_fvcore_flops(self, inputs: Inputs) -> int:
        """fvcore's forward count, 1 FLOP per multiply-add (the papers' convention)."""
        raise NotImplementedError

    # ------------------------------------------------------------------ fixtures

    @pytest.fixture(autouse=True)
    def seed(self) -> int:
        value = int(os.environ.get("SEGBENCH_TEST_SEED", random.randrange(2**31)))
        print(f"seed={value} (replay with SEGBENCH_TEST_SEED={value})")
        torch.manual_seed(value)
        return value

    @pytest.fixture(autouse=True)
    def poisoned(self):
        """The kernel outputs allocated during the test, in order, each filled with poison."""
        with poisoned_outputs(self.poison) as allocated:
            yield allocated

    # ------------------------------------------------------------------ checks

    def run_with_grads(self, fn: Callable, inputs: Inputs, grads: list | None = None):
        """fn's outputs and the gradients of the differentiable inputs (fresh leaves) for the
        upstream gradients `grads` (drawn when None); returns (outputs, grads, input grads)."""
        leaves = {n: inputs[n].detach().requires_grad_() for n in self.differentiable
                  if inputs.get(n) is not None}
        outputs = _as_tuple(fn(**(inputs | leaves)))
        if grads is None:
            grads = self.grad_outputs(outputs)
        pairs = [(o, g) for o, g in zip(outputs, grads, strict=True) if g is not None]
        input_grads = {}
        if leaves and pairs:
            computed = torch.autograd.grad([o for o, _ in pairs],
                                           list(leaves.values()),
                                           [g.to(o.dtype) for o, g in pairs])
            input_grads = dict(zip(leaves, computed, strict=True))
        return outputs, grads, input_grads

    def input_dtype(self, inputs: Inputs) -> torch.dtype:
        return inputs[self.differentiable[0]].dtype

    def assert_matches_reference(self, inputs: Inputs, equal_nan: bool | None = None) -> tuple:
        """Compares outputs and input gradients with the reference's; returns the outputs."""
        equal_nan = self.equal_nan if equal_nan is None else equal_nan
        outputs, grads, input_grads = self.run_with_grads(self.kernel, inputs)
        expected, _, expected_grads = self.run_with_grads(
            self.reference, self.reference_inputs(inputs),
            [None if g is None else g.detach().clone() for g in grads])
        dtype = self.input_dtype(inputs)
        assert len(outputs) == len(expected)
        for i, (out, ref) in enumerate(zip(outputs, expected, strict=True)):
            assert out.shape == ref.shape, f"output {i}: shape {out.shape} != {ref.shape}"
            assert out.dtype == (dtype if ref.is_floating_point() else ref.dtype), f"output {i}"
            tolerance = self.output_tolerance[dtype] if ref.is_floating_point() else EXACT
            torch.testing.assert_close(out.to(ref.dtype), ref, equal_nan=equal_nan,
                                       msg=lambda m, i=i: f"output {i}: {m}", **tolerance)
        assert input_grads.keys() == expected_grads.keys()
        for name, grad in input_grads.items():
            assert grad.dtype == inputs[name].dtype, f"grad {name}: dtype {grad.dtype}"
            expected_grad = expected_grads[name]
            torch.testing.assert_close(grad.to(expected_grad.dtype), expected_grad,
                                       equal_nan=equal_nan,
                                       msg=lambda m, name=name: f"grad {name}: {m}",
                                       **self.grad_tolerance[dtype])
        return outputs

    # ------------------------------------------------------------------ the tests

    def test_matches_reference(self, case):
        self.assert_matches_reference(self.make_inputs(**self.cases[case]))

    def test_empty_batch(self):
        self.assert_matches_reference(self.make_inputs(**self.empty_case))

    def test_rejects(self, what):
        replacements, words = self.rejected[what]
        valid = self.make_inputs(**self.small_case)
        with pytest.raises(ValueError, match=words):
            self.kernel(**(valid | replacements(valid)))

    def test_passes_opcheck(self):
        for op, args in self.opcheck_cases():
            torch.library.opcheck(op, args)

    def test_flop_counters(self):
        inputs = self.make_inputs(**self.small_case)
        with FlopCounterMode(display=False) as counter:
            self.run_with_grads(self.kernel, inputs)
        counts = {str(op): n for op, n in counter.get_flop_counts()["Global"].items()}
        assert counts == self.expected_flops(inputs)

        from fvcore.nn import FlopCountAnalysis

        detached = {n: v.detach() if isinstance(v, torch.Tensor) else v
                    for n, v in inputs.items()}
        module = _Forward(self.kernel, detached)
        tensors = tuple(detached[n] for n in module.tensor_names)
        analysis = FlopCountAnalysis(module, tensors).set_op_handle(**FVCORE_HANDLES)
        analysis.unsupported_ops_warnings(False)
        assert analysis.total() == self.expected_fvcore_flops(inputs)
        assert not analysis.unsupported_ops()
