"""Records and the run folder's writer: the journal is the truth, derived files follow it,
a partial last line is dropped, writes are atomic, one writer holds the lock."""

import errno
import json
import math
import os
from pathlib import Path

import pytest

from segbench import results, store
from segbench.plots import pareto_front

STUDY = {"dataset": "phantom", "device": "cpu", "profile": {"name": "smoke", "epochs": 1}}
SHARED = {"study": STUDY, "dataset": {"name": "phantom"},
          "method": {"timer": "t", "memory": "m", "accuracy": "a", "boundary": "b"}}
START = {"config": {"seeds": [0], "kernels": "auto", "threads": 2, "modes": ["eager-fp32"]},
         "environment": {"started_utc": "2026-12-01T00:00:00+00:00", "torch": "2.13",
                         "triton": "3.9", "git_commit": "abc", "device_name": "test cpu"}}
SHARED["study"]["profile"].update(description="d", image_size=32, latency_warmup=1,
                                  latency_repeats=3, throughput_batches=[2],
                                  throughput_repeats=2, batch_size=8)


def record(variant="unet-small", kernels="torch", mdice=0.8, seed=0, **kw):
    return results.Record(arch="unet", variant=variant, kernels=kernels, dataset="phantom",
                          image_size=32, device="cpu", profile="smoke", seed=seed, mdice=mdice,
                          latency_ms=1.5, extra={"hd95_px": 2.0}, **kw)


def finished(**kw):
    kw.setdefault("mdice", 0.8)
    return record(params_m=1.0, gflops=0.1, miou=0.7, pixel_accuracy=0.9, latency_p95_ms=2.0,
                  throughput_img_s=10.0, train_time_s=3.0, **kw)


@pytest.fixture
def folder(tmp_path):
    with store.open_run_folder(tmp_path / "run", STUDY) as run_folder:
        run_folder.begin(SHARED, START)
        yield run_folder


def test_update_sets_fields_and_keeps_the_rest_in_extra():
    row = record()
    row.update({"miou": 0.5, "per_case": "x"})
    assert row.miou == 0.5 and row.extra["per_case"] == "x"
    assert "extra" not in row.to_row() and row.to_row()["per_case"] == "x"


def test_every_key_field_is_a_column_and_in_the_key():
    row = record()
    assert set(results.KEY_FIELDS) <= set(row.to_row())
    assert record(seed=1).key != row.key and record(threads=1).key != row.key


def test_latest_entry_wins_and_keeps_the_others(folder):
    folder.append(record())
    folder.append(record(variant="fcn-small"))
    folder.append(record(mdice=0.9))
    assert [r["variant"] for r in folder.rows()] == ["fcn-small", "unet-small"]
    assert folder.rows()[-1]["mdice"] == 0.9
    csv_rows = results.read_rows(folder.path)
    assert [r["variant"] for r in csv_rows] == ["fcn-small", "unet-small"]
    assert csv_rows[0]["hd95_px"] == "2.0" and csv_rows[1]["run_start"] == "1"


def test_nan_is_null_in_the_journal_and_empty_in_the_csv(folder):
    folder.append(record(mdice=math.nan))
    line = (folder.path / store.JOURNAL).read_text()
    assert json.loads(line)["row"]["mdice"] is None
    assert results.read_rows(folder.path)[0]["mdice"] == ""


def test_tables_become_one_csv_led_by_the_row_key(folder):
    row = record()
    row.tables["history"] = [{"epoch": 1, "train_loss": 1.5}, {"epoch": 2, "train_loss": 1.2}]
    folder.append(row)
    lines = (folder.path / "history.csv").read_text().splitlines()
    assert lines[0].startswith(",".join(results.KEY_FIELDS)) and lines[0].endswith("train_loss")
    assert len(lines) == 3 and lines[2].endswith(",2,1.2")


def test_failure_keeps_identity_and_truncates_the_reason():
    failed = record()
    failed.failed("oom", "CUDA out of memory " * 40)
    assert failed.key == record().key and failed.status == "oom" and len(failed.reason) == 300


def test_finished_means_ok_with_every_required_column_or_a_terminal_failure():
    half_row = {**finished().to_row(), "mdice": ""}
    assert results.is_finished(finished().to_row())
    assert not results.is_finished(half_row)
    assert results.is_finished({**half_row, "status": "diverged"})
    assert not results.is_finished({**half_row, "status": "error"})


def test_no_temporary_files_left_behind(folder):
    folder.append(record())
    assert sorted(p.name for p in folder.path.iterdir()) == [
        ".segbench.lock", "results.csv", "results.json", "results.md", "rows.jsonl", "run.json",
        "summary.csv", "summary.md"]


def test_partial_last_line_is_dropped_and_runs_again(tmp_path):
    with store.open_run_folder(tmp_path, STUDY) as run_folder:
        run_folder.begin(SHARED, START)
        run_folder.append(finished())
    journal = tmp_path / store.JOURNAL
    intact = journal.read_bytes()
    journal.write_bytes(intact + b'{"row": {"arch": "fcn", "status": "o')
    with store.open_run_folder(tmp_path, STUDY) as run_folder:
        assert len(run_folder.rows()) == 1 and run_folder.finished_keys() == {finished().key}
        assert "dropped a partial last row" in run_folder.notes[0]
    assert journal.read_bytes() == intact


def test_damaged_line_before_the_last_is_an_error(tmp_path):
    with store.open_run_folder(tmp_path, STUDY) as run_folder:
        run_folder.begin(SHARED, START)
        run_folder.append(finished())
    journal = tmp_path / store.JOURNAL
    journal.write_bytes(b"garbage\n" + journal.read_bytes())
    with pytest.raises(store.RunFolderError, match="line 1 is damaged"):
        store.check_folder(tmp_path, STUDY)


def test_derived_files_are_regenerated_on_start(tmp_path):
    with store.open_run_folder(tmp_path, STUDY) as run_folder:
        run_folder.begin(SHARED, START)
        run_folder.append(finished())
    (tmp_path / "results.json").write_text("")
    (tmp_path / "results.md").unlink()
    with store.open_run_folder(tmp_path, STUDY):
        pass
    assert json.loads((tmp_path / "results.json").read_text())["rows"][0]["variant"] == "unet-small"
    assert "unet-small" in (tmp_path / "results.md").read_text()


def test_each_start_is_kept_in_run_json(tmp_path):
    for threads in (2, 1):
        start = {**START, "config": {**START["config"], "threads": threads}}
        with store.open_run_folder(tmp_path, STUDY) as run_folder:
            run_folder.begin(SHARED, start)
            run_folder.append(finished(threads=threads))
    manifest = json.loads((tmp_path / "run.json").read_text())
    assert [s["config"]["threads"] for s in manifest["starts"]] == [2, 1]
    assert [(r["threads"], r["run_start"]) for r in results.read_rows(tmp_path)] == \
        [("2", "1"), ("1", "2")]
    text = (tmp_path / "results.md").read_text()
    assert "run start 1" in text and "run start 2" in text and "| threads |" in text


def test_second_writer_is_refused_naming_the_holder(tmp_path):
    with store.open_run_folder(tmp_path, STUDY):
        with pytest.raises(store.RunFolderError, match=f"in use by another segbench run "
                           f"\\(pid {os.getpid()} on "):
            with store.open_run_folder(tmp_path, STUDY):
                pass
    with store.open_run_folder(tmp_path, STUDY):  # released at the end of the block
        pass


def test_other_study_is_refused(tmp_path):
    with store.open_run_folder(tmp_path, STUDY) as run_folder:
        run_folder.begin(SHARED, START)
    other = {**STUDY, "profile": {**STUDY["profile"], "epochs": 2}}
    with pytest.raises(store.RunFolderError, match=r"different profile \(epochs 1 there, 2 here"):
        store.check_folder(tmp_path, other)


def test_failed_atomic_write_leaves_the_old_file_and_no_temporary(tmp_path, monkeypatch):
    target = tmp_path / "results.csv"
    target.write_text("old")

    def full(fd, data):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(store.os, "write", full)
    with pytest.raises(OSError):
        store.atomic_write(target, "new")
    assert target.read_text() == "old" and sorted(tmp_path.iterdir()) == [target]


def test_committed_format_1_results_still_describe_themselves():
    root = Path(__file__).resolve().parents[1] / "results"
    for run_json in root.glob("*/run.json"):
        lines = results.method_lines(results.read_manifest(run_json.parent))
        assert any(line.startswith("- run start 1 (") for line in lines), run_json


def test_markdown_table_formats_cells():
    table = results.markdown_table([{"arch": "unet", "mdice": "0.81234", "params_m": ""}],
                                   [("arch", "arch"), ("mdice", "mDice"), ("params_m", "params")])
    assert table.splitlines()[2] == "| unet | 0.812 | – |"


def test_pareto_front():
    points = [(1.0, 0.5), (2.0, 0.7), (3.0, 0.6), (0.5, 0.4), (2.0, 0.65)]
    assert sorted(pareto_front(points)) == [0, 1, 3]
