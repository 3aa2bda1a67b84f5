"""Columns that describe the machine, not the model: they differ between any two runs of one
command, so tests that compare runs leave them out."""

MACHINE_COLUMNS = {"latency_ms", "latency_p95_ms", "throughput_img_s", "energy_j_per_img",
                   "peak_mem_mb", "train_peak_mem_mb", "train_time_s", "run_start", "seconds",
                   "latency_spread_pct", "throughput_spread_pct", "train_img_s",
                   "train_step_ms", "train_step_spread_pct", "timing_unstable",
                   "timing_reason", "cpu_wait_pct"}
MACHINE_STATE = ("_before", "_after")  # load, clocks and governor around each timing


PLACEMENT_COLUMNS = {"measured_on", "trained_on", "device_name", "ray_node"}  # where a row was made


def is_machine_column(column: str) -> bool:
    return column in MACHINE_COLUMNS or column.endswith(MACHINE_STATE)
