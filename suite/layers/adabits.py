"""AdaBits' quantized conv (Jin et al., CVPR 2020; the release's ``models/quant_ops.py``, CIFAR config):
weights on a nested grid, PACT activations with one clipping level per bit-width (baselines.md).

- weights at b bits: ``x = (tanh(w)/max|tanh(w)| + 1)/2`` in [0, 1]; code ``k = clamp(floor(2^b*x), 0, 2^b-1)``;
  value ``k/2^b`` (``modified``, the paper's and the release's default) or ``(k+1/2)/2^b`` (``centered``);
  mapped by ``2v-1`` to [-1, 1]; straight-through over the whole grid step (the release's ``q_k``). For both
  grids the b-bit code is the 8-bit code without its ``8-b`` least significant bits.
- rescaling (``rescale_conv: True, rescale_type: constant``): the quantized weight times
  ``(1/sqrt(fan_out)) / std(q)`` with ``std(q)`` detached, the std of a fan-out kaiming init; He's fan-out of a
  depthwise conv is k*k. The scale depends only on the quantized values, so it needs no stored scalar.
- input activations at b bits, PACT with a switchable clipping level: ``alpha = |alpha_b|``, ``x = relu(x)``,
  ``x = where(x < alpha, x, alpha)``, ``round((2^b-1)*x/alpha)/(2^b-1) * alpha`` (straight-through).
- 32 bits: ``tanh(w)/max|tanh(w)|`` rescaled the same way, activations unchanged, no alpha.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from suite.layers.base import FP_BITS, SingleBranchConv
from suite.layers.quant import activation_bounds, discretize


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


class AdaBitsConv(SingleBranchConv):
    """``alpha_init``: ``"calibrate"`` (``calibrate`` sets each alpha_b from data) or a starting constant."""

    def __init__(self, ci: int, co: int, kernel_size: int, stride: int = 1, padding: int = 0, groups: int = 1, *,
                 bits: list[int], grid: str, alpha_init: float | str):
        super().__init__(ci, co, kernel_size, stride, padding, groups)
        self.grid = grid
        start = 1.0 if alpha_init == "calibrate" else float(alpha_init)  # "calibrate" overwrites it
        self.alpha = nn.ParameterDict({str(b): nn.Parameter(torch.tensor(start)) for b in bits if b != FP_BITS})
        self.calibrating = False

    def _weight_at(self, bits: int) -> torch.Tensor:
        t = torch.tanh(self.weight)
        q = t / t.abs().max()
        if bits != FP_BITS:
            q = 2 * nested_grid((q + 1) / 2, bits, self.grid) - 1
        fan_out = self.out_channels // self.groups * self.kernel_size[0] * self.kernel_size[1]
        return q * (1 / math.sqrt(fan_out) / q.detach().std())

    def _input_at(self, x: torch.Tensor, bits: int) -> torch.Tensor:
        if bits == FP_BITS:
            return x
        alpha = self.alpha[str(bits)].abs()
        x = F.relu(x)
        return discretize(torch.where(x < alpha, x, alpha) / alpha, 2**bits) * alpha

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.calibrating and self.active_bits != FP_BITS:
            self.alpha[str(self.active_bits)].copy_(activation_bounds(x)[1])
        return super().forward(x)
