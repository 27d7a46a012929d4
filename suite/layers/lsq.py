"""Bit-Mixer's layers (Bulat & Tzimiropoulos, ICCV 2021): an LSQ-quantized conv with one step pair per bit-width,
and the transitional BatchNorm indexed by (previous layer's bit-width -> this layer's bit-width).

LSQ (Esser et al. 2020): per layer and bit-width one learnable scalar step for the weights (signed grid,
Q_n = 2^(b-1), Q_p = 2^(b-1) - 1) and one for the input activations (unsigned grid, Q_n = 0, Q_p = 2^b - 1:
every body conv reads a post-ReLU tensor); forward ``round(clamp(v/s, -Q_n, Q_p)) * s`` (half to even,
straight-through), step gradients scaled by g = 1/sqrt(N * Q_p). Steps start at 0, "not initialised"; a step
is initialised to 2 * mean|v| / sqrt(Q_p) (floor 1e-8) by calibration or lazily on its first train-mode
forward, so an uncalibrated model evaluates to NaN rather than to a silently wrong network.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import nn
from torch.autograd.function import once_differentiable

from suite.layers.base import FP_BITS, SingleBranchConv
from suite.layers.quant import clamp_backward, in_float32, round_to_levels_, scale_gradient

STEP_FLOOR = 1e-8
STEP_NAMES = ("w_step", "a_step")


def grad_scale(x: torch.Tensor, scale: float) -> torch.Tensor:
    """Value of ``x``, gradient multiplied by ``scale`` (LSQ's step-size gradient scaling)."""
    y = x * scale
    return (x - y).detach() + y


class _LSQ(torch.autograd.Function):
    """``(discretize((clamp(v / s, -qn, qp) + qn) / span, span + 1) * span - qn) * s``, ``span = qn + qp``.

    Backward of that graph (rounding straight-through), with ``g`` the incoming gradient:
    ``dv = ((g * s) * span / span) / s`` where the clamp passes (else 0), as autograd chains it, and
    ``ds = sum(g * out / s) - sum over the passing elements of g * v / s = (sum(g * out) - sum(dv * v)) / s``.
    Saves ``v`` and the output (alive anyway); ``v / s`` is recomputed into the one tensor the backward allocates.
    """

    @staticmethod
    def forward(ctx, v: torch.Tensor, s: torch.Tensor, qn: int, qp: int) -> torch.Tensor:
        span = qn + qp
        out = round_to_levels_(torch.div(v, s).clamp_(-qn, qp).add_(qn).div_(span), span + 1)
        out = out.mul_(span).sub_(qn).mul_(s)
        ctx.save_for_backward(v, s, out)
        ctx.bounds = qn, qp
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: torch.Tensor):
        qn, qp = ctx.bounds
        v, s, out = ctx.saved_tensors
        buf = torch.div(v, s)
        # zeros outside stay zeros through the scalings (s finite, nonzero)
        grad_v = clamp_backward(grad, buf, -qn, qp, out=buf).mul_(s).mul_(qn + qp).div_(qn + qp).div_(s)
        grad_s = scale_gradient(grad, out, grad_v, v, s) if ctx.needs_input_grad[1] else None
        return grad_v, grad_s, None, None


def lsq_quantize(v: torch.Tensor, step: torch.Tensor, qn: int, qp: int, numel: int) -> torch.Tensor:
    """``round(clamp(v/s, -qn, qp)) * s`` with straight-through rounding and LSQ gradient scaling of ``s``.

    The rounding snaps ``(t + qn) / (qn + qp)`` onto ``qn + qp + 1`` levels of the unit interval, as
    ``discretize`` does. Gradients: d/dv = 1 inside the range, 0 outside; d/ds = round(v/s) - v/s inside,
    -qn / qp outside (times g), exactly LSQ.
    """
    return _LSQ.apply(in_float32(v), grad_scale(step, 1.0 / math.sqrt(numel * qp)), qn, qp)


def weight_range(bits: int) -> tuple[int, int]:
    return 2 ** (bits - 1), 2 ** (bits - 1) - 1


def activation_range(bits: int) -> tuple[int, int]:
    return 0, 2**bits - 1


def lsq_init(v: torch.Tensor, qp: int) -> torch.Tensor:
    return (2 * v.abs().mean() / math.sqrt(qp)).clamp_min(STEP_FLOOR)


class BitMixerConv(SingleBranchConv):
    """A conv whose weights and input activations are quantized at ``active_bits`` (its own bit-width).

    Shared latent FP weights; one LSQ weight step and one activation step per quantized bit-width of the list
    (``w_step[i]``, ``a_step[i]`` for ``quant_bits[i]``). ``fp_weights_in_training``: train with
    full-precision weights (evaluation always quantizes).
    """

    def __init__(self, ci: int, co: int, kernel_size: int, stride: int, padding: int, groups: int = 1, *,
                 bits: Sequence[int]):
        super().__init__(ci, co, kernel_size, stride, padding, groups)
        self.quant_bits = sorted(b for b in set(bits) if b != FP_BITS)
        self.slot = {b: i for i, b in enumerate(self.quant_bits)}
        n = len(self.quant_bits)
        # 0 = not initialised yet (LSQ steps are positive, floored at STEP_FLOOR once initialised)
        self.w_step = nn.Parameter(torch.zeros(n))
        self.a_step = nn.Parameter(torch.zeros(n))
        self.active_bits = max(bits)
        self.fp_weights_in_training = False
        self.calibrating = False  # set by ``calibrate``: the next forward (re)initialises the steps it uses
        self._known_initialized: set[int] = set()  # slots seen initialised: no device sync per forward after

    def _weight_at(self, bits: int) -> torch.Tensor:
        if bits == FP_BITS:
            return self.weight
        qn, qp = weight_range(bits)
        return lsq_quantize(self.weight, self.w_step[self.slot[bits]], qn, qp, self.weight.numel())

    def _input_at(self, x: torch.Tensor, bits: int) -> torch.Tensor:
        if bits == FP_BITS:
            return x
        qn, qp = activation_range(bits)
        return lsq_quantize(x, self.a_step[self.slot[bits]], qn, qp, x[0].numel())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b = self.active_bits
        if b == FP_BITS:
            return self._conv_forward(x, self.weight, None)
        i = self.slot[b]
        if self.calibrating or (self.training and not self._is_initialized(i)):
            with torch.no_grad():
                self.w_step[i] = lsq_init(self.weight, weight_range(b)[1])
                self.a_step[i] = lsq_init(x, activation_range(b)[1])
            self._known_initialized.add(i)
        w = self.weight if self.training and self.fp_weights_in_training else self._weight_at(b)
        return self._conv_forward(self._input_at(x, b), w, None)

    def initialized(self, bits: int) -> bool:
        """Whether the steps of ``bits`` hold an initialisation (calibrated, trained or loaded from a checkpoint)."""
        return bits == FP_BITS or self._is_initialized(self.slot[bits])

    def _is_initialized(self, i: int) -> bool:
        if i not in self._known_initialized and bool(self.a_step[i] != 0):
            self._known_initialized.add(i)
        return i in self._known_initialized


def transition_key(previous: int, current: int) -> str:
    return f"{previous}to{current}"


class TransitionalBatchNorm(nn.Module):
    """One BatchNorm2d per (previous layer's bit-width -> this layer's bit-width) pair.

    The pair is read at forward time from the conv this BN follows and from the previous quantized conv
    (``link``), so any way of setting the convs' ``active_bits`` keeps the BN consistent.
    """

    def __init__(self, channels: int, bits: Sequence[int]):
        super().__init__()
        bits = sorted(set(bits))
        self.bn = nn.ModuleDict({transition_key(p, c): nn.BatchNorm2d(channels) for p in bits for c in bits})
        self._links: tuple[BitMixerConv | None, BitMixerConv | None] = (None, None)  # plain tuple: not submodules

    def link(self, conv: BitMixerConv, previous: BitMixerConv | None) -> None:
        """Attach to its conv and the previous quantized conv; without one, keep only the (b, b) entries."""
        self._links = (conv, previous)
        if previous is None:
            for key in list(self.bn.keys()):
                p, c = key.split("to")
                if p != c:
                    del self.bn[key]

    @property
    def transition(self) -> tuple[int, int]:
        conv, previous = self._links
        if conv is None:
            raise RuntimeError("TransitionalBatchNorm used before link()")
        current = conv.active_bits
        return (current if previous is None else previous.active_bits), current

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn[transition_key(*self.transition)](x)


