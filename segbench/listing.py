"""`segbench list`: every registered variant with its parameters and GFLOPs.

Counting means building each model, at its paper's input size by default: minutes for all of
them. So a count is looked up before it is made, in the committed table (model_costs.json,
counted at the listing's default channels and classes) and in a cache on this machine
(<cache dir>/model-costs/<code hash>.json). A count belongs to the model code it was made
with, named by a hash of the model, layer and FLOP-counting sources; the default listing also
shows table counts of older code, marked as such, so that it never builds a model.

`python -m segbench.listing` recounts the committed table with today's code.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path

from segbench.config import UsageError
from segbench.measure.flops import FLOP_CONVENTION

LISTING_CLASSES, LISTING_CHANNELS = 4, 1  # the built-in brain-tissue task
PACKAGE = Path(__file__).resolve().parent
TABLE = PACKAGE / "model_costs.json"
# what a count depends on: the models, their layers and the counting itself
CODE_PATHS = ("models", "layers", "measure/flops.py")


@dataclass(frozen=True)
class Setting:
    """What a count is made at."""

    in_channels: int
    num_classes: int
    height: int
    width: int

    @property
    def key(self) -> str:
        return f"{self.in_channels}ch-{self.num_classes}cls-{self.height}x{self.width}"


@dataclass(frozen=True)
class Count:
    params: int
    gflops: float | None  # None: not counted (--no-flops) or the count failed
    uncounted_ops: str = ""
    source: str = "counted"  # table | table* (older code) | cache | counted | params only
    failure: str = ""


SOURCES = {
    "table": "the committed table segbench/model_costs.json, counted with today's model code",
    "table*": "the committed table, counted with older model code "
              "(`segbench list --count` counts with today's; cached afterwards)",
    "cache": "counted earlier on this machine with today's model code ({cache})",
    "counted": "counted just now (and cached in {cache})",
    "params only": "--no-flops: parameters from a model built on the meta device, no FLOPs",
}


def model_code_hash() -> str:
    digest = hashlib.sha256()
    for part in CODE_PATHS:
        path = PACKAGE / part
        for file in sorted(path.rglob("*.py")) if path.is_dir() else [path]:
            digest.update(file.relative_to(PACKAGE).as_posix().encode() + b"\0")
            digest.update(file.read_bytes() + b"\0")
    return digest.hexdigest()[:16]


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}  # missing or unreadable: counted again, never trusted


def _write_json(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")
    tmp.replace(path)


def cache_path(code_hash: str) -> Path:
    from segbench.data import default_cache_dir  # only when a count is not in the table

    return default_cache_dir() / "model-costs" / f"{code_hash}.json"


def _entry(count: Count) -> dict:
    return {"params": count.params, "gflops": count.gflops, "uncounted_ops": count.uncounted_ops}


def _from_entry(entry: dict, source: str) -> Count:
    return Count(int(entry["params"]), entry["gflops"], entry.get("uncounted_ops", ""), source)


class Counts:
    """Counts by (model, setting): the table, this machine's cache, and new counts."""

    def __init__(self, code_hash: str):
        self.code_hash = code_hash
        self.table = _read_json(TABLE)
        self.table_is_current = self.table.get("code_hash") == code_hash
        self._cache: dict | None = None

    @property
    def cache(self) -> dict:
        if self._cache is None:
            self._cache = _read_json(cache_path(self.code_hash)).get("entries", {})
        return self._cache

    def _table_entry(self, name: str, setting: Setting) -> dict | None:
        entry = self.table.get("models", {}).get(name)
        table_setting = Setting(self.table.get("in_channels"), self.table.get("num_classes"),
                                *(entry or {}).get("input", (0, 0)))
        return entry if entry and table_setting == setting else None

    def lookup(self, name: str, setting: Setting, older_code: bool) -> Count | None:
        """A count made with today's code, or (older_code) the table's of any code."""
        entry = self._table_entry(name, setting)
        if entry and self.table_is_current:
            return _from_entry(entry, "table")
        cached = self.cache.get(f"{name}|{setting.key}")
        if cached:
            return _from_entry(cached, "cache")
        if entry and older_code:
            return _from_entry(entry, "table*")
        return None

    def store(self, new: dict[tuple[str, Setting], Count]) -> None:
        """Add counts to the cache file, merged with what another process may have added."""
        ok = {f"{name}|{setting.key}": _entry(count) for (name, setting), count in new.items()
              if count.gflops is not None}
        if not ok:
            return
        path = cache_path(self.code_hash)
        entries = {**_read_json(path).get("entries", {}), **ok}
        try:
            _write_json(path, {"code_hash": self.code_hash, "entries": entries})
        except OSError as e:
            print(f"segbench: could not cache the counts in {path} ({e.strerror})",
                  file=sys.stderr)
        self._cache = entries


def count_model(name: str, setting: Setting) -> Count:
    """Build the model and count one eval forward at the setting; a failure is a result."""
    import torch

    from segbench.measure.flops import count_flops, count_params
    from segbench.models import create_model

    try:
        model = create_model(name, setting.num_classes, setting.in_channels)
        x = torch.zeros(1, setting.in_channels, setting.height, setting.width)
        flops = count_flops(model, x)
    except Exception as e:  # noqa: BLE001  (e.g. an input size the model cannot take)
        return Count(0, None, failure=f"{type(e).__name__}: {str(e).splitlines()[0][:200]}")
    return Count(count_params(model), flops["gflops"], flops["flops_uncounted_ops"])


def params_on_meta(name: str, setting: Setting) -> Count:
    """Parameters without allocating or initialising weights: the model built on `meta`."""
    import torch

    from segbench.measure.flops import count_params
    from segbench.models import create_model

    with torch.device("meta"):
        model = create_model(name, setting.num_classes, setting.in_channels)
    return Count(count_params(model), None, source="params only")


def count_missing(todo: list[tuple[str, Setting]], counts: Counts) -> dict:
    """Count each (model, setting), with progress on stderr, and cache the counts."""
    from tqdm.auto import tqdm

    print(f"segbench: counting params and FLOPs of {len(todo)} model(s); each is built, so "
          f"this takes a while (cached in {cache_path(counts.code_hash)})", file=sys.stderr)
    new = {}
    with tqdm(todo, desc="counting", unit="model", file=sys.stderr) as bar:
        for name, setting in bar:
            bar.set_postfix_str(f"{name} at {setting.height}x{setting.width}")
            new[name, setting] = count_model(name, setting)
            counts.store({(name, setting): new[name, setting]})
    return new


def _gflops_text(value: float | None) -> str:
    if value is None:
        return "–"
    return f"{value:.1f}" if value >= 10 else f"{value:.3g}"


def _legend(used: list[Count], counts: Counts) -> list[str]:
    sources = dict.fromkeys(c.source for c in used)
    needs_cache = any(s in ("cache", "counted") for s in sources)
    cache = cache_path(counts.code_hash) if needs_cache else None
    lines = ["", "Source of each count:"]
    lines += [f"- {s}: {SOURCES[s].format(cache=cache)}" for s in sources]
    if "table" in sources or "table*" in sources:
        made = counts.table.get("counted_with", {})
        lines.append(f"- the table was counted with model code {counts.table.get('code_hash')} "
                     f"(today's: {counts.code_hash}), torch {made.get('torch')}, fvcore "
                     f"{made.get('fvcore')}")
    return lines


def model_listing(names: list[str] | None = None, in_channels: int = LISTING_CHANNELS,
                  num_classes: int = LISTING_CLASSES, input_size: tuple[int, int] | None = None,
                  with_flops: bool = True, recount: bool = False) -> str:
    """Params and GFLOPs of registered models, at each paper's input size unless given.

    Builds no model when every count is in the table or the cache; otherwise counts (with
    progress) and caches. `recount`: ignore table counts made with older model code."""
    from segbench.models import list_models, model_spec

    try:
        specs = [model_spec(name) for name in (names or list_models())]
    except ValueError as e:
        raise UsageError(str(e)) from None
    settings = {spec.name: Setting(in_channels, num_classes,
                                   *(input_size or (spec.paper_input_size,) * 2))
                for spec in specs}
    counts = Counts(model_code_hash())
    found = {name: counts.lookup(name, setting, older_code=not recount)
             for name, setting in settings.items()}
    missing = [(name, settings[name]) for name, count in found.items() if count is None]
    if missing and with_flops:
        found.update({name: count for (name, _), count in count_missing(missing, counts).items()})
    elif missing:
        found.update({name: params_on_meta(name, setting) for name, setting in missing})
    where = "at the paper's input size" if input_size is None else "at the given input size"
    lines = [f"Models ({in_channels} input channel(s), {num_classes} classes; GFLOPs {where}, "
             f"{FLOP_CONVENTION}; eval forward, auxiliary heads in params only):", "",
             "| name | role | params (M) | input | GFLOPs | source | description |",
             "|---|---|---|---|---|---|---|"]
    for spec in specs:
        role = "paper default" if spec.default else "small (cpu)" if spec.cpu else "variant"
        count, setting = found[spec.name], settings[spec.name]
        params = f"{count.params / 1e6:.2f}" if count.params else "–"
        lines.append(f"| {spec.name} | {role} | {params} | {setting.height}x{setting.width} | "
                     f"{_gflops_text(count.gflops)} | {count.source} | {spec.description} |")
    lines += _legend(list(found.values()), counts)
    failures = [f"- {name}: {count.failure}" for name, count in found.items() if count.failure]
    if failures:
        lines += ["", "Not counted (the model could not take the input):", *failures]
    return "\n".join(lines)


def write_table() -> Path:
    """Recount the committed table at the listing's defaults with today's code."""
    import fvcore
    import torch

    from segbench.models import list_models, model_spec

    counts = Counts(model_code_hash())
    settings = {name: Setting(LISTING_CHANNELS, LISTING_CLASSES,
                              *(model_spec(name).paper_input_size,) * 2)
                for name in list_models()}
    cached = {name: counts.cache.get(f"{name}|{s.key}") for name, s in settings.items()}
    todo = [(name, s) for name, s in settings.items() if not cached[name]]
    new = count_missing(todo, counts) if todo else {}
    models = {}
    for name, setting in settings.items():
        entry = cached[name] or _entry(new[name, setting])
        if entry["gflops"] is None:
            raise RuntimeError(f"{name} could not be counted: {new[name, setting].failure}")
        models[name] = {**entry, "input": [setting.height, setting.width]}
    _write_json(TABLE, {"code_hash": counts.code_hash, "in_channels": LISTING_CHANNELS,
                        "num_classes": LISTING_CLASSES, "convention": FLOP_CONVENTION,
                        "counted_with": {"torch": torch.__version__,
                                         "fvcore": getattr(fvcore, "__version__", "unknown")},
                        "models": models})
    return TABLE


if __name__ == "__main__":
    print(f"segbench: wrote {write_table()}")
