"""Facts about the device a run measures on: NVML on NVIDIA GPUs, the CPU otherwise."""

from __future__ import annotations

import platform
from contextlib import contextmanager

import torch


def _nvml():
    try:
        import pynvml
    except ImportError:
        return None
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError:
        return None
    return pynvml


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def device_facts(device: torch.device) -> dict:
    if device.type != "cuda":
        return {"device_name": cpu_name(), "driver": None, "device_memory_mb": None,
                "cuda": None}
    index = device.index or 0
    facts = {"device_name": torch.cuda.get_device_name(index), "cuda": torch.version.cuda,
             "device_memory_mb": torch.cuda.get_device_properties(index).total_memory / 2**20,
             "driver": None}
    nvml = _nvml()
    if nvml is not None:
        handle = nvml.nvmlDeviceGetHandleByIndex(index)
        facts["driver"] = nvml.nvmlSystemGetDriverVersion()
        facts["device_name"] = nvml.nvmlDeviceGetName(handle)
    return facts


class EnergyMeter:
    """Joules used by the GPU while the `measuring()` block runs, from NVML's energy counter
    (Volta and newer); `joules` stays None where the counter is not exposed or on CPU."""

    def __init__(self, device: torch.device):
        self.joules: float | None = None
        self._handle = None
        nvml = _nvml() if device.type == "cuda" else None
        if nvml is not None:
            handle = nvml.nvmlDeviceGetHandleByIndex(device.index or 0)
            try:
                nvml.nvmlDeviceGetTotalEnergyConsumption(handle)
                self._nvml, self._handle = nvml, handle
            except nvml.NVMLError:
                pass

    @contextmanager
    def measuring(self):
        if self._handle is None:
            yield self
            return
        start = self._nvml.nvmlDeviceGetTotalEnergyConsumption(self._handle)
        yield self
        torch.cuda.synchronize()
        self.joules = (self._nvml.nvmlDeviceGetTotalEnergyConsumption(self._handle) - start) / 1e3
