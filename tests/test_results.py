"""Results writer: CSV round trip, upsert by key, markdown with its method, atomic writes."""

import math

from segbench import results
from segbench.report import pareto_front


def record(variant="unet-small", kernels="torch", mdice=0.8):
    return results.Record(arch="unet", variant=variant, kernels=kernels, dataset="phantom",
                          image_size=32, device="cpu", profile="smoke", mdice=mdice,
                          latency_ms=1.5, extra={"hd95_px": 2.0})


def test_upsert_replaces_same_key_and_keeps_others(tmp_path):
    results.upsert(tmp_path, record())
    results.upsert(tmp_path, record(variant="fcn-small"))
    rows = results.upsert(tmp_path, record(mdice=0.9))
    assert [r["variant"] for r in results.read_rows(tmp_path)] == ["fcn-small", "unet-small"]
    assert float(rows[-1]["mdice"]) == 0.9
    assert results.read_rows(tmp_path)[0]["hd95_px"] == "2.0"


def test_nan_is_written_as_empty_cell(tmp_path):
    results.upsert(tmp_path, record(mdice=math.nan))
    assert results.read_rows(tmp_path)[0]["mdice"] == ""


def test_failure_row_keeps_identity_and_reason(tmp_path):
    failed = results.record_from_failure(record(), "oom", "CUDA out of memory " * 40)
    assert failed.key == record().key and failed.status == "oom" and len(failed.reason) == 300


def test_no_temporary_files_left_behind(tmp_path):
    results.upsert(tmp_path, record())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["results.csv"]


def test_markdown_table_formats_cells():
    table = results.markdown_table([{"arch": "unet", "mdice": "0.81234", "params_m": ""}],
                                   [("arch", "arch"), ("mdice", "mDice"), ("params_m", "params")])
    assert table.splitlines()[2] == "| unet | 0.812 | – |"


def test_pareto_front():
    points = [(1.0, 0.5), (2.0, 0.7), (3.0, 0.6), (0.5, 0.4), (2.0, 0.65)]
    assert sorted(pareto_front(points)) == [0, 1, 3]
