"""AdaBits (Jin et al., CVPR 2020): shared weights on a nested grid, switchable BN and clipping level.

Follows baselines.md and the authors' release (deJQK/AdaBits, ``models/quant_ops.py`` with the CIFAR config
``apps/cifar10/q_resnet_uint8_train_val.yml``):
- weights at b bits: ``x = (tanh(w)/max|tanh(w)| + 1)/2`` in [0, 1]; code ``k = clamp(floor(2^b*x), 0, 2^b-1)``;
  value ``k/2^b`` ("modified": the paper's and the release's default, and ours) or ``(k+1/2)/2^b``
  ("centered"); mapped by ``2v-1`` to [-1, 1]; STE through the whole grid step (the release's ``q_k``).
  Nested: for both grids the b-bit code is the 8-bit code without its ``8-b`` least significant bits; as
  values, the modified grids are nested (b-bit values are (b+1)-bit values), the centered ones are not
  (they are disjoint). The modified grid is not zero-mean ({-1, -1/2, 0, 1/2} at 2 bits, {-1, 0} at 1 bit;
  most normalised weights lie near 0, so at 2 bits the positive ones collapse to 0): the authors' README
  now recommends the centered grid "for convergent training", and on the synthetic test the modified grid
  learns much slower at <= 2 bits.
- rescaling (the release's CIFAR setting ``rescale_conv: True, rescale_type: constant``): the quantized
  weight is multiplied by ``(1/sqrt(co/groups*k*k)) / std(q)`` with ``std(q)`` detached, i.e. scaled to the
  std of a fan-out kaiming init (a depthwise conv's fan-out is k*k: the release's CIFAR models have none). The scale depends only on the quantized values, so it needs no stored scalar.
  (The README lists ``rescale_conv=False`` for its ImageNet model zoo; the CIFAR config, followed here, sets
  it; the BN after every conv absorbs the scale either way at inference.)
- input activations at b bits, PACT with one clipping level per bit-width ("switchable clipping level",
  the release's ``switch_alpha: True``): ``alpha = |alpha_b|``, ``x = relu(x)``, ``x = where(x < alpha, x, alpha)``,
  ``round((2^b-1)*x/alpha)/(2^b-1) * alpha`` (the release's "original" activation grid, STE).
- ``alpha_init``: ``"calibrate"`` (default): before training, one train-mode forward per bit-width (listed
  order, a new batch each, ``no_grad``) sets ``alpha_b = 3*std/sqrt(1-2/pi)`` of each conv's input, MBQuant's
  upper activation bound and initialisation pass; or a number, e.g. 8.0, the release's constant for convs
  (its CIFAR config trains 3-5 bits from scratch; the paper starts from an FP model). Not the default: from
  scratch at 2 bits, alpha = 8 zeroes most post-BN activations and alpha runs away (alpha_2: 8 -> 135 in
  16 SGD steps at lr 0.05 on the synthetic test of tests/test_baselines.py), while at 4-8 bits it trains fine.
- alpha is optimised with the weights by the trainer's SGD (lr, momentum and the suite's uniform weight
  decay), not by the quantizer Adam: the paper and release train it with the weights' SGD (the release
  exempts 1-D tensors from weight decay, PACT regularises alpha with L2; the suite's trainer applies its
  one weight decay to every SGD parameter). Adam at the quantizer lr (1e-4) would move alpha by ~1e-4 a step.
  So ``quantizer_params`` is empty. Gradients reach alpha through the clip and through the ``/alpha`` and
  ``*alpha`` around the rounding (STE), as in the release's autograd graph.
- 32 bits (full precision, when listed): ``tanh(w)/max|tanh(w)|`` rescaled the same way, activations
  unchanged, no alpha (the release's ``bitw == 32`` path without ``pact_fp``).
- one BatchNorm per listed bit-width; loss: CE on labels for every bit-width, summed (policy ``none``).

Suite conventions that differ from the release: FP stem conv and classifier (the release quantizes their
weights at the highest bit-width), the stem BN shared by all bit-widths, inputs normalised (the release feeds
0..255 pixels), training from scratch (the paper starts from an FP model), the suite's recipe.

Storage: if 32 is listed, the FP32 latent weights; otherwise only the highest bit-width's codes (lower
bit-widths drop least significant bits, the scale is recomputed from the codes), i.e. ``max(bits)`` bits per
body weight. Plus FP32 stem, classifier, one BN and (for b < 32) one alpha per bit-width and conv.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from functools import partial
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from suite.costs import FP_BITS, SameBitsCost
from suite.methods.common import PerBitBatchNorm, calibrate, check_bit_list
from suite.methods.storage import stored_bits
from suite.quant import activation_bounds, discretize


class _NestedGridSTE(torch.autograd.Function):
    """``(clamp(floor(2^b*x), 0, 2^b-1) [+ 1/2]) / 2^b`` forward, identity backward."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, bits: int, centered: bool) -> torch.Tensor:
        levels = 2**bits
        code = torch.floor(levels * x).clamp_(0, levels - 1)
        return (code + 0.5 if centered else code) / levels

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return grad, None, None


def nested_grid(x: torch.Tensor, bits: int, grid: str) -> torch.Tensor:
    """Snap ``x`` in [0, 1] onto AdaBits' b-bit ``modified`` or ``centered`` grid (straight-through)."""
    return _NestedGridSTE.apply(x, bits, grid == "centered")


class AdaBitsConv(SameBitsCost, nn.Conv2d):
    """Conv with nested-grid weights and PACT activations with one clipping level per bit-width."""

    def __init__(self, ci: int, co: int, kernel_size: int, stride: int = 1, padding: int = 0, groups: int = 1, *,
                 bits: list[int], grid: str, alpha_init: float | str):
        super().__init__(ci, co, kernel_size, stride, padding, groups=groups, bias=False)
        self.grid = grid
        start = 1.0 if alpha_init == "calibrate" else float(alpha_init)  # "calibrate" overwrites it
        self.alpha = nn.ParameterDict({str(b): nn.Parameter(torch.tensor(start)) for b in bits if b != FP_BITS})
        self.active_bits: int | None = None
        self.calibrating = False

    def quantized_weight(self) -> torch.Tensor:
        """The weight this conv multiplies with at ``active_bits``."""
        t = torch.tanh(self.weight)
        q = t / t.abs().max()
        if self.active_bits != FP_BITS:
            q = 2 * nested_grid((q + 1) / 2, self.active_bits, self.grid) - 1
        # He et al.'s fan-out (connections per input element): a depthwise conv has k*k of them, not co*k*k.
        fan_out = self.out_channels // self.groups * self.kernel_size[0] * self.kernel_size[1]
        return q * (1 / math.sqrt(fan_out) / q.detach().std())

    def quantized_input(self, x: torch.Tensor) -> torch.Tensor:
        """PACT at ``active_bits``: ``clip(relu(x), 0, alpha_b)`` on 2^b levels, scaled back by alpha_b."""
        b = self.active_bits
        if b == FP_BITS:
            return x
        alpha = self.alpha[str(b)].abs()
        x = F.relu(x)
        return discretize(torch.where(x < alpha, x, alpha) / alpha, 2**b) * alpha

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.calibrating and self.active_bits != FP_BITS:
            self.alpha[str(self.active_bits)].copy_(activation_bounds(x)[1])
        return self._conv_forward(self.quantized_input(x), self.quantized_weight(), None)


@dataclass
class Options:
    """AdaBits' manifest options (``method.options``)."""

    __pydantic_config__ = {"extra": "forbid"}
    grid: Literal["modified", "centered"] = "modified"
    alpha_init: Literal["calibrate"] | float = "calibrate"


def check_bits(bits: list[int], options: Options) -> None:
    check_bit_list(bits, "adabits")
    if options.alpha_init != "calibrate" and not options.alpha_init > 0:
        raise ValueError(f"adabits: alpha_init must be positive or 'calibrate', got {options.alpha_init}")


def stored_weight_bits(bits: list[int]) -> int:
    """FP32 latent weights if full precision is served, else the highest bit-width's codes."""
    return FP_BITS if FP_BITS in bits else max(bits)


def storage_bits(model: nn.Module) -> dict[str, int]:
    return stored_bits(model, lambda conv: stored_weight_bits(model.bits))


def build(arch: str, num_classes: int, bits: list[int], options: Options):
    from suite.models import create_model
    from suite.trainer import Trainable

    check_bits(bits, options)
    model = create_model(
        arch, num_classes=num_classes, bits=bits,
        conv=partial(AdaBitsConv, bits=bits, grid=options.grid, alpha_init=options.alpha_init),
        norm=partial(PerBitBatchNorm, bits=bits),
    )
    calibrating = options.alpha_init == "calibrate"
    return Trainable(
        model=model, bits=list(bits), quantizer_params=[], loss_policy="none",
        initialize=(lambda m, batches: calibrate(m, bits, batches)) if calibrating else None,
    )
