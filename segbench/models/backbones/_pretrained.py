"""Load a torchvision-layout state_dict from a local file into a backbone (nothing is downloaded).

`load_backbone_state(module, path, prefix_map)` renames the file's keys (longest matching prefix
wins; with a map, keys no prefix matches are unexpected), copies every tensor whose shape fits,
and returns (and prints, as one line) a `LoadReport`. Two shape changes are made, not refused:
- input channels: a conv weight trained on RGB (in-channel dim 3) loaded into a conv with C != 3
  input channels gets the sum of its three RGB filters divided by C in every channel, so an image
  whose C channels are equal gives the response the RGB net gave to that grey image;
- fully connected as convolution: a 2-D Linear weight loaded into a 4-D conv weight with the same
  number of elements is reshaped (FCN's fc6 (4096, 25088) -> (4096, 512, 7, 7); torchvision
  flattens (C, H, W) in that order).
Any other shape difference is reported as a mismatch and that tensor is left as initialised.
"""

from __future__ import annotations

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
    adapted: list[str] = field(default_factory=list)  # loaded after an input-channel/fc reshape

    def __str__(self) -> str:
        parts = [f"{len(self.matched)} matched ({len(self.adapted)} adapted)",
                 f"{len(self.missing)} missing", f"{len(self.unexpected)} unexpected",
                 f"{len(self.mismatched)} shape-mismatched"]
        first = [("missing", self.missing), ("unexpected", self.unexpected),
                 ("mismatched", [k for k, _, _ in self.mismatched])]
        details = [f"{kind} e.g. {keys[:3]}" for kind, keys in first if keys]
        return "pretrained: " + ", ".join(parts) + ("; " + "; ".join(details) if details else "")


def _rename(key: str, prefix_map: dict[str, str] | None) -> str | None:
    if prefix_map is None:
        return key
    prefixes = [p for p in prefix_map if key.startswith(p)]
    if not prefixes:
        return None
    prefix = max(prefixes, key=len)
    return prefix_map[prefix] + key[len(prefix):]


def _adapt(source: torch.Tensor, target: torch.Tensor) -> torch.Tensor | None:
    """The source reshaped to the target's shape by one of the two stated rules, else None."""
    if source.dim() == 2 and target.dim() == 4 and source.numel() == target.numel():
        return source.reshape(target.shape)
    if (source.dim() == 4 and target.dim() == 4 and source.shape[1] == 3
            and source.shape[0] == target.shape[0] and source.shape[2:] == target.shape[2:]):
        channels = target.shape[1]
        return source.sum(dim=1, keepdim=True).div(channels).expand(-1, channels, -1, -1).clone()
    return None


def _read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"pretrained weights file not found: {path} (expected a local "
                                "torch.save(state_dict) file; nothing is downloaded)")
    state = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"{path} does not hold a state_dict (a dict of name -> tensor)")
    return state


def load_backbone_state(module: nn.Module, path: str | Path,
                        prefix_map: dict[str, str] | None = None,
                        verbose: bool = True) -> LoadReport:
    """Copy the file's tensors into `module` (see the module docstring for the rules)."""
    own = module.state_dict()
    report, loaded = LoadReport(), {}
    for key, tensor in _read_state_dict(path).items():
        name = _rename(key, prefix_map)
        if name is None or name not in own:
            report.unexpected.append(key)
            continue
        target = own[name]
        if tensor.shape != target.shape:
            adapted = _adapt(tensor, target)
            if adapted is None:
                report.mismatched.append((name, tuple(tensor.shape), tuple(target.shape)))
                continue
            tensor = adapted
            report.adapted.append(name)
        loaded[name] = tensor
        report.matched.append(name)
    report.missing = [k for k in own if k not in loaded
                      and k not in {m for m, _, _ in report.mismatched}]
    module.load_state_dict(loaded, strict=False)
    if verbose:
        print(report)
    return report
