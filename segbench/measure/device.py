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


# clock slowdowns that make a figure unrepresentative of the GPU (a power cap is the GPU
# working as specified under load, and is recorded but not held against the figure)
SLOWDOWN_REASONS = {"HwSlowdown": "hardware slowdown", "HwThermalSlowdown": "thermal (hardware)",
                    "SwThermalSlowdown": "thermal (driver)",
                    "HwPowerBrakeSlowdown": "power brake"}


def _nvml_value(call, *args):
    """One NVML query; None where this GPU or driver does not answer it."""
    try:
        return call(*args)
    except Exception:  # noqa: BLE001  (NVMLError and its many not-supported subclasses)
        return None


def _slowdowns(nvml, handle) -> list[str]:
    query = getattr(nvml, "nvmlDeviceGetCurrentClocksEventReasons", None) or \
        nvml.nvmlDeviceGetCurrentClocksThrottleReasons
    mask = _nvml_value(query, handle)
    if mask is None:
        return []
    return [text for name, text in SLOWDOWN_REASONS.items()
            if mask & getattr(nvml, f"nvmlClocksThrottleReason{name}", 0)]


def _other_processes(nvml, handle) -> int | None:
    """Compute processes on the GPU besides this one, which is on it once it has measured.
    Counted, not matched by pid: in a container NVML reports the host's pids."""
    processes = _nvml_value(nvml.nvmlDeviceGetComputeRunningProcesses, handle)
    return None if processes is None else max(len(processes) - 1, 0)


def gpu_state(device: torch.device) -> dict:
    """Clocks, temperature, performance state, power, slowdown reasons and other processes of
    the GPU now (NVML); {} without NVML."""
    nvml = _nvml()
    if nvml is None:
        return {}
    handle = nvml.nvmlDeviceGetHandleByIndex(device.index or 0)
    power_mw = _nvml_value(nvml.nvmlDeviceGetPowerUsage, handle)
    limit_mw = _nvml_value(nvml.nvmlDeviceGetEnforcedPowerLimit, handle)
    state = {
        "gpu_sm_mhz": _nvml_value(nvml.nvmlDeviceGetClockInfo, handle, nvml.NVML_CLOCK_SM),
        "gpu_mem_mhz": _nvml_value(nvml.nvmlDeviceGetClockInfo, handle, nvml.NVML_CLOCK_MEM),
        "gpu_temp_c": _nvml_value(nvml.nvmlDeviceGetTemperature, handle,
                                  nvml.NVML_TEMPERATURE_GPU),
        "gpu_pstate": _nvml_value(nvml.nvmlDeviceGetPerformanceState, handle),
        "gpu_power_w": power_mw and power_mw / 1e3,
        "gpu_power_limit_w": limit_mw and limit_mw / 1e3,
        "gpu_other_processes": _other_processes(nvml, handle),
        "gpu_slowdown": ",".join(_slowdowns(nvml, handle)),
    }
    return {key: value for key, value in state.items() if value is not None}


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
