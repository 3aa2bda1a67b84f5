"""The grid on Ray: one task trains a unit, another measures its rows; the driver writes them.

`RayExecutor` is what `segbench run --workers N` (a local Ray) and `--ray-address ADDR|auto`
(a running cluster) hand to `segbench.runner.run`. Ray is imported only then: the in-process
path never imports it.

Placement. A training asks for one GPU on CUDA, or --threads CPUs on a CPU. Measuring a unit
(accuracy, then latency, throughput and memory) asks in addition for all of its node's `bench`
resource, which every node has once, so no two timings share a node. On a CPU each training
also holds a sliver of `bench`, so a timing never shares the node's cores with a training
either: a CPU node trains, then times. On CUDA the node's other GPUs go on training while one
GPU is timed.

Data. Each worker prepares its unit's split through segbench's data cache, $SEGBENCH_CACHE
(passed on from the driver when set) or ~/.cache/segbench on each node: point it at a shared
folder and each split is prepared once; otherwise every node prepares its own copy.

One writer. Tasks return records; only the driver writes the run folder. A task whose worker
or node dies runs again (MAX_RETRIES); a unit that still fails becomes its rows with the
reason. Interrupting the driver cancels every task; the rows already written are kept.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
from tqdm.auto import tqdm

from segbench.config import RunConfig, UsageError
from segbench.grid import Unit, base_record, row_count
from segbench.results import Record
from segbench.runner import (
    SplitData,
    Trained,
    UnitContext,
    failure_status,
    measure_placed,
    train_placed,
)

BENCH = "bench"  # the per-node resource that a measurement takes whole
TRAINING_BENCH_SHARE = 0.001  # on a CPU, what each training holds of its node's bench
MAX_RETRIES = 2  # runs of a task after its worker died, before its unit is a failed row
REFRESH_S = 1.0
PASSED_ON_ENV = ("SEGBENCH_CACHE", "TRITON_INTERPRET")
CONNECT_TIMEOUT_S = 10.0
INSTALL = "pip install 'segbench[ray]'"
HOW_TO_START = ("start the cluster with ray start --head --resources='{\"bench\": 1}' and "
                "each further node with ray start --address=HEAD:6379 "
                "--resources='{\"bench\": 1}' (see README, Many GPUs / a cluster)")


def import_ray(flag: str):
    try:
        import ray
    except ImportError:
        raise UsageError(f"{flag} needs Ray, which is not installed; install it with: "
                         f"{INSTALL}") from None
    return ray


# --- on the workers ------------------------------------------------------------------------

_split_data = SplitData()  # one per worker process: the tasks a worker runs in turn share it


def _announce(board, key: str, doing: str) -> None:
    board.started.remote(key, f"{socket.gethostname()}:{os.getpid()}", doing)


def train_on_worker(unit: Unit, cfg: RunConfig, board, key: str) -> Trained:
    _announce(board, key, f"training {unit.label}")
    return train_placed(unit, UnitContext(cfg, _split_data.of(cfg, unit)))


def measure_on_worker(unit: Unit, trained: Trained, cfg: RunConfig, board,
                      key: str) -> list[Record]:
    import ray

    _announce(board, key, f"measuring {unit.label}")
    return measure_placed(unit, trained, UnitContext(cfg, _split_data.of(cfg, unit)),
                          ray.get_runtime_context().get_node_id())


class Board:
    """An actor: what each running task does, as its worker said when it started it."""

    def __init__(self) -> None:
        self.doing: dict[str, tuple[str, str, float]] = {}

    def started(self, key: str, worker: str, doing: str) -> None:
        self.doing[key] = (worker, doing, time.time())

    def snapshot(self) -> dict[str, tuple[str, str, float]]:
        return dict(self.doing)


# --- on the driver -------------------------------------------------------------------------

class RayProgress:
    """One bar of the rows done of the total, with its ETA, and one line per running task:
    which worker does what, since when."""

    def __init__(self, total: int):
        self.bar = tqdm(total=total, desc="rows", unit="row", position=0)
        self.lines: list[tqdm] = []

    def advance(self, rows: int) -> None:
        self.bar.update(rows)

    def show(self, doing: list[str]) -> None:
        while len(self.lines) < len(doing):
            self.lines.append(tqdm(total=0, bar_format="{desc}", position=len(self.lines) + 1,
                                   leave=False))
        for line, text in zip(self.lines, doing + [""] * (len(self.lines) - len(doing)),
                              strict=True):
            if line.desc != text:
                line.set_description_str(text)

    def close(self) -> None:
        for line in self.lines:
            line.close()
        self.bar.close()


def _first_line(error: BaseException) -> str:
    lines = str(error).strip().splitlines()
    return lines[0] if lines else type(error).__name__


def task_failure(ray, error: Exception) -> tuple[str, str]:
    """A unit's status and reason when its task could not give its records."""
    if isinstance(error, ray.exceptions.RayTaskError) and error.cause is not None:
        cause = error.cause  # raised by segbench code on the worker: not retried
        return failure_status(cause), f"{type(cause).__name__}: {_first_line(cause)}"
    status = "oom" if isinstance(error, ray.exceptions.OutOfMemoryError) else "error"
    return status, f"{type(error).__name__} after {MAX_RETRIES} retries: {_first_line(error)}"


def check_reachable(address: str) -> None:
    """Fail in seconds where Ray would wait minutes for an address that does not answer."""
    if address == "auto":
        return  # Ray finds the cluster started on this machine, or says at once it has none
    host, _, port = address.removeprefix("ray://").rpartition(":")
    if not host or not port.isdigit():
        raise UsageError(f"--ray-address must be auto or HOST:PORT (the head node's GCS port, "
                         f"6379 by default), got {address!r}")
    try:
        socket.create_connection((host, int(port)), timeout=CONNECT_TIMEOUT_S).close()
    except OSError as e:
        raise UsageError(f"no Ray cluster answers at --ray-address {address} "
                         f"({e.strerror or e}); {HOW_TO_START}") from None


def _alive_nodes(ray) -> list[dict]:
    return [node for node in ray.nodes() if node["Alive"]]


def check_cluster(ray, cfg: RunConfig) -> list[dict]:
    """The cluster's nodes, if every one can take part: a bench of exactly 1 each, and a node
    that can take a training."""
    nodes = _alive_nodes(ray)
    for node in nodes:
        bench = node["Resources"].get(BENCH)
        if bench != 1:
            raise UsageError(f"Ray node {node['NodeManagerHostname']} has {BENCH}={bench}; "
                             "every node needs exactly 1, so that timings never overlap; "
                             f"{HOW_TO_START}")
    if cfg.device == "cuda" and not any(node["Resources"].get("GPU") for node in nodes):
        raise UsageError("the Ray cluster has no GPU; use --device cpu, or add GPU nodes")
    if cfg.device == "cpu" and not any(node["Resources"].get("CPU", 0) >= cfg.threads
                                       for node in nodes):
        raise UsageError(f"no Ray node has the {cfg.threads} CPUs that --threads asks for each "
                         "training; use a smaller --threads")
    return nodes


class RayExecutor:
    """The units as Ray tasks, on a local Ray of `workers` slots (each --threads CPUs, or one
    GPU with CUDA) or on the cluster at `address`."""

    def __init__(self, device: str, workers: int | None = None, address: str | None = None):
        if (workers is None) == (address is None):
            raise UsageError("give one of --workers and --ray-address")
        if workers is not None and workers < 1:
            raise UsageError(f"--workers must be at least 1, got {workers}")
        if device == "cuda" and workers is not None and workers > torch.cuda.device_count():
            raise UsageError(f"--workers {workers} asks for {workers} GPUs, "
                             f"{torch.cuda.device_count()} visible")
        self.workers, self.address = workers, address
        self._ray = import_ray("--workers" if address is None else "--ray-address")
        if address is not None:
            check_reachable(address)
        self._summary = ""

    def _local_resources(self, cfg: RunConfig) -> dict:
        if cfg.device == "cuda":
            return {"num_cpus": os.cpu_count(), "num_gpus": self.workers}
        return {"num_cpus": self.workers * cfg.threads, "num_gpus": 0}

    def _connect(self, cfg: RunConfig) -> None:
        options = {"log_to_driver": False, "logging_level": logging.ERROR}
        if self.address is None:  # the local workers inherit this environment
            os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # nothing leaves the machine
            # "local": a new Ray of our own, even where RAY_ADDRESS or a cluster started here
            # (or one that died and left its address behind) would be joined otherwise
            self._ray.init(address="local", include_dashboard=False, resources={BENCH: 1},
                           **self._local_resources(cfg), **options)
            return
        env = {name: os.environ[name] for name in PASSED_ON_ENV if name in os.environ}
        try:
            self._ray.init(address=self.address, runtime_env={"env_vars": env}, **options)
        except ConnectionError as e:
            raise UsageError(f"no Ray cluster at --ray-address {self.address} "
                             f"({_first_line(e)}); {HOW_TO_START}; a cluster with token "
                             "authentication also needs RAY_AUTH_MODE=token here") from None

    @contextmanager
    def started(self, cfg: RunConfig) -> Iterator[dict]:
        self._connect(cfg)
        try:
            nodes = check_cluster(self._ray, cfg)
            yield self._describe(cfg, nodes)
        finally:
            self._ray.shutdown()

    def _describe(self, cfg: RunConfig, nodes: list[dict]) -> dict:
        total = {name: sum(node["Resources"].get(name, 0) for node in nodes)
                 for name in ("CPU", "GPU")}
        where = f"local, {self.workers} worker(s)" if self.address is None else self.address
        self._summary = (f"segbench: on Ray {self._ray.__version__} ({where}): {len(nodes)} "
                         f"node(s), {total['CPU']:.0f} CPUs, {total['GPU']:.0f} GPUs; one "
                         "timing at a time per node")
        return {
            "name": "ray", "ray": self._ray.__version__, "address": self.address or "local",
            "workers": self.workers, "max_retries": MAX_RETRIES,
            "training": self._training(cfg), "measuring": self._measuring(cfg),
            "nodes": [{"host": node["NodeManagerHostname"], "node_id": node["NodeID"],
                       **{k: node["Resources"].get(k, 0) for k in ("CPU", "GPU", BENCH)}}
                      for node in nodes],
        }

    @staticmethod
    def _training(cfg: RunConfig) -> dict:
        if cfg.device == "cuda":
            return {"num_gpus": 1}
        return {"num_cpus": cfg.threads, "resources": {BENCH: TRAINING_BENCH_SHARE}}

    @staticmethod
    def _measuring(cfg: RunConfig) -> dict:
        device = {"num_gpus": 1} if cfg.device == "cuda" else {"num_cpus": cfg.threads}
        return {**device, "resources": {BENCH: 1}}

    def records(self, cfg: RunConfig, units: list[Unit], data: SplitData,
                log: Callable[[str], None],
                keep: Callable[[Unit, Trained], None]) -> Iterator[Record]:
        """Every unit's training and measuring submitted at once; each unit's rows as soon as
        they are back. A finished training's weights come here for `keep` unless the run
        keeps none (--no-save-weights)."""
        ray = self._ray
        log(self._summary)
        board = ray.remote(Board).options(num_cpus=0).remote()
        train = ray.remote(train_on_worker).options(max_retries=MAX_RETRIES,
                                                    **self._training(cfg))
        measure = ray.remote(measure_on_worker).options(max_retries=MAX_RETRIES,
                                                        **self._measuring(cfg))
        training: dict = {}  # ObjectRef -> (task key, unit)
        measuring: dict = {}  # ObjectRef -> (task key, unit)
        for number, unit in enumerate(units):
            trained = train.remote(unit, cfg, board, f"train {number}")
            training[trained] = (f"train {number}", unit)
            rows = measure.remote(unit, trained, cfg, board, f"measure {number}")
            measuring[rows] = (f"measure {number}", unit)
        progress = RayProgress(row_count(units))
        try:
            while measuring:
                ready, _ = ray.wait([*training, *measuring], num_returns=1, timeout=REFRESH_S,
                                    fetch_local=False)  # weights go worker to worker
                for ref in ready:
                    if ref in training:  # listed first: ready before its rows
                        _, unit = training.pop(ref)
                        self._keep(ref, unit, cfg, keep)
                        continue
                    _, unit = measuring.pop(ref)
                    records = self._fetch(ref, cfg, unit)
                    progress.advance(len(records))
                    yield from records
                keys = [key for key, _ in (*training.values(), *measuring.values())]
                progress.show(self._doing(board, keys))
        finally:
            for ref in [*training, *measuring]:
                ray.cancel(ref, force=True)
            progress.close()

    def _keep(self, ref, unit: Unit, cfg: RunConfig,
              keep: Callable[[Unit, Trained], None]) -> None:
        if cfg.save_weights is False:
            return
        try:
            trained = self._ray.get(ref)
        except self._ray.exceptions.RayError:
            return  # its measuring task fails too, and becomes the unit's rows
        keep(unit, trained)

    def _fetch(self, ref, cfg: RunConfig, unit: Unit) -> list[Record]:
        try:
            return self._ray.get(ref)
        except self._ray.exceptions.RayError as e:
            status, reason = task_failure(self._ray, e)
            records = [base_record(cfg, unit, row) for row in unit.rows]
            for record in records:
                record.failed(status, reason)
            return records

    def _doing(self, board, keys: list[str]) -> list[str]:
        """What each running task does; nothing when the board cannot answer in time."""
        try:
            doing = self._ray.get(board.snapshot.remote(), timeout=REFRESH_S)
        except self._ray.exceptions.RayError:
            return []
        return [f"  {worker}: {what} (since {time.strftime('%H:%M:%S', time.localtime(since))})"
                for worker, what, since in (doing[key] for key in keys if key in doing)]
