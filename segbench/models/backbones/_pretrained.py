"""Load a state_dict from a local file into a backbone (nothing is downloaded).

Two steps, composed by `load_backbone_state(module, path, prefix_map)`:
- `read_state_dict(path)` reads a `torch.save` file: a plain state_dict, or a checkpoint that
  wraps it under "model" and/or "state_dict" (the official Swin / mmseg layouts);
- `load_state(module, state, prefix_map)` renames the keys (longest matching prefix wins; with a
  map, keys no prefix matches are unexpected), copies every tensor whose shape fits, and returns
  (and prints, as one line) a `LoadReport`.
A family's own key conversions (mmseg's `backbone.` via `strip_prefixes`, Hugging Face -> official
names, position-embedding resizing) are applied to the state dict in between. Two shape changes
are made by `load_state`, not refused (`adapt_tensor`):
- input channels: a conv weight trained on RGB (in-channel dim 3) loaded into a conv with C != 3
  input channels gets the sum of its three RGB filters divided by C in every channel, so an image
  whose C channels are equal gives the response the RGB net gave to that grey image;
- fully connected as convolution: a 2-D Linear weight loaded into a 4-D conv weight with the same
  number of elements is reshaped (FCN's fc6 (4096, 25088) -> (4096, 512, 7, 7); torchvision
  flattens (C, H, W) in that order).
A family may add its own (`fit=`, e.g. Swin's relative position bias tables); any other shape
difference is reported as a mismatch and that tensor is left as initialised.

A file that fits fewer than MIN_MATCHED_SHARE of the target's tensors is refused with a
`PretrainedMismatchError` (a ValueError that carries the report), and nothing is loaded: such a
file is of another model or layout, and a silently random model would be trained instead.
`load_backbone_or_model` takes a whole segmentation checkpoint (torchvision's layout: the
backbone under `backbone.`, heads renamed by a prefix map) or a file of the backbone alone.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn


@dataclass
class LoadReport:
    matched: list[str] = field(default_factory=list)  # module keys loaded (adapted included)
    missing: list[str] = field(default_factory=list)  # module keys the file did not provide
    unexpected: list[str] = field(default_factory=list)  # file keys the module has no place for
    mismatched: list[tuple[str, tuple, tuple]] = field(default_factory=list)  # key, file, module
    adapted: list[str] = field(default_factory=list)  # loaded after a reshape (see fit)

    def __str__(self) -> str:
        parts = [f"{len(self.matched)} matched ({len(self.adapted)} adapted)",
                 f"{len(self.missing)} missing", f"{len(self.unexpected)} unexpected",
                 f"{len(self.mismatched)} shape-mismatched"]
        first = [("missing", self.missing), ("unexpected", self.unexpected),
                 ("mismatched", [k for k, _, _ in self.mismatched])]
        details = [f"{kind} e.g. {keys[:3]}" for kind, keys in first if keys]
        return "pretrained: " + ", ".join(parts) + ("; " + "; ".join(details) if details else "")


MIN_MATCHED_SHARE = 0.5  # of the target's tensors a file must fit to be loaded
WHOLE_MODEL_PREFIX = "backbone."  # a file with such keys holds a whole segmentation model


class PretrainedMismatchError(ValueError):
    """The file fits fewer than MIN_MATCHED_SHARE of the target's tensors; `report` says why."""

    def __init__(self, report: LoadReport, target: str, tensors: int):
        self.report = report
        super().__init__(f"pretrained weights fit {len(report.matched)} of the {tensors} tensors "
                         f"of the {target}, fewer than MIN_MATCHED_SHARE = "
                         f"{MIN_MATCHED_SHARE:.0%}, so nothing was loaded ({report})")


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """The name -> tensor dict of a local `torch.save` file, unwrapped from "model" and/or
    "state_dict" if the file is a checkpoint that holds it there."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"pretrained weights file not found: {path} (expected a local "
                                "torch.save(state_dict) file; nothing is downloaded)")
    state = torch.load(path, map_location="cpu", weights_only=True)
    for wrapper in ("model", "state_dict"):
        if isinstance(state, dict) and isinstance(state.get(wrapper), dict):
            state = state[wrapper]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"{path} does not hold a state_dict (a dict of name -> tensor, "
                         "possibly under 'model' or 'state_dict')")
    return state


def strip_prefixes(state: dict[str, torch.Tensor], prefixes: Sequence[str]) -> dict:
    """Drop wrapper prefixes (`module.`, `backbone.`) so a backbone's keys start at its root;
    the prefixes are tried in the order given, each at most once per key."""
    out = {}
    for key, tensor in state.items():
        for prefix in prefixes:
            if key.startswith(prefix):
                key = key[len(prefix):]
        out[key] = tensor
    return out


def _rename(key: str, prefix_map: dict[str, str] | None) -> str | None:
    if prefix_map is None:
        return key
    prefixes = [p for p in prefix_map if key.startswith(p)]
    if not prefixes:
        return None
    prefix = max(prefixes, key=len)
    return prefix_map[prefix] + key[len(prefix):]


def adapt_tensor(source: torch.Tensor, target: torch.Tensor) -> torch.Tensor | None:
    """The source reshaped to the target's shape by one of the two stated rules, else None."""
    if source.dim() == 2 and target.dim() == 4 and source.numel() == target.numel():
        return source.reshape(target.shape)
    if (source.dim() == 4 and target.dim() == 4 and source.shape[1] == 3
            and source.shape[0] == target.shape[0] and source.shape[2:] == target.shape[2:]):
        channels = target.shape[1]
        return source.sum(dim=1, keepdim=True).div(channels).expand(-1, channels, -1, -1).clone()
    return None


def load_state(module: nn.Module, state: dict[str, torch.Tensor],
               prefix_map: dict[str, str] | None = None, *,
               fit: Callable[[str, torch.Tensor, torch.Tensor], torch.Tensor | None] | None = None,
               derived: tuple[str, ...] = (), verbose: bool = True) -> LoadReport:
    """Copy `state`'s tensors into `module` (see the module docstring for the rules).

    fit(key, source, target): a family's own reshape for a module key whose shape differs, tried
    before `adapt_tensor`; it returns None to leave the tensor to the generic rules.
    derived: key suffixes of buffers the module computes itself; such keys, in the file or in
    the module, are neither loaded nor reported."""
    own = module.state_dict()
    report, loaded = LoadReport(), {}
    for key, tensor in state.items():
        if derived and key.endswith(derived):
            continue
        name = _rename(key, prefix_map)
        if name is None or name not in own:
            report.unexpected.append(key)
            continue
        target = own[name]
        if tensor.shape != target.shape:
            adapted = fit(name, tensor, target) if fit is not None else None
            if adapted is None:
                adapted = adapt_tensor(tensor, target)
            if adapted is None:
                report.mismatched.append((name, tuple(tensor.shape), tuple(target.shape)))
                continue
            tensor = adapted
            report.adapted.append(name)
        loaded[name] = tensor
        report.matched.append(name)
    mismatched = {m for m, _, _ in report.mismatched}
    targets = [k for k in own if not (derived and k.endswith(derived))]
    report.missing = [k for k in targets if k not in loaded and k not in mismatched]
    if len(report.matched) < MIN_MATCHED_SHARE * len(targets):
        raise PretrainedMismatchError(report, type(module).__name__, len(targets))
    module.load_state_dict(loaded, strict=False)
    if verbose:
        print(report)
    return report


def load_backbone_state(module: nn.Module, path: str | Path,
                        prefix_map: dict[str, str] | None = None,
                        verbose: bool = True) -> LoadReport:
    """`load_state(module, read_state_dict(path), prefix_map)`: a local file into `module`."""
    return load_state(module, read_state_dict(path), prefix_map, verbose=verbose)


def load_backbone_or_model(model: nn.Module, path: str | Path, head_map: dict[str, str],
                           backbone_prefix_map: dict[str, str] | None = None,
                           verbose: bool = True) -> LoadReport:
    """A whole segmentation checkpoint (keys under `backbone.`, as torchvision's) into `model`,
    the other keys renamed by `head_map` (keys it does not cover are unexpected); any other
    file into `model.backbone`, renamed by `backbone_prefix_map`."""
    state = read_state_dict(path)
    if any(k.startswith(WHOLE_MODEL_PREFIX) for k in state):
        prefix_map = {WHOLE_MODEL_PREFIX: WHOLE_MODEL_PREFIX} | head_map
        return load_state(model, state, prefix_map, verbose=verbose)
    return load_state(model.backbone, state, backbone_prefix_map, verbose=verbose)
