"""The on-disk cache of prepared splits: one torch file per prepared dataset, with a checksum.

The file holds the dataset's fields and a BLAKE2 digest of every tensor's bytes and of the
other fields, so bytes changed inside the tensor data (which `torch.load` does not notice) are
caught on reading, as is data that fails `PreparedDataset.check` (NaN intensities, say). Masks
are stored as uint8 when their labels fit, and read back as int64.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict
from pathlib import Path

import torch

from segbench.data.base import DataError, PreparedDataset, Split

FORMAT = "segbench-prepared-dataset"


def _digest(fields: dict) -> str:
    """BLAKE2 of the tensors' bytes, in a fixed order, and of the remaining fields as JSON."""
    digest = hashlib.blake2b(digest_size=32)
    plain = {k: v for k, v in fields.items() if k != "splits"}
    plain["splits"] = {}
    for name in sorted(fields["splits"]):
        split = fields["splits"][name]
        for key in ("images", "masks", "spacing_mm"):
            tensor = split[key]
            if tensor is not None:
                digest.update(f"{name}/{key}/{tensor.dtype}/{tuple(tensor.shape)}".encode())
                digest.update(tensor.contiguous().numpy().tobytes())
        plain["splits"][name] = split["groups"]
    digest.update(json.dumps(plain, sort_keys=True, default=str).encode())
    return digest.hexdigest()


def save(dataset: PreparedDataset, path: Path) -> None:
    fields = asdict(dataset)
    for split in fields["splits"].values():
        if int(split["masks"].max()) < 256:
            split["masks"] = split["masks"].to(torch.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    try:
        torch.save({"format": FORMAT, "checksum": _digest(fields), "fields": fields}, tmp)
        tmp.replace(path)  # atomic: a crash never leaves a half-written cache under the real name
    finally:
        tmp.unlink(missing_ok=True)


def read(path: Path) -> tuple[PreparedDataset | None, str | None]:
    """(dataset, None) from a sound cache file, else (None, what is wrong with it); a missing
    file is (None, None)."""
    if not path.is_file():
        return None, None
    try:
        payload = torch.load(path, weights_only=True)
        if not isinstance(payload, dict) or payload.get("format") != FORMAT:
            return None, "is not a segbench cache of this version"
        fields = payload["fields"]
        if _digest(fields) != payload["checksum"]:
            return None, "failed its checksum (its bytes changed after it was written)"
        for split in fields["splits"].values():
            split["masks"] = split["masks"].long()
        fields["splits"] = {k: Split(**v) for k, v in fields["splits"].items()}
        dataset = PreparedDataset(**fields)
        dataset.check()
        return dataset, None
    except DataError as e:
        return None, f"holds data that fails the checks ({e})"
    except MemoryError:
        raise
    except Exception as e:  # noqa: BLE001  (any unreadable cache is rebuilt, never trusted)
        return None, f"is unreadable ({type(e).__name__})"
