"""A run folder and its one writer.

`rows.jsonl` is the single source of truth: one JSON object per measured row, appended and
fsynced; a later entry with the same key replaces an earlier one. `run.json` holds what the
whole folder shares (dataset, device, profile) and one manifest per run start. Everything
else is derived from those two and regenerated on every start and after every row:
results.csv, results.md, results.json, summary.csv and summary.md (segbench.summary) and one
CSV per row table (history.csv, cases.csv, baseline_cases.csv, timing.csv, sweep.csv).
`weights/` holds the trained weights of the folder's trainings (segbench.weights), the input of
`segbench measure`, written once per training before its rows.

Crash consistency: derived files and run.json go to a temporary file that is fsynced and
renamed over the old one (stale temporary files are swept on start); a kill during an append
leaves at most a partial last line, which the next start drops, so that row simply runs again.
One writer: a run holds an exclusive flock on `.segbench.lock` for as long as it runs; a second
run into the same folder is refused with one line naming the holder.
"""

from __future__ import annotations

import fcntl
import json
import math
import numbers
import os
import re
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path

from segbench import results, summary
from segbench.config import UsageError

JOURNAL, MANIFEST, LOCK, WEIGHTS = "rows.jsonl", "run.json", ".segbench.lock", "weights"
TEMPORARY = re.compile(r"^\..+\.tmp\d+$")
PROBE_BYTES = 4096  # the writability probe writes real bytes: an empty file fits a full disk


class RunFolderError(UsageError):
    """The run folder cannot be used: locked, unreadable, full, or holding another study."""


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def atomic_write(path: Path, content: str | bytes) -> None:
    """Replace `path` by `content` all at once: temporary file, fsync, rename."""
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    data = content.encode() if isinstance(content, str) else content
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            _write_all(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def json_safe(value):
    """Plain JSON: NaN and infinities become null, numpy scalars Python numbers."""
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return value
    if isinstance(value, numbers.Integral):
        return int(value)
    if isinstance(value, numbers.Real):
        return float(value) if math.isfinite(value) else None
    return str(value)


def read_journal(folder: Path) -> tuple[list[tuple[dict, dict]], int]:
    """The journal's entries as (row, tables), and the byte length of its intact part: only
    the last line can be cut short (by a kill while appending); a damaged line before it is
    an error."""
    path = folder / JOURNAL
    if not path.is_file():
        return [], 0
    data = path.read_bytes()
    entries, intact = [], 0
    for number, line in enumerate(data.splitlines(keepends=True), 1):
        try:
            entry = json.loads(line) if line.endswith(b"\n") else None
            parsed = (entry["row"], entry.get("tables", {})) if entry is not None else None
        except (ValueError, KeyError, TypeError, AttributeError):
            parsed = None
        if parsed is None:
            if intact + len(line) == len(data):
                break
            raise RunFolderError(f"{path} line {number} is damaged; restore it or choose "
                                 "another --out")
        entries.append(parsed)
        intact += len(line)
    return entries, intact


def latest_entries(entries: list[tuple[dict, dict]]) -> list[tuple[dict, dict]]:
    """One entry per row key, the latest, in the order they were (last) written."""
    latest: dict[tuple, tuple[dict, dict]] = {}
    for row, tables in entries:
        key = results.row_key(row)
        latest.pop(key, None)
        latest[key] = (row, tables)
    return list(latest.values())


def _finished(entries: list[tuple[dict, dict]]) -> set[tuple]:
    return {results.row_key(row) for row, _ in latest_entries(entries)
            if results.is_finished(row)}


def finished_keys(folder: Path) -> set[tuple]:
    """Keys of the rows finished in a folder, read without the lock: a run re-reads them
    under its lock before it trusts them."""
    return _finished(read_journal(folder)[0])


def _read_manifest(folder: Path) -> dict | None:
    path = folder / MANIFEST
    if not path.is_file():
        return None
    try:
        manifest = json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError) as e:
        raise RunFolderError(f"{path} is not valid JSON ({e}); move it away or choose "
                             "another --out") from None
    except OSError as e:
        raise RunFolderError(f"{path} cannot be read ({e.strerror})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != results.FORMAT:
        raise RunFolderError(f"output folder {folder} was written by an older segbench "
                             "(its run.json has another format); choose another --out")
    return manifest


def _plain_json(value):
    return json.loads(json.dumps(value, default=str))


def differences(old: dict, new: dict, there: str = "there", here: str = "here") -> list[str]:
    """What `new` says otherwise than `old`, key by key (one level into dicts), in words."""
    differs = []
    for key, value in new.items():
        if isinstance(value, dict) and isinstance(old.get(key), dict):
            inner = [f"{k} {old[key].get(k)} {there}, {v} {here}" for k, v in value.items()
                     if old[key].get(k) != v]
            if inner:
                differs.append(f"{key} ({'; '.join(inner)})")
        elif old.get(key) != value:
            differs.append(f"{key} ({old.get(key)} {there}, {value} {here})")
    return differs


def _probe_writable(folder: Path) -> None:
    """Write and fsync real bytes in the folder, or in its nearest existing parent."""
    target = next(p for p in (folder, *folder.parents) if p.exists())
    if not target.is_dir():
        raise RunFolderError(f"output folder {folder} lies under {target}, which is a file; "
                             "give a folder path with --out")
    probe = target / f".write-test.tmp{os.getpid()}"
    try:
        fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            _write_all(fd, b"\0" * PROBE_BYTES)
            os.fsync(fd)
        finally:
            os.close(fd)
            probe.unlink(missing_ok=True)
    except OSError as e:
        raise RunFolderError(f"output folder {folder} is not writable ({e.strerror})") from None


def check_folder(folder: Path, study: dict) -> None:
    """Everything about --out that can be checked without creating or changing anything:
    run before any data is prepared."""
    if folder.exists() and not folder.is_dir():
        raise RunFolderError(f"output folder {folder} is a file; give a folder path with --out")
    _probe_writable(folder)
    if not folder.is_dir():
        return
    manifest = _read_manifest(folder)
    if manifest is None:
        if (folder / JOURNAL).exists():
            raise RunFolderError(f"output folder {folder} has {JOURNAL} but no {MANIFEST}; "
                                 "restore it or choose another --out")
        if (folder / "results.csv").exists():
            raise RunFolderError(f"output folder {folder} was written by an older segbench "
                                 "(results.csv without rows.jsonl); choose another --out")
        return
    differs = differences(manifest["study"], _plain_json(study))
    if differs:
        raise RunFolderError(f"output folder {folder} holds a run with a different "
                             f"{', '.join(differs)}; choose another --out to keep both")
    read_journal(folder)


def _describe_holder(text: str) -> str:
    try:
        holder = json.loads(text)
        return f"pid {holder['pid']} on {holder['host']}, started {holder['started']}"
    except (ValueError, KeyError, TypeError):
        return "a run that left no details"


def _lock(folder: Path) -> tuple[int, str]:
    """The locked file descriptor, and what the run should say about an earlier holder."""
    fd = os.open(folder / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 4096, 0).decode(errors="replace")
        os.close(fd)
        raise RunFolderError(f"output folder {folder} is in use by another segbench run "
                             f"({_describe_holder(holder)}); wait for it to finish or choose "
                             "another --out") from None
    previous = os.pread(fd, 4096, 0).decode(errors="replace")
    note = previous and (f"segbench: taking over the lock of {_describe_holder(previous)}, "
                         "which is no longer running")
    me = {"pid": os.getpid(), "host": socket.gethostname(),
          "started": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    os.ftruncate(fd, 0)
    os.pwrite(fd, json.dumps(me).encode(), 0)
    os.fsync(fd)
    return fd, note


def _unlock(fd: int) -> None:
    try:
        os.ftruncate(fd, 0)  # an empty lock file: the holder ended cleanly
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


class RunFolder:
    """The writer of one run folder; only `open_run_folder` makes one, under the lock."""

    def __init__(self, path: Path, notes: list[str]):
        self.path = path
        self.notes = notes  # what the run should tell the user about the folder's state
        self.manifest = _read_manifest(path)
        self.start_number = 0  # set by begin()
        entries, intact = read_journal(path)
        self.entries = entries
        self._drop_partial_line(intact)

    def _drop_partial_line(self, intact: int) -> None:
        journal = self.path / JOURNAL
        if journal.is_file() and journal.stat().st_size > intact:
            with self._writing(JOURNAL):
                os.truncate(journal, intact)
            self.notes.append("segbench: dropped a partial last row from rows.jsonl (a run was "
                              "stopped while writing it); that row runs again")

    def _sweep_temporary_files(self) -> None:
        for folder in (self.path, self.path / WEIGHTS):
            for path in folder.iterdir() if folder.is_dir() else ():
                if TEMPORARY.match(path.name) and path.is_file():
                    path.unlink()

    @contextmanager
    def _writing(self, name: str) -> Iterator[None]:
        try:
            yield
        except OSError as e:
            raise RunFolderError(f"cannot write {self.path / name} ({e.strerror}); the rows "
                                 "finished so far are kept; make room and run the same command "
                                 "to resume") from None

    def rows(self) -> list[dict]:
        return [row for row, _ in latest_entries(self.entries)]

    def finished_keys(self) -> set[tuple]:
        return _finished(self.entries)

    def begin(self, shared: dict, start: dict) -> None:
        """Record this run start in run.json (once, before its first row); `shared` (study,
        dataset, method) is written only into a new folder."""
        if self.start_number:
            return
        manifest = self.manifest or {"format": results.FORMAT, **json_safe(shared), "starts": []}
        manifest = {**manifest, "starts": [*manifest["starts"], json_safe(start)]}
        with self._writing(MANIFEST):
            atomic_write(self.path / MANIFEST, json.dumps(manifest, indent=2) + "\n")
        self.manifest, self.start_number = manifest, len(manifest["starts"])

    def write_weights(self, name: str, data: bytes) -> str:
        """Keep one training's weights as weights/<name>, atomically; returns that path,
        relative to the folder."""
        relative = f"{WEIGHTS}/{name}"
        with self._writing(relative):
            (self.path / WEIGHTS).mkdir(exist_ok=True)
            atomic_write(self.path / relative, data)
        return relative

    def append(self, record: results.Record) -> None:
        """Journal one row (fsynced), then regenerate the derived files."""
        if not self.start_number:
            raise RuntimeError("RunFolder.begin() must come before the first append()")
        record.run_start = self.start_number
        entry = {"row": json_safe(record.to_row()), "tables": json_safe(record.tables)}
        line = (json.dumps(entry, allow_nan=False) + "\n").encode()
        path = self.path / JOURNAL
        with self._writing(JOURNAL):
            fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            size = os.fstat(fd).st_size
            try:
                _write_all(fd, line)
                os.fsync(fd)
            except OSError:
                os.ftruncate(fd, size)  # no partial line left behind
                raise
            finally:
                os.close(fd)
        self.entries.append((entry["row"], entry["tables"]))
        self.publish()

    def publish(self) -> None:
        """Regenerate every derived file from the journal and run.json."""
        if self.manifest is None:
            return
        latest = latest_entries(self.entries)
        rows = [row for row, _ in latest]
        summary_rows = summary.summarize(latest)
        files = {
            "results.csv": results.csv_text(rows),
            "results.md": results.markdown_text(self.path.name, rows, self.manifest),
            "results.json": results.json_text(rows, self.manifest),
            "summary.csv": summary.csv_text(summary_rows),
            "summary.md": summary.markdown_text(self.path.name, summary_rows, self.manifest,
                                                rows),
        }
        for name in sorted({name for _, tables in latest for name in tables}):
            text = results.table_csv_text(name, latest)
            if text is not None:
                files[f"{name}.csv"] = text
        for name, text in files.items():
            with self._writing(name):
                atomic_write(self.path / name, text)
        for name in {name for _, tables in self.entries for name in tables}:
            if f"{name}.csv" not in files:  # e.g. the sweep of a row since re-measured without
                (self.path / f"{name}.csv").unlink(missing_ok=True)


def weights_paths(folder: Path) -> list[Path]:
    return sorted((folder / WEIGHTS).glob("*.pt"))


@contextmanager
def open_run_folder(path: Path, study: dict) -> Iterator[RunFolder]:
    """Create the folder if needed, lock it for the whole block, repair what a killed run
    left, and regenerate the derived files."""
    try:
        path.mkdir(parents=True, exist_ok=True)
        fd, note = _lock(path)
    except OSError as e:
        raise RunFolderError(f"output folder {path} is not usable ({e.strerror})") from None
    try:
        check_folder(path, study)  # again, now that no other run can change it
        folder = RunFolder(path, [note] if note else [])
        folder._sweep_temporary_files()
        folder.publish()
        yield folder
    finally:
        _unlock(fd)
