"""A conv at one fixed bit-width with MBQuant's learnable-bound quantizers: the dedicated per-bit models' layer.

Weights onto ``2**b`` levels in [-1, 1] between one learnable (lower, upper) pair, input activations onto
``2**b`` levels in [0, 1] between another; no scale multiplied back (the BN absorbs it). At 1 bit the weights
are {-1, 1} and the activations {0, 1}; at 32 bits it is a plain conv without quantizer parameters.
"""
from __future__ import annotations

import torch
from torch import nn

from suite.layers.base import FP_BITS, SingleBranchConv
from suite.layers.quant import activation_bounds, quantize_activation, quantize_weight, weight_bound

BOUND_NAMES = ("w_lower", "w_upper", "a_lower", "a_upper")


class LearnedBoundsConv(SingleBranchConv):
    """``active_bits`` is this conv's model's bit-width and never changes (a wrapper routes between models)."""

    def __init__(self, ci: int, co: int, kernel_size: int, stride: int = 1, padding: int = 0, groups: int = 1, *,
                 bits: int):
        super().__init__(ci, co, kernel_size, stride, padding, groups)
        self.active_bits = bits
        self.calibrating = False  # set by ``calibrate``: the next forward sets the bounds from its input
        if bits != FP_BITS:
            for name in BOUND_NAMES:
                setattr(self, name, nn.Parameter(torch.zeros(())))

    def _check(self, bits: int) -> None:
        if bits != self.active_bits:
            raise ValueError(f"this conv serves {self.active_bits} bits only, not {bits}")

    def _weight_at(self, bits: int) -> torch.Tensor:
        self._check(bits)
        return self.weight if bits == FP_BITS else quantize_weight(self.weight, self.w_lower, self.w_upper, 2**bits)

    def _input_at(self, x: torch.Tensor, bits: int) -> torch.Tensor:
        self._check(bits)
        return x if bits == FP_BITS else quantize_activation(x, self.a_lower, self.a_upper, bits)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.calibrating and self.active_bits != FP_BITS:
            lower, upper = activation_bounds(x)
            self.a_lower.copy_(lower), self.a_upper.copy_(upper)
            self.w_upper.copy_(weight_bound(self.weight)), self.w_lower.copy_(-weight_bound(self.weight))
        return super().forward(x)
