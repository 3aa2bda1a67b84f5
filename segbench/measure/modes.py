"""Deployment modes: the trained model as a row deploys it for inference.

- channels-last: the weights and every input in torch.channels_last memory format;
- torch.compile (`default`, `max-autotune`; inductor), with static shapes: each input shape
  gets its own graph, as a deployment at a fixed batch size would;
- CUDA graphs: the forward of each input shape captured once (after warm-up on a side stream)
  and replayed; the replay writes into the captured output tensor, which the callers here
  consume before the next call;
- the autocast dtype is applied by `inference_fn` around the call (segbench.measure.context).
The first call at each input shape compiles and/or captures; its wall time is kept apart
(`compile_s`, their sum) and never counted in a timing, since every timing warms up first.

Training measurements run steps on a copy of the row's eager model: channels-last applies, and
autocast does as training uses it (bf16 whenever the row autocasts); torch.compile and CUDA
graphs are inference modes only.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
from torch import nn

from segbench.config import Mode
from segbench.measure.context import MeasureContext, MeasureInputs
from segbench.train import make_optimizer, make_train_step

GRAPH_WARMUP_CALLS = 3  # on a side stream before a capture, as torch's CUDA-graph notes advise
RECOMPILE_LIMIT = 64  # static shapes: one graph per batch size a row runs (sweep included)


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class Deployed(nn.Module):
    """The row's model for inference: `eager` (a copy, channels-last where the mode says so)
    behind torch.compile and/or CUDA graphs."""

    def __init__(self, eager: nn.Module, mode: Mode):
        super().__init__()
        self.eager = eager
        self.mode = mode
        self.compiled = eager if mode.compile == "none" else torch.compile(
            eager, mode=mode.compile, dynamic=False)
        self.first_call_s: dict[tuple, float] = {}  # input shape -> seconds of its first call
        self._graphs: dict[tuple, tuple[torch.cuda.CUDAGraph, torch.Tensor, torch.Tensor]] = {}

    @property
    def compile_s(self) -> float:
        return sum(self.first_call_s.values())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.mode.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        shape = tuple(x.shape)
        if shape not in self.first_call_s:
            return self._first_call(x, shape)
        return self._replay(x, shape) if self.mode.cuda_graphs else self.compiled(x)

    def _first_call(self, x: torch.Tensor, shape: tuple) -> torch.Tensor:
        _synchronize(x.device)
        start = time.perf_counter()
        out = self._capture(x, shape) if self.mode.cuda_graphs else self.compiled(x)
        _synchronize(x.device)
        self.first_call_s[shape] = time.perf_counter() - start
        return out

    def _capture(self, x: torch.Tensor, shape: tuple) -> torch.Tensor:
        static_input = x.clone()
        side = torch.cuda.Stream(x.device)
        side.wait_stream(torch.cuda.current_stream(x.device))
        with torch.cuda.stream(side):
            for _ in range(GRAPH_WARMUP_CALLS):
                self.compiled(static_input)
        torch.cuda.current_stream(x.device).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            static_output = self.compiled(static_input)
        self._graphs[shape] = (graph, static_input, static_output)
        return self._replay(x, shape)

    def _replay(self, x: torch.Tensor, shape: tuple) -> torch.Tensor:
        graph, static_input, static_output = self._graphs[shape]
        static_input.copy_(x)
        graph.replay()
        return static_output


def _dynamo_settings() -> dict:
    """Static shapes recompile per batch size: allow one graph per shape a row runs, and fail
    loudly past the limit rather than fall back to eager while the row says compiled."""
    config = torch._dynamo.config
    limit = "recompile_limit" if hasattr(config, "recompile_limit") else "cache_size_limit"
    settings = {limit: RECOMPILE_LIMIT}
    if hasattr(config, "fail_on_recompile_limit_hit"):
        settings["fail_on_recompile_limit_hit"] = True
    return settings


@contextmanager
def deployed(model: nn.Module, ctx: MeasureContext) -> Iterator[nn.Module]:
    """The model as the row's mode deploys it: the model itself in plain eager mode, else a
    `Deployed` copy; torch.compile's caches are dropped before and after."""
    mode = ctx.mode
    if mode.compile == "none" and not mode.channels_last and not mode.cuda_graphs:
        yield model
        return
    eager = copy.deepcopy(model)
    if mode.channels_last:
        eager = eager.to(memory_format=torch.channels_last)
    if mode.compile == "none":
        yield Deployed(eager, mode)
        return
    torch._dynamo.reset()
    try:
        with torch._dynamo.config.patch(**_dynamo_settings()):
            yield Deployed(eager, mode)
    finally:
        torch._dynamo.reset()


def train_step_fn(model: nn.Module, inputs: MeasureInputs,
                  ctx: MeasureContext) -> Callable[[], float]:
    """`fn()` runs one full training step (forward, loss, backward, update with the
    unit's recipe's optimizer) on the profile's training batch, on a copy of the row's eager
    model."""
    scratch = copy.deepcopy(model.eager if isinstance(model, Deployed) else model)
    step = make_train_step(scratch, make_optimizer(scratch, ctx.profile, inputs.recipe),
                           ctx.device, ctx.autocast_dtype)
    images = inputs.train_images.to(ctx.device)
    masks = inputs.train_masks.to(ctx.device)
    if ctx.mode.channels_last:
        images = images.contiguous(memory_format=torch.channels_last)
    return lambda: step(images, masks)
