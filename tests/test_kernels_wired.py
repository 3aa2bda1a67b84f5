"""`--kernels both` end to end: one training, a torch row and a triton row on the same
weights, predictions compared. On a CPU the Triton kernels run in the interpreter
(TRITON_INTERPRET=1, set by conftest), which the CLI does not offer but the runner can use."""

from dataclasses import replace

import pytest

from segbench import runner
from segbench.config import PROFILES, RunConfig
from segbench.layers import uses_kernels
from segbench.models import create_model, list_models, model_spec

TINY = replace(PROFILES["smoke"], image_size=32, batch_size=4, latency_warmup=0,
               latency_repeats=1, throughput_batches=(1,), throughput_repeats=1)


# every architecture whose small variant has a layer with a Triton path
WIRED = [model_spec(name).arch for name in list_models()
         if model_spec(name).cpu and uses_kernels(create_model(name, 2))]


def test_some_architectures_have_triton_layers():
    assert WIRED


@pytest.mark.slow  # trains and measures each model with the kernels in the interpreter: minutes
@pytest.mark.parametrize("arch", WIRED)
def test_both_backends_agree_on_the_same_weights(arch, tmp_path, monkeypatch):
    # a few test slices keep the interpreter fast; the rest of the pipeline is unchanged
    real_load = runner.load_dataset

    def small_test_split(*args, **kwargs):
        data = real_load(*args, **kwargs)
        test = data.splits["test"]
        data.splits["test"] = type(test)(test.images[:2], test.masks[:2])
        return data

    monkeypatch.setattr(runner, "load_dataset", small_test_split)
    cfg = RunConfig(archs=(arch,), dataset="phantom", profile=TINY, device="cpu",
                    kernels="both", out_dir=tmp_path)
    torch_row, triton_row = list(runner.run(cfg))
    assert (torch_row.kernels, triton_row.kernels) == ("torch", "triton")
    assert torch_row.status == triton_row.status == "ok", triton_row.reason
    assert triton_row.agrees_with_torch >= 0.999
    assert triton_row.train_time_s == torch_row.train_time_s  # trained once
