"""Any-Precision DNNs (Yu et al., AAAI 2021): shared latent weights, DoReFa quantizers, switchable BN.

Follows baselines.md and the authors' release (SHI-Labs/Any-Precision-DNNs, ``models/quan_ops.py``):
- weights at b bits: ``t = tanh(w)``, ``t = t / 2 / max|t| + 0.5``, ``q = 2*round((2^b-1)*t)/(2^b-1) - 1``,
  times ``E = mean|w|`` (detached); STE through the rounding (``suite.quant.discretize``).
- input activations at b bits: ``clamp(x, 0, 1)`` then ``round((2^b-1)*x)/(2^b-1)``, STE.
- 32 bits (full precision, when listed): no rounding anywhere. As in the release, the weights still go through
  the DoReFa transform without rounding, ``tanh(w) / max|tanh(w)| * E`` (so the b-bit weights approximate
  the FP path's, and the FP path shares the same latent weights), and the activations are not clamped (the
  release's ReLU; the suite's body convs already receive post-ReLU inputs, so they pass unchanged).
- one BatchNorm per listed bit-width (``PerBitBatchNorm``), nothing else per bit-width; no quantizer
  parameters (the trainer then runs SGD only), no initialisation pass (kaiming weights as the model sets).
- ``distillation``: ``recursive`` (the paper's: highest bit on labels, each lower one soft-CE against the
  next higher's detached softmax) -> trainer policy ``recursive``; ``hard`` (CE on labels for every
  bit-width) -> ``none``; ``soft`` (highest bit as teacher) -> ``inplace``. Note the suite's ``inplace`` is
  ``0.5*(softCE + CE)``, whereas the release's commented-out soft variant is soft-CE alone.
- These need the largest bit-width run first, so with ``recursive``/``soft`` the list must be ascending
  (the release sorts it); the trainer runs it in reverse.

Suite conventions that differ from the release: the suite's single-branch models (on CIFAR the standard
post-activation ResNet-20, not the 5x-wide pre-activation one; ResNet-18 / MobileNetV1 on ImageNet) with FP
stem and classifier, its 1x1 shortcut convs quantized (the release keeps its
stride-2 shortcut conv FP) and its stem BN shared by all bit-widths.

Storage: the shared latent weights at FP32. The paper serves lower bit-widths by truncating the stored
codes' least significant bits, but the released quantizer (the one trained and evaluated) rounds the latent
weights onto each ``2^b - 1``-step grid; those grids are not nested in general (3 does not divide 255) and
re-rounding stored 8-bit values is not the same as rounding the latent weights (double rounding), so the
evaluated b-bit weights can only be reproduced from the FP32 weights. Plus FP32 stem, classifier and one BN
per bit-width.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import Literal

import torch
from torch import nn

from suite.costs import FP_BITS, SameBitsCost
from suite.methods.common import PerBitBatchNorm, check_bit_list
from suite.methods.storage import stored_bits
from suite.quant import discretize

POLICIES = {"recursive": "recursive", "hard": "none", "soft": "inplace"}


class DoReFaConv(SameBitsCost, nn.Conv2d):
    """Conv with DoReFa weights (mean-|w| scale) and ``clamp(x, 0, 1)`` activations at ``active_bits``."""

    def __init__(self, ci: int, co: int, kernel_size: int, stride: int = 1, padding: int = 0, groups: int = 1):
        super().__init__(ci, co, kernel_size, stride, padding, groups=groups, bias=False)
        self.active_bits: int | None = None

    def quantized_weight(self) -> torch.Tensor:
        """The weight this conv multiplies with at ``active_bits`` (the release's order of operations)."""
        scale = self.weight.abs().mean().detach()
        t = torch.tanh(self.weight)
        if self.active_bits == FP_BITS:
            return t / t.abs().max() * scale
        t = t / 2 / t.abs().max() + 0.5
        return (2 * discretize(t, 2**self.active_bits) - 1) * scale

    def quantized_input(self, x: torch.Tensor) -> torch.Tensor:
        """The input this conv multiplies with at ``active_bits``: ``clamp(x, 0, 1)`` on 2^b levels."""
        return x if self.active_bits == FP_BITS else discretize(torch.clamp(x, 0, 1), 2**self.active_bits)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._conv_forward(self.quantized_input(x), self.quantized_weight(), None)


@dataclass
class Options:
    """Any-Precision's manifest options (``method.options``)."""

    __pydantic_config__ = {"extra": "forbid"}
    distillation: Literal["recursive", "hard", "soft"] = "recursive"


def check_bits(bits: list[int], options: Options) -> None:
    check_bit_list(bits, "any-precision")
    if options.distillation != "hard" and list(bits) != sorted(bits):
        raise ValueError(
            f"any-precision with {options.distillation} distillation needs an ascending bit list (the highest "
            f"bit-width teaches and is run first), got {bits}"
        )


def storage_bits(model: nn.Module) -> dict[str, int]:
    """FP32 latent body weights (see the module docstring), FP32 stem / classifier / every bit-width's BN."""
    return stored_bits(model, lambda conv: FP_BITS)


def build(arch: str, num_classes: int, bits: list[int], options: Options):
    from suite.models import create_model
    from suite.trainer import Trainable

    check_bits(bits, options)
    model = create_model(arch, num_classes=num_classes, bits=bits, conv=DoReFaConv,
                         norm=partial(PerBitBatchNorm, bits=bits))
    return Trainable(model=model, bits=list(bits), quantizer_params=[], loss_policy=POLICIES[options.distillation])
