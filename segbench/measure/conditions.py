"""The machine's state around a timing, and the measuring threads pinned to fixed cores.

`snapshot(device)` reads what can change a figure between two runs of the same command: load
average, the clock and governor of the cores we run on and, on a GPU (NVML), clocks,
temperature, performance and power state, clock slowdown reasons and other processes on the
device. Whatever the platform does not expose is left out, never guessed.

`thread_times_ns()` sums, over this process's threads, the time they ran and the time they
were ready but waited for a CPU (Linux schedstat). That wait is the direct sign that other
processes competed with the measurement: a timing during which our threads waited long is not
a figure of the model.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch

from segbench.measure.device import gpu_state

CPU_SYSFS = Path("/sys/devices/system/cpu")


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except OSError:
        return None


def allowed_cores() -> list[int]:
    try:
        return sorted(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return []


def _cpuinfo_mhz() -> dict[int, float]:
    """processor -> current MHz from /proc/cpuinfo (x86 Linux without cpufreq in sysfs)."""
    speeds, processor = {}, None
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                name, _, value = line.partition(":")
                if name.strip() == "processor":
                    processor = int(value)
                elif name.strip() == "cpu MHz" and processor is not None:
                    speeds[processor] = float(value)
    except (OSError, ValueError):
        return {}
    return speeds


def cpu_state(cores: list[int]) -> dict:
    """Load average, and the mean current clock and the governor(s) of `cores`."""
    state: dict = {}
    try:
        state["load_1m"], state["load_5m"], _ = (round(v, 2) for v in os.getloadavg())
    except OSError:
        pass
    sysfs = [_read(CPU_SYSFS / f"cpu{c}/cpufreq/scaling_cur_freq") for c in cores]
    if cores and all(sysfs):
        mhz = [int(khz) / 1000 for khz in sysfs]
    else:
        fallback = _cpuinfo_mhz()
        mhz = [fallback[c] for c in cores if c in fallback]
    if mhz:
        state["cpu_mhz"] = round(sum(mhz) / len(mhz), 1)
    governors = {_read(CPU_SYSFS / f"cpu{c}/cpufreq/scaling_governor") for c in cores} - {None}
    if governors:
        state["cpu_governor"] = ",".join(sorted(governors))
    return state


def snapshot(device: torch.device, cores: list[int]) -> dict:
    """What the machine looks like now: cpu_state, plus gpu_state on a GPU."""
    state = cpu_state(cores)
    if device.type == "cuda":
        state.update(gpu_state(device))
    return state


def _tasks() -> list[str]:
    try:
        return os.listdir("/proc/self/task")
    except OSError:
        return []


def thread_times_ns() -> tuple[int, int] | None:
    """(ran, waited for a CPU) in ns, summed over this process's live threads; None where
    the kernel does not expose schedstat. Threads that exit between two readings take their
    time with them, so measure spans in which the thread pool is stable."""
    ran = waited = 0
    for task in _tasks():
        text = _read(Path(f"/proc/self/task/{task}/schedstat"))
        if text is None:
            continue
        fields = text.split()
        ran, waited = ran + int(fields[0]), waited + int(fields[1])
    return (ran, waited) if ran or waited else None


def thread_time_between(before: tuple[int, int] | None,
                        after: tuple[int, int] | None) -> tuple[int, int] | None:
    """(ran, waited) in ns between two thread_times_ns() readings; None when unknown, or
    when a thread ended between them and took its time along."""
    if before is None or after is None:
        return None
    ran, waited = after[0] - before[0], after[1] - before[1]
    return (ran, waited) if ran >= 0 and waited >= 0 and ran + waited > 0 else None


def _set_affinity(task: int, cores: set[int]) -> None:
    try:
        os.sched_setaffinity(task, cores)
    except (ProcessLookupError, PermissionError):  # the thread ended meanwhile
        pass


@contextmanager
def pinned_cores(threads: int) -> Iterator[list[int]]:
    """Pin every thread of this process (and threads started meanwhile, which inherit it) to
    the first `threads` cores it may use; yield those cores, and restore each thread's own
    affinity afterwards. Yields [] where affinity cannot be set (not Linux)."""
    allowed = allowed_cores()
    if not allowed or not hasattr(os, "sched_setaffinity"):
        yield []
        return
    cores = allowed[:threads]
    saved = {}
    for task in map(int, _tasks()):
        try:
            saved[task] = os.sched_getaffinity(task)
        except (ProcessLookupError, PermissionError):
            continue
        _set_affinity(task, set(cores))
    try:
        yield cores
    finally:
        for task in map(int, _tasks()):
            _set_affinity(task, saved.get(task, set(allowed)))
