"""Timing that notices noise: rounds, re-measured rounds, CPU contention, contradictions, the
machine's state, pinned cores; and a timing under an artificial CPU load."""

import math
import os
import subprocess
import sys
import threading
import time
from dataclasses import replace
from types import SimpleNamespace

import pytest
import torch

from segbench.config import PROFILES, Mode
from segbench.data.base import Split
from segbench.measure import conditions, device, timing
from segbench.measure.context import MeasureContext, MeasureInputs
from segbench.measure.latency import latency
from segbench.measure.timing import Round, TimingPolicy, contradictions, row_verdict, timed_rounds

CPU = torch.device("cpu")
LINUX_SCHEDSTAT = conditions.thread_times_ns() is not None and hasattr(os, "sched_setaffinity")


def scripted_rounds(monkeypatch, medians, thread_ns=(1_000_000, 0)):
    """measure_round returns rounds whose calls all take the next of `medians` ms."""
    queue = list(medians)

    def fake(fn, device, calls, before_each=None):
        return Round([queue.pop(0)] * calls, thread_ns)

    monkeypatch.setattr(timing, "measure_round", fake)
    return queue


def test_agreeing_rounds_are_stable_and_report_median_and_spread(monkeypatch):
    scripted_rounds(monkeypatch, [10.0, 10.2, 9.9, 10.1, 10.0])
    result = timed_rounds(lambda: None, CPU, warmup=0, calls=3)
    assert result.median_ms == 10.0 and result.remeasured == 0
    assert result.spread == pytest.approx(0.03)
    assert result.problems() == []
    line = result.line("latency", 1)
    assert line["round_medians_ms"] == "10 10.2 9.9 10.1 10" and not line["unstable"]
    assert line["calls_per_round"] == 3 and line["cpu_wait_pct"] == 0.0


def test_a_round_off_the_others_is_measured_again(monkeypatch):
    left = scripted_rounds(monkeypatch, [10.0, 10.0, 31.0, 10.1, 9.9, 10.05, 99.0])
    result = timed_rounds(lambda: None, CPU, warmup=0, calls=2)
    assert result.remeasured == 1 and left == [99.0]
    assert [r.median_ms for r in result.rounds] == [10.0, 10.0, 10.05, 10.1, 9.9]
    assert result.problems() == []
    assert result.calls_made == 12  # the energy counter saw the re-measured round too


def test_rounds_still_off_after_the_limit_flag_the_timing(monkeypatch):
    policy = TimingPolicy(max_remeasured=3)
    scripted_rounds(monkeypatch, [10.0, 10.0, 30.0, 10.0, 10.0] + [30.0] * 3)
    result = timed_rounds(lambda: None, CPU, warmup=0, calls=2, policy=policy)
    assert result.remeasured == 3
    (problem,) = result.problems()
    assert "round medians 10 10 30 10 10 ms spread 200% around 10 ms (tolerance 10%) after 3 " \
        "re-measured round(s)" in problem


def test_steady_contention_flags_the_timing_even_when_rounds_agree(monkeypatch):
    scripted_rounds(monkeypatch, [10.0] * 5, thread_ns=(1_000_000, 1_000_000))
    result = timed_rounds(lambda: None, CPU, warmup=0, calls=2)
    assert result.remeasured == 0
    (problem,) = result.problems()
    assert problem.startswith("threads waited for a CPU 50% of their time (cores ")


def test_unknown_thread_times_are_no_verdict(monkeypatch):
    scripted_rounds(monkeypatch, [10.0] * 5, thread_ns=None)
    result = timed_rounds(lambda: None, CPU, warmup=0, calls=2)
    assert result.problems() == [] and math.isnan(result.line("latency", 1)["cpu_wait_pct"])


def test_real_calls_are_timed_after_warmup():
    calls, flushes = [], []
    result = timed_rounds(lambda: calls.append(time.sleep(0.001)), CPU, warmup=2, calls=3,
                          before_each=lambda: flushes.append(1))
    assert len(calls) == 2 + 3 * (5 + result.remeasured) == 2 + len(flushes)
    assert 1.0 <= result.median_ms < 1000
    assert "load_1m" in result.before and "load_1m" in result.after


def test_the_issues_self_contradicting_row_is_caught():
    # SegFormer-B0: 2273 ms at batch 1, but 26 img/s (38 ms per image) at batch 16
    (found,) = contradictions({"latency_ms": 2273.0, "throughput_img_s": 26.0,
                               "throughput_batch": 16})
    assert "the batch-1 latency 2.27e+03 ms is over 2x the 615 ms of a whole batch of 16" in found
    slow_batches = contradictions({"latency_ms": 10.0, "throughput_img_s": 40.0,
                                   "throughput_batch": 4})
    assert slow_batches == ["25 ms per image at batch 4 is over 2x the batch-1 latency 10 ms"]
    assert contradictions({"latency_ms": 7.1, "throughput_img_s": 400.0,
                           "throughput_batch": 16}) == []


def test_energy_beyond_the_power_limit_is_a_contradiction():
    columns = {"latency_ms": 2.0, "throughput_img_s": 1000.0, "throughput_batch": 8,
               "energy_j_per_img": 1.0, "gpu_power_limit_w_after": 700.0}
    assert contradictions(columns) == ["1 J per image at 1e+03 img/s is 1000 W, over the "
                                       "GPU's power limit of 700 W"]
    assert contradictions({**columns, "energy_j_per_img": 0.3}) == []


def line(phase, unstable=False, reason="", wait=1.0, **state):
    return {"phase": phase, "unstable": unstable, "reason": reason, "cpu_wait_pct": wait,
            "cores": "0,1", **state}


def test_row_verdict_joins_phases_and_contradictions_and_brackets_the_conditions():
    lines = [line("latency", load_1m_before=0.5, load_1m_after=0.6),
             line("throughput", True, "round medians ...", wait=30.0, load_1m_before=0.7,
                  load_1m_after=2.5),
             line("sweep", True, "ignored: the sweep has its own flags")]
    verdict = row_verdict(lines, {"latency_ms": 2273.0, "throughput_img_s": 26.0,
                                  "throughput_batch": 16})
    assert verdict["timing_unstable"] is True
    assert verdict["timing_reason"].startswith("throughput: round medians ...; contradiction: ")
    assert "sweep" not in verdict["timing_reason"]
    assert (verdict["load_1m_before"], verdict["load_1m_after"]) == (0.5, 2.5)
    assert verdict["cpu_wait_pct"] == 30.0 and verdict["timing_cores"] == "0,1"
    stable = row_verdict([line("latency")], {})
    assert stable["timing_unstable"] is False and stable["timing_reason"] == ""


@pytest.mark.skipif(not LINUX_SCHEDSTAT, reason="needs Linux affinity and schedstat")
def test_pinning_covers_every_thread_and_is_undone():
    before = os.sched_getaffinity(0)
    started, stop = threading.Event(), threading.Event()
    worker = threading.Thread(target=lambda: (started.set(), stop.wait()))
    worker.start()
    started.wait()
    try:
        with conditions.pinned_cores(1) as cores:
            assert len(cores) == 1 and cores[0] in before
            assert os.sched_getaffinity(0) == set(cores)
            assert os.sched_getaffinity(worker.native_id) == set(cores)
            assert conditions.allowed_cores() == cores
        assert os.sched_getaffinity(0) == before
        assert os.sched_getaffinity(worker.native_id) == before
    finally:
        stop.set()
        worker.join()


def test_cpu_state_reads_what_the_machine_exposes():
    state = conditions.cpu_state(conditions.allowed_cores())
    if hasattr(os, "getloadavg"):
        assert state["load_1m"] >= 0
    assert set(state) <= {"load_1m", "load_5m", "cpu_mhz", "cpu_governor"}


class FakeNVML:
    """The few NVML calls gpu_state makes, answering as a warm, busy GPU would."""

    NVML_CLOCK_SM, NVML_CLOCK_MEM, NVML_TEMPERATURE_GPU = 0, 1, 0
    nvmlClocksThrottleReasonHwSlowdown = 0x8
    nvmlClocksThrottleReasonSwThermalSlowdown = 0x20
    nvmlClocksThrottleReasonHwThermalSlowdown = 0x40
    nvmlClocksThrottleReasonHwPowerBrakeSlowdown = 0x80

    def nvmlDeviceGetHandleByIndex(self, index):
        return index

    def nvmlDeviceGetClockInfo(self, handle, clock):
        return 1980 if clock == self.NVML_CLOCK_SM else 2619

    def nvmlDeviceGetTemperature(self, handle, sensor):
        return 71

    def nvmlDeviceGetPerformanceState(self, handle):
        return 0

    def nvmlDeviceGetPowerUsage(self, handle):
        return 412_000

    def nvmlDeviceGetEnforcedPowerLimit(self, handle):
        raise RuntimeError("not supported")  # an unanswered query is left out

    def nvmlDeviceGetComputeRunningProcesses(self, handle):
        return [SimpleNamespace(pid=1), SimpleNamespace(pid=2), SimpleNamespace(pid=3)]

    def nvmlDeviceGetCurrentClocksEventReasons(self, handle):
        return 0x40 | 0x4  # thermal slowdown, and a power cap (recorded, not held against it)


def test_gpu_state_from_nvml_and_its_problems(monkeypatch):
    monkeypatch.setattr(device, "_nvml", lambda: FakeNVML())
    state = device.gpu_state(torch.device("cuda", 0))
    assert state == {"gpu_sm_mhz": 1980, "gpu_mem_mhz": 2619, "gpu_temp_c": 71, "gpu_pstate": 0,
                     "gpu_power_w": 412.0, "gpu_other_processes": 2,
                     "gpu_slowdown": "thermal (hardware)"}
    result = timing.Timing([Round([1.0], None)] * 5, 0, timing.POLICY, [0], state, state)
    assert result.problems() == ["2 other process(es) on the GPU",
                                 "GPU clocks slowed down (thermal (hardware))"]
    monkeypatch.setattr(device, "_nvml", lambda: None)
    assert device.gpu_state(torch.device("cuda", 0)) == {}


def small_model_and_inputs():
    model = torch.nn.Sequential(torch.nn.Conv2d(1, 16, 3, padding=1), torch.nn.ReLU(),
                                torch.nn.Conv2d(16, 16, 3, padding=1), torch.nn.ReLU(),
                                torch.nn.Conv2d(16, 2, 1))
    empty = Split(torch.zeros(0, 1, 64, 64), torch.zeros(0, 64, 64, dtype=torch.long))
    inputs = MeasureInputs((1, 64, 64), empty, empty.images, empty.masks, 2)
    return model, inputs


BUSY = "import os, sys; os.sched_setaffinity(0, set(map(int, sys.argv[1:])))\nwhile True: pass"


@pytest.mark.skipif(not LINUX_SCHEDSTAT, reason="needs Linux affinity and schedstat")
def test_timing_under_artificial_cpu_load_is_flagged_or_stays_within_1_5x_of_quiet():
    model, inputs = small_model_and_inputs()
    profile = PROFILES["smoke"]
    ctx = MeasureContext.build("cpu", Mode(), replace(profile, latency_warmup=3,
                                                      latency_repeats=10), threads=2)
    torch.set_num_threads(2)
    with conditions.pinned_cores(ctx.threads) as cores:
        quiet = latency(model, inputs, ctx)
        busy = [subprocess.Popen([sys.executable, "-c", BUSY, *map(str, cores)])
                for _ in range(2 * len(cores))]
        try:
            time.sleep(0.5)  # the busy processes are spinning
            loaded = latency(model, inputs, ctx)
        finally:
            for process in busy:
                process.kill()
                process.wait()
    row = row_verdict(loaded["timing"], loaded)
    within = loaded["latency_ms"] <= 1.5 * quiet["latency_ms"]
    assert row["timing_unstable"] or within, (quiet["timing"], loaded["timing"])
    if row["timing_unstable"]:
        assert "latency: " in row["timing_reason"]
