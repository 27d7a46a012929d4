"""Any-Precision's quantized conv (Yu et al., AAAI 2021; the release's ``models/quan_ops.py``): DoReFa weights
scaled by mean|w|, ``clamp(x, 0, 1)`` activations, straight-through rounding (baselines.md).

- weights at b bits: ``t = tanh(w)``, ``t = t / 2 / max|t| + 0.5``, ``q = 2*round((2^b-1)*t)/(2^b-1) - 1``,
  times ``E = mean|w|`` (detached);
- input activations at b bits: ``clamp(x, 0, 1)`` then ``round((2^b-1)*x)/(2^b-1)``;
- 32 bits: no rounding anywhere; the weights still go through the DoReFa transform,
  ``tanh(w) / max|tanh(w)| * E``, and the activations are not clamped, as in the release.
"""
from __future__ import annotations

import torch
from torch.autograd.function import once_differentiable

from suite.layers.base import FP_BITS, SingleBranchConv
from suite.layers.quant import clamp_discretize, round_to_levels_, tanh_max, tanh_max_backward


class _DoReFaWeight(torch.autograd.Function):
    """The release's weight quantizer in its order of operations; ``E = mean|w|`` carries no gradient.

    Backward: ``d(out)/d(q) = 2 * E`` (rounding straight-through; ``E`` alone at 32 bits), then through
    ``t / 2 / max|t|`` (``t / max|t|``) and the tanh (``tanh_max_backward``).
    """

    @staticmethod
    def forward(ctx, w: torch.Tensor, bits: int) -> torch.Tensor:
        scale = w.abs().mean()
        t, m = tanh_max(w)
        ctx.bits = bits
        ctx.save_for_backward(t, m, scale)
        if bits == FP_BITS:
            return (t / m).mul_(scale)
        q = round_to_levels_((t / 2).div_(m).add_(0.5), 2**bits)
        return q.mul_(2).sub_(1).mul_(scale)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: torch.Tensor):
        t, m, scale = ctx.saved_tensors
        quantized = ctx.bits != FP_BITS
        g = grad * scale
        if quantized:
            g.mul_(2)
        return tanh_max_backward(g, t, m, halve=quantized), None


class DoReFaConv(SingleBranchConv):
    def _weight_at(self, bits: int) -> torch.Tensor:
        return _DoReFaWeight.apply(self.weight, bits)

    def _input_at(self, x: torch.Tensor, bits: int) -> torch.Tensor:
        return x if bits == FP_BITS else clamp_discretize(x, 2**bits)
