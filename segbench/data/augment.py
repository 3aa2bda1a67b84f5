"""Training-time augmentation of a batch, on whatever device the batch is on.

`Augmenter(AugmentConfig.default())(images, masks, generator)` takes images (N, C, H, W) float
and masks (N, H, W) int64 and returns new ones; with `AugmentConfig.off()` it returns its
inputs unchanged (use that, or no call, in evaluation). Every random draw comes from the given
torch.Generator (drawn on the generator's device, then moved), so a seeded generator makes the
result reproducible. Each transform is applied to each image with its own probability:

- flips, left-right and up-down, each with `flip_prob`;
- an affine map (rotation within +-`rotate_deg`, zoom within 1 +- `scale`) with `affine_prob`,
  and an elastic deformation (a smooth random displacement of about `elastic_px` pixels) with
  `elastic_prob`, combined into one resampling: bilinear for images, nearest for masks, both
  through the same sampling grid and with edge values repeated outside the image;
- random contrast (SynthSeg-style: every label region of the mask gets a random intensity per
  channel, replacing the image) with `random_contrast_prob`, off in the default;
- gamma (exponent e^u, u within +-`gamma`, on the image rescaled to its own range),
  a smooth multiplicative bias field (log-amplitude about `bias`), Gaussian noise
  (std up to `noise_std`, in normalised intensity units), each with its probability.
Geometric transforms change masks exactly as images; intensity transforms leave masks alone.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields

import torch
import torch.nn.functional as F

ELASTIC_CONTROL_POINTS = 5  # per side of the coarse random displacement grid
BIAS_CONTROL_POINTS = 4  # per side of the coarse random log-bias grid


@dataclass(frozen=True)
class AugmentConfig:
    enabled: bool = False
    flip_prob: float = 0.5
    affine_prob: float = 0.5
    rotate_deg: float = 15.0
    scale: float = 0.15
    elastic_prob: float = 0.3
    elastic_px: float = 3.0
    gamma_prob: float = 0.3
    gamma: float = 0.3
    bias_prob: float = 0.3
    bias: float = 0.3
    noise_prob: float = 0.3
    noise_std: float = 0.1
    random_contrast_prob: float = 0.0

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name.endswith("_prob") and not 0.0 <= value <= 1.0:
                raise ValueError(f"AugmentConfig.{f.name} must be within 0..1, got {value}")
            if f.name != "enabled" and value < 0:
                raise ValueError(f"AugmentConfig.{f.name} must not be negative, got {value}")
        if self.scale >= 1.0:
            raise ValueError(f"AugmentConfig.scale must be below 1, got {self.scale}")

    @classmethod
    def off(cls) -> AugmentConfig:
        return cls(enabled=False)

    @classmethod
    def default(cls) -> AugmentConfig:
        return cls(enabled=True)


class Augmenter:
    def __init__(self, config: AugmentConfig):
        self.config = config

    def __call__(self, images: torch.Tensor, masks: torch.Tensor,
                 generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        if not self.config.enabled:
            return images, masks
        _check_batch(images, masks)
        draw = _Draw(generator, images.shape[0], images.device)
        images, masks = self._flip(images, masks, draw)
        images, masks = self._warp(images, masks, draw)
        images = self._random_contrast(images, masks, draw)
        images = self._gamma(images, draw)
        images = self._bias_field(images, draw)
        images = self._noise(images, draw)
        return images, masks

    def _flip(self, images, masks, draw):
        for dim in (-1, -2):
            flipped = draw.chosen(self.config.flip_prob)
            images = torch.where(flipped[:, None, None, None], images.flip(dim), images)
            masks = torch.where(flipped[:, None, None], masks.flip(dim), masks)
        return images, masks

    def _warp(self, images, masks, draw):
        cfg = self.config
        affine, elastic = draw.chosen(cfg.affine_prob), draw.chosen(cfg.elastic_prob)
        n, _, h, w = images.shape
        theta = _affine_theta(draw.uniform(-cfg.rotate_deg, cfg.rotate_deg) * math.pi / 180,
                              draw.uniform(1 - cfg.scale, 1 + cfg.scale), affine, h, w)
        grid = F.affine_grid(theta.to(images.dtype), [n, 1, h, w], align_corners=False)
        coarse = draw.normal((n, 2, ELASTIC_CONTROL_POINTS, ELASTIC_CONTROL_POINTS))
        shift = F.interpolate(coarse * elastic[:, None, None, None], size=(h, w), mode="bicubic",
                              align_corners=True)
        to_normalised = torch.tensor([2.0 / w, 2.0 / h], device=images.device) * cfg.elastic_px
        grid = grid + (shift.permute(0, 2, 3, 1) * to_normalised).to(grid.dtype)
        warped = affine | elastic
        if not warped.any():
            return images, masks
        sample = dict(padding_mode="border", align_corners=False)
        new_images = F.grid_sample(images[warped], grid[warped], mode="bilinear", **sample)
        new_masks = F.grid_sample(masks[warped, None].to(grid.dtype), grid[warped],
                                  mode="nearest", **sample)[:, 0].round().long()
        images, masks = images.clone(), masks.clone()
        images[warped], masks[warped] = new_images, new_masks
        return images, masks

    def _random_contrast(self, images, masks, draw):
        chosen = draw.chosen(self.config.random_contrast_prob)
        if not chosen.any():
            return images
        n, channels = images.shape[:2]
        levels = draw.normal((n, channels, int(masks.max()) + 1))
        synthetic = torch.gather(levels, 2, masks.flatten(1)[:, None].expand(-1, channels, -1))
        return torch.where(chosen[:, None, None, None],
                           synthetic.view_as(images).to(images.dtype), images)

    def _gamma(self, images, draw):
        chosen = draw.chosen(self.config.gamma_prob)
        exponent = torch.exp(draw.uniform(-self.config.gamma, self.config.gamma))
        if not chosen.any():
            return images
        low = images.amin(dim=(1, 2, 3), keepdim=True)
        span = (images.amax(dim=(1, 2, 3), keepdim=True) - low).clamp_min(1e-6)
        corrected = ((images - low) / span) ** exponent[:, None, None, None] * span + low
        return torch.where(chosen[:, None, None, None], corrected, images)

    def _bias_field(self, images, draw):
        chosen = draw.chosen(self.config.bias_prob)
        coarse = draw.normal((images.shape[0], 1, BIAS_CONTROL_POINTS, BIAS_CONTROL_POINTS))
        if not chosen.any():
            return images
        log_field = F.interpolate(coarse * self.config.bias, size=images.shape[-2:],
                                  mode="bicubic", align_corners=True)
        low = images.amin(dim=(1, 2, 3), keepdim=True)
        biased = (images - low) * torch.exp(log_field).to(images.dtype) + low
        return torch.where(chosen[:, None, None, None], biased, images)

    def _noise(self, images, draw):
        chosen = draw.chosen(self.config.noise_prob)
        std = draw.uniform(0.0, self.config.noise_std) * chosen
        if not chosen.any():
            return images
        return images + draw.normal(tuple(images.shape)).to(images.dtype) * std[:, None, None, None]


def _check_batch(images: torch.Tensor, masks: torch.Tensor) -> None:
    if images.dim() != 4 or not images.is_floating_point():
        raise ValueError(f"images must be (N, C, H, W) float, got {tuple(images.shape)} "
                         f"{images.dtype}")
    if masks.shape != (images.shape[0], *images.shape[2:]) or masks.dtype != torch.int64:
        raise ValueError(f"masks must be (N, H, W) int64 matching images {tuple(images.shape)}, "
                         f"got {tuple(masks.shape)} {masks.dtype}")


def _affine_theta(angle: torch.Tensor, zoom: torch.Tensor, chosen: torch.Tensor,
                  h: int, w: int) -> torch.Tensor:
    """(N, 2, 3) output-to-input maps in normalised coordinates; identity where not chosen.
    Rotation is in pixel space, hence the h/w factors for non-square images."""
    angle, zoom = angle * chosen, torch.where(chosen, zoom, torch.ones_like(zoom))
    cos, sin = torch.cos(angle) / zoom, torch.sin(angle) / zoom
    zero = torch.zeros_like(cos)
    return torch.stack([torch.stack([cos, -sin * h / w, zero], -1),
                        torch.stack([sin * w / h, cos, zero], -1)], 1)


class _Draw:
    """Random numbers for a batch of n images, from one generator, on the batch's device."""

    def __init__(self, generator: torch.Generator, n: int, device: torch.device):
        self.generator, self.n, self.device = generator, n, device

    def uniform(self, low: float, high: float) -> torch.Tensor:
        u = torch.rand(self.n, generator=self.generator, device=self.generator.device)
        return (low + (high - low) * u).to(self.device)

    def chosen(self, probability: float) -> torch.Tensor:
        return self.uniform(0.0, 1.0) < probability

    def normal(self, shape: tuple[int, ...]) -> torch.Tensor:
        return torch.randn(shape, generator=self.generator,
                           device=self.generator.device).to(self.device)
