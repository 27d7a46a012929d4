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
from torch import nn
from torch.autograd.function import once_differentiable

from suite.layers.base import FP_BITS, SingleBranchConv
from suite.layers.quant import activation_bounds, in_float32, round_to_levels_, scale_gradient, tanh_max, \
    tanh_max_backward


def _nested_grid_(x: torch.Tensor, bits: int, centered: bool) -> torch.Tensor:
    """In place on ``x`` (owned by the caller): ``(clamp(floor(2^b*x), 0, 2^b-1) [+ 1/2]) / 2^b``."""
    levels = 2**bits
    code = x.mul_(levels).floor_().clamp_(0, levels - 1)
    return (code.add_(0.5) if centered else code).div_(levels)


class _NestedGridSTE(torch.autograd.Function):
    """``(clamp(floor(2^b*x), 0, 2^b-1) [+ 1/2]) / 2^b`` forward, identity backward."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, bits: int, centered: bool) -> torch.Tensor:
        return _nested_grid_(x.clone(), bits, centered)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return grad, None, None


def nested_grid(x: torch.Tensor, bits: int, grid: str) -> torch.Tensor:
    """Snap ``x`` in [0, 1] onto AdaBits' b-bit ``modified`` or ``centered`` grid (straight-through)."""
    return _NestedGridSTE.apply(in_float32(x), bits, grid == "centered")


class _AdaBitsWeight(torch.autograd.Function):
    """``q = t / max|t|`` (``t = tanh(w)``), at b bits ``2 * grid((q + 1) / 2) - 1``, times the detached rescale
    ``1 / sqrt(fan_out) / std(q)``. Backward: the rescale, then straight through the grid (its ``* 2`` and ``/ 2``
    cancel exactly), then ``tanh_max_backward``."""

    @staticmethod
    def forward(ctx, w: torch.Tensor, bits: int, centered: bool, fan_out: int) -> torch.Tensor:
        t, m = tanh_max(w)
        q = t / m
        if bits != FP_BITS:
            q = _nested_grid_(q.add_(1).div_(2), bits, centered).mul_(2).sub_(1)
        rescale = 1 / math.sqrt(fan_out) / q.std()
        ctx.save_for_backward(t, m, rescale)
        return q.mul_(rescale)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: torch.Tensor):
        t, m, rescale = ctx.saved_tensors
        return tanh_max_backward(grad * rescale, t, m, halve=False), None, None, None


class _PACT(torch.autograd.Function):
    """``round((2^b-1) * where(r < alpha, r, alpha) / alpha) / (2^b-1) * alpha`` with ``r = relu(x)``.

    Backward of that graph (rounding straight-through): ``dx = (g * alpha) / alpha`` where ``0 < x < alpha``
    (else 0); ``dalpha = sum(g * q) - sum over 0 < x < alpha of g * x / alpha`` (the clipped elements' terms
    through the clip and through ``/ alpha`` cancel), i.e. ``(sum(g * out) - sum(dx * x)) / alpha``.
    Saves ``x`` and the output (alive anyway); the backward allocates one tensor, ``dx``.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, alpha: torch.Tensor, levels: int) -> torch.Tensor:
        # relu(where(x < alpha, x, alpha)) = where(relu(x) < alpha, relu(x), alpha) for alpha >= 0, NaN included
        clipped = torch.where(x < alpha, x, alpha).relu_()
        out = round_to_levels_(clipped.div_(alpha), levels).mul_(alpha)
        ctx.save_for_backward(x, alpha, out)
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: torch.Tensor):
        x, alpha, out = ctx.saved_tensors
        # min(x, alpha) / alpha < 1 exactly where x < alpha (a NaN x: inf, blocked like the where blocks it)
        buf = torch.clamp(x, max=alpha).nan_to_num_(nan=math.inf).div_(alpha)
        torch.ops.aten.hardtanh_backward.grad_input(grad, buf, -math.inf, 1, grad_input=buf)  # where's backward
        torch.ops.aten.threshold_backward.grad_input(buf, x, 0, grad_input=buf)  # relu's backward: x > 0
        grad_x = buf.mul_(alpha).div_(alpha)  # autograd's (g * alpha) / alpha; zeros stay zero (alpha > 0)
        grad_alpha = scale_gradient(grad, out, grad_x, x, alpha) if ctx.needs_input_grad[1] else None
        return grad_x, grad_alpha, None


def pact_quantize(x: torch.Tensor, alpha: torch.Tensor, bits: int) -> torch.Tensor:
    """AdaBits' activation quantizer at clipping level ``alpha`` (>= 0) onto ``2**bits`` levels."""
    return _PACT.apply(in_float32(x), alpha, 2**bits)


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
        fan_out = self.out_channels // self.groups * self.kernel_size[0] * self.kernel_size[1]
        return _AdaBitsWeight.apply(self.weight, bits, self.grid == "centered", fan_out)

    def _input_at(self, x: torch.Tensor, bits: int) -> torch.Tensor:
        if bits == FP_BITS:
            return x
        return pact_quantize(x, self.alpha[str(bits)].abs(), bits)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.calibrating and self.active_bits != FP_BITS:
            self.alpha[str(self.active_bits)].copy_(activation_bounds(x)[1])
        return super().forward(x)
