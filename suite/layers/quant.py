"""Quantization math shared by every method: a straight-through rounding and learnable-bound quantizers.

Operations are written in exactly the order of MBQuant's released implementation (divide by ``u - l``, never
multiply by a reciprocal; ``torch.round`` rounds half to even) so that the suite reproduces it bit for bit.
"""
from __future__ import annotations

import math

import torch


class _RoundSTE(torch.autograd.Function):
    """``round(x * (levels - 1)) / (levels - 1)`` forward, identity backward (straight-through estimator).

    A custom Function rather than ``x + (round(x) - x).detach()``: the latter is not bitwise equal to the
    rounded value in floating point.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, levels: int) -> torch.Tensor:
        return torch.round(x * (levels - 1)) / (levels - 1)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return grad, None


def discretize(x: torch.Tensor, levels: int) -> torch.Tensor:
    """Snap ``x`` in [0, 1] onto ``levels`` evenly spaced values; gradients pass straight through."""
    return _RoundSTE.apply(x, levels)


def quantize_weight(w: torch.Tensor, lower: torch.Tensor, upper: torch.Tensor, levels: int = 4) -> torch.Tensor:
    """Learnable-bound weight quantizer: values in {-1, ..., 1} on ``levels`` points, no scale multiplied back.

    ``lower``/``upper`` broadcast against ``w`` (one pair per branch slot). The BN after the conv absorbs the
    missing scale, which is why MBQuant never rescales.
    """
    unit = torch.clamp((w - lower) / (upper - lower), 0, 1)
    return 2 * (discretize(unit, levels) - 0.5)


def quantize_activation(x: torch.Tensor, lower: torch.Tensor, upper: torch.Tensor, bits: int) -> torch.Tensor:
    """Learnable-bound activation quantizer onto ``2**bits`` levels in [0, 1] (not rescaled)."""
    unit = torch.clamp((x - lower) / (upper - lower), 0, 1)
    return discretize(unit, 2**bits)


# Calibration constants of the release's quantizer initialisation. For a half-normal variable (post-ReLU
# activations) std = sigma * sqrt(1 - 2/pi); dividing by it recovers sigma, and 3 sigma bounds ~99.7 %.
HALF_NORMAL_STD = math.sqrt(1 - 2 / math.pi)


def activation_bounds(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Initial (lower, upper) for an activation chunk: (min, 3*std/sqrt(1-2/pi)), unbiased std over all values.

    Evaluated as ``std / c * 3``, the release's order: ``3 * std / c`` differs in the last bit for ~40 % of inputs.
    """
    return x.min(), x.std() / HALF_NORMAL_STD * 3.0


def weight_bound(w: torch.Tensor) -> torch.Tensor:
    """Initial symmetric weight bound 3*std (the quantizer uses [-bound, bound])."""
    return w.std() * 3.0
