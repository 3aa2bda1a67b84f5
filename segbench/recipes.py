"""Training recipes: the optimizer, learning rate, weight decay and schedule of each family.

`recipe_for(arch, "family", profile)` gives an architecture family's recipe, taken from its
paper or reference implementation (each Recipe states its source and how segbench adapted it);
`recipe_for(arch, "shared", profile)` gives segbench's single recipe for every architecture
(the profile's AdamW learning rate and weight decay, cosine to 0, no warm-up), the one used
before family recipes existed, for ablations.

Adaptations that hold for every family recipe (stated once here, and in each source):
- The papers train ImageNet-pretrained backbones for 20k-160k iterations; segbench trains
  from scratch for the profile's epochs and batch size. Learning rates and weight decays are
  the papers' values, not re-tuned (`segbench.train.lr_sweep` can pick among 3 values).
- Warm-up: a linear ramp over the first WARMUP_FRACTION of the steps for every family
  (mmseg's transformer configs warm up for 1500 of 160k iterations, about 1%; CNN papers use
  none), so that short budgets start alike.
- Per-layer learning-rate multipliers (a 10x head, DeepLab's 10x classifier) are dropped: they
  protect pretrained backbones, which segbench does not have.
- Schedules are "poly", lr * (1 - t/T)^power, or "cosine", lr * (1 + cos(pi t/T)) / 2, over all
  T steps, times the warm-up ramp; a paper's step or fixed schedule becomes poly 0.9.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace

from segbench.config import RECIPES, Profile

OPTIMIZERS = ("adamw", "sgd")
SCHEDULES = ("cosine", "poly")
WARMUP_FRACTION = 0.05
# parameters that transformer recipes exclude from weight decay, besides every 1-D parameter
# (norm weights, biases), as timm's and Swin's no_weight_decay lists do
NO_DECAY_NAMES = ("relative_position_bias_table", "absolute_pos_embed", "pos_embed", "cls_token")


@dataclass(frozen=True)
class Recipe:
    name: str  # the family (an architecture name) or "shared"
    optimizer: str  # "adamw" | "sgd"
    lr: float
    weight_decay: float
    schedule: str  # "cosine" | "poly"
    source: str  # where the values come from, and what segbench changed
    momentum: float = 0.9  # SGD
    nesterov: bool = False  # SGD
    betas: tuple[float, float] = (0.9, 0.999)  # AdamW
    poly_power: float = 0.9
    warmup_fraction: float = WARMUP_FRACTION  # of all steps
    grad_clip_norm: float | None = None
    decay_norm_and_bias: bool = True  # False: no weight decay on NO_DECAY_NAMES and 1-D params

    def __post_init__(self) -> None:
        if self.optimizer not in OPTIMIZERS or self.schedule not in SCHEDULES:
            raise ValueError(f"recipe {self.name!r}: optimizer must be one of {OPTIMIZERS} and "
                             f"schedule one of {SCHEDULES}")
        if self.lr <= 0 or self.weight_decay < 0 or not 0 <= self.warmup_fraction < 1:
            raise ValueError(f"recipe {self.name!r}: need lr > 0, weight_decay >= 0 and "
                             "0 <= warmup_fraction < 1")

    def warmup_steps(self, total_steps: int) -> int:
        return round(self.warmup_fraction * total_steps)

    def lr_factor(self, step: int, total_steps: int) -> float:
        """The learning rate of optimizer step `step` (from 0) as a fraction of `lr`."""
        warmup = self.warmup_steps(total_steps)
        ramp = (step + 1) / warmup if step < warmup else 1.0
        progress = min(step / total_steps, 1.0)
        if self.schedule == "cosine":
            return ramp * 0.5 * (1.0 + math.cos(math.pi * progress))
        return ramp * (1.0 - progress) ** self.poly_power

    def describe(self) -> str:
        """One line for table headers: 'SGD lr 0.01 wd 0.0001 momentum 0.9, poly 0.9, ...'."""
        if self.optimizer == "sgd":
            head = (f"SGD{' (Nesterov)' if self.nesterov else ''} lr {self.lr:g} "
                    f"wd {self.weight_decay:g} momentum {self.momentum:g}")
        else:
            head = (f"AdamW lr {self.lr:g} wd {self.weight_decay:g} "
                    f"betas ({self.betas[0]:g}, {self.betas[1]:g})")
        schedule = "cosine" if self.schedule == "cosine" else f"poly {self.poly_power:g}"
        warmup = (f"{self.warmup_fraction:.0%} linear warm-up" if self.warmup_fraction
                  else "no warm-up")
        clip = f", grad norm clipped at {self.grad_clip_norm:g}" if self.grad_clip_norm else ""
        return f"{head}, {schedule}, {warmup}{clip}"

    def to_json(self) -> dict:
        return {**asdict(self), "betas": list(self.betas), "description": self.describe()}


def _sgd_poly(name: str, lr: float, weight_decay: float, source: str, **kw) -> Recipe:
    return Recipe(name, "sgd", lr, weight_decay, "poly", source, **kw)


_TRANSFORMER = dict(optimizer="adamw", lr=6e-5, weight_decay=0.01, schedule="poly",
                    poly_power=1.0, decay_norm_and_bias=False)
_TRANSFORMER_ADAPTED = ("segbench: warm-up 5% of the steps instead of 1500 of 160k iterations, "
                        "no 10x head learning rate, trained from scratch")

FAMILY_RECIPES: dict[str, Recipe] = {
    "fcn": _sgd_poly(
        "fcn", 0.01, 1e-4,
        "torchvision references/segmentation, fcn_resnet50 (SGD momentum 0.9, weight decay "
        "1e-4, poly 0.9; lr 0.02 at batch 32, halved for batch 16). The FCN paper's fixed lr "
        "1e-4 is for a loss summed over pixels, not transferable to a mean loss"),
    "unet": _sgd_poly(
        "unet", 0.01, 3e-5,
        "nnU-Net (Isensee et al., Nature Methods 2021): SGD Nesterov momentum 0.99, lr 0.01, "
        "weight decay 3e-5, poly 0.9, gradient norm clipped at 12; segbench adds the 5% "
        "warm-up (nnU-Net has none)",
        momentum=0.99, nesterov=True, grad_clip_norm=12.0),
    "segnet": _sgd_poly(
        "segnet", 0.1, 5e-4,
        "SegNet (Badrinarayanan et al., TPAMI 2017): SGD lr 0.1, momentum 0.9; weight decay "
        "5e-4 from the VGG-16 training its encoder follows (the paper states none); "
        "segbench: poly 0.9 instead of the paper's fixed lr"),
    "deeplabv1": _sgd_poly(
        "deeplabv1", 1e-3, 5e-4,
        "DeepLab v1 (Chen et al., ICLR 2015): SGD lr 0.001, momentum 0.9, weight decay 5e-4; "
        "segbench: poly 0.9 (DeepLab v2's schedule) instead of x0.1 every 2000 iterations, "
        "no 10x classifier lr"),
    "deeplabv2": _sgd_poly(
        "deeplabv2", 2.5e-4, 5e-4,
        "DeepLab v2 ResNet-101 (Chen et al., TPAMI 2018; its released Caffe solver): SGD lr "
        "2.5e-4, momentum 0.9, weight decay 5e-4, poly 0.9; segbench: no 10x classifier lr"),
    "deeplabv3": _sgd_poly(
        "deeplabv3", 0.007, 1e-4,
        "DeepLab v3 (Chen et al., 2017): SGD lr 0.007 at batch 16, momentum 0.9, poly 0.9; "
        "weight decay 1e-4 as torchvision's reference recipe for deeplabv3_resnet50/101"),
    "deeplabv3plus": _sgd_poly(
        "deeplabv3plus", 0.007, 1e-4,
        "DeepLab v3+ (Chen et al., ECCV 2018), trained as DeepLab v3: SGD lr 0.007 at batch "
        "16, momentum 0.9, poly 0.9; weight decay 1e-4 as torchvision's reference recipe"),
    "pspnet": _sgd_poly(
        "pspnet", 0.01, 1e-4,
        "PSPNet (Zhao et al., CVPR 2017): SGD lr 0.01 at batch 16, momentum 0.9, weight decay "
        "1e-4, poly 0.9, auxiliary loss 0.4"),
    "segformer": Recipe(
        "segformer", source="SegFormer (Xie et al., NeurIPS 2021) and its mmseg config: AdamW "
        "lr 6e-5, weight decay 0.01, poly 1.0, no decay on norms and biases; "
        + _TRANSFORMER_ADAPTED, **_TRANSFORMER),
    "swin": Recipe(
        "swin", source="Swin + UPerNet (Liu et al., ICCV 2021): AdamW lr 6e-5, weight decay "
        "0.01, betas (0.9, 0.999), linear warm-up then linear decay (poly 1.0), no decay on "
        "norms, biases and relative position tables; " + _TRANSFORMER_ADAPTED, **_TRANSFORMER),
    "vit": Recipe(
        "vit", source="segbench's choice: SegFormer's AdamW recipe (lr 6e-5, weight decay "
        "0.01, poly 1.0, no decay on norms, biases, position embedding and class token), "
        "because SETR's SGD recipe fine-tunes a pretrained ViT-L; " + _TRANSFORMER_ADAPTED,
        **_TRANSFORMER),
}


def shared_recipe(profile: Profile) -> Recipe:
    return Recipe("shared", "adamw", profile.lr, profile.weight_decay, "cosine",
                  f"segbench's single recipe for every architecture: the {profile.name} "
                  "profile's AdamW lr and weight decay, cosine to 0, no warm-up",
                  warmup_fraction=0.0)


def recipe_for(arch: str, recipe: str, profile: Profile) -> Recipe:
    """The recipe named `recipe` ("family" or "shared") for an architecture."""
    if recipe == "shared":
        return shared_recipe(profile)
    if recipe != "family":
        raise ValueError(f"unknown recipe {recipe!r}; expected one of {', '.join(RECIPES)}")
    if arch not in FAMILY_RECIPES:
        raise ValueError(f"architecture {arch!r} has no family recipe; known: "
                         f"{', '.join(FAMILY_RECIPES)}")
    return FAMILY_RECIPES[arch]


def with_lr(recipe: Recipe, lr: float) -> Recipe:
    return replace(recipe, lr=lr)
