"""Quantization math shared by every method: a straight-through rounding and learnable-bound quantizers.

Operations are written in exactly the order of MBQuant's released implementation (divide by ``u - l``, never
multiply by a reciprocal; ``torch.round`` rounds half to even) so that the suite reproduces it bit for bit.

The quantizers are fused ``torch.autograd.Function``s: the forward runs the same elementwise operations as the
plain autograd graph (hence the same bits) but in place on the one tensor it allocates, and the backward is the
gradient that graph computes, written out analytically, again into one new tensor. They save only inputs and
outputs, which the surrounding graph keeps alive anyway (the conv saves its quantized input, the ReLU before it
its output): clamp masks are recomputed in the backward, no float intermediate or boolean mask is kept. On a CPU
a fresh activation-sized tensor costs more than an elementwise pass over it (its pages must be faulted in), so
allocations, not passes, are what the fused forms save. Input and weight gradients are bit-identical to the plain
graph's; bound, alpha and step gradients equal them up to float rounding (sums regrouped and reordered).
"""
from __future__ import annotations

import math

import torch
from torch.autograd.function import once_differentiable


HALF_PRECISION = (torch.bfloat16, torch.float16)


def in_float32(x: torch.Tensor) -> torch.Tensor:
    """``x`` upcast to float32 if it is bf16 / fp16 (activations under autocast), else ``x`` itself (float32 and
    float64 untouched, no copy). Every quantizer computes on its result: on a bf16 grid up to 9 % of 8-bit
    activations land on another level, and methods whose parameters are scalars would otherwise compute in
    bf16 while those with per-branch parameters promote to float32. The gradient returns in ``x``'s dtype."""
    return x.float() if x.dtype in HALF_PRECISION else x


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
    return _RoundSTE.apply(in_float32(x), levels)


def round_to_levels_(unit: torch.Tensor, levels: int) -> torch.Tensor:
    """``discretize``'s forward in place on ``unit`` (a tensor the caller owns): the same operations, same bits."""
    return unit.mul_(levels - 1).round_().div_(levels - 1)


def _clamp_passes_gradient_at_bounds() -> bool:
    """Whether torch's ``clamp`` backward (scalar bounds) passes the gradient at the bounds themselves.

    torch 2.14 passes it only strictly inside (``min < v < max``); older releases included the bounds. The fused
    quantizers follow the torch they run on, so that their gradients stay those of the plain graph.
    """
    with torch.inference_mode(False), torch.enable_grad():
        v = torch.tensor([0.0, 1.0], requires_grad=True)
        torch.clamp(v, 0, 1).sum().backward()
    return bool(v.grad.all())


CLAMP_GRAD_AT_BOUNDS = _clamp_passes_gradient_at_bounds()


def clamp_backward(grad: torch.Tensor, v: torch.Tensor, low: float, high: float,
                   out: torch.Tensor | None = None) -> torch.Tensor:
    """``grad`` where ``clamp(v, low, high)`` passes its gradient, 0 elsewhere, written to ``out`` if given (which
    may be ``grad`` or ``v`` itself: the op is elementwise).

    Strictly inside the bounds, this is hardtanh's backward: one vectorized pass and no boolean temporaries
    (a CPU ``where`` on a mask runs a scalar loop). Unlike clamp's, it may pass the gradient at a NaN ``v``, which
    only arises where the quantized forward is NaN itself.
    """
    if CLAMP_GRAD_AT_BOUNDS:
        inside = torch.ge(v, low).logical_and_(torch.le(v, high))
        return torch.where(inside, grad, grad.new_zeros(()), out=out)
    if out is None:
        return torch.ops.aten.hardtanh_backward(grad, v, low, high)
    return torch.ops.aten.hardtanh_backward.grad_input(grad, v, low, high, grad_input=out)


def dot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``(a * b).sum()`` without materialising the product where both are contiguous."""
    if a.is_contiguous() and b.is_contiguous():
        return torch.dot(a.view(-1), b.view(-1))
    return (a * b).sum()


def scale_gradient(grad: torch.Tensor, out: torch.Tensor, grad_x: torch.Tensor, x: torch.Tensor,
                   scale: torch.Tensor) -> torch.Tensor:
    """Gradient w.r.t. ``s`` of a straight-through quantizer ``out = s * q(x / s)`` (PACT's alpha, an LSQ step):
    ``sum(grad * out / s) - sum(grad_x * x) / s``, where ``grad_x``, the gradient w.r.t. ``x``, is ``grad`` on the
    elements that are not clipped (on the clipped ones the terms through the clip and through ``x / s`` cancel)."""
    return (dot(grad, out) - dot(grad_x, x)) / scale


def _bounded_unit(x: torch.Tensor, lower: torch.Tensor, den: torch.Tensor) -> torch.Tensor:
    """``(x - lower) / (upper - lower)`` as a new tensor, ``den = upper - lower`` (the release's order)."""
    return torch.sub(x, lower).div_(den)


class _BoundedQuant(torch.autograd.Function):
    """``round(clamp((x - l) / (u - l), 0, 1) * (L - 1)) / (L - 1)``, mapped by ``2 * (q - 0.5)`` if ``signed``.

    Backward of that graph (rounding straight-through), with ``v = (x - l) / (u - l)``, ``d = u - l`` and ``g``
    the incoming gradient where the clamp passes it (doubled if ``signed``), 0 elsewhere:
    ``dx = g / d``, ``du = -sum(g * v) / d``, ``dl = (sum(g * v) - sum(g)) / d``, sums over the elements each
    bound serves. Saves only ``x`` (alive anyway) and the bounds; the backward recomputes ``v`` twice into the
    one tensor it allocates, which ends up as ``dx``.
    """

    @staticmethod
    def forward(ctx, x, lower, upper, levels: int, signed: bool):
        ctx.signed = signed
        ctx.save_for_backward(x, lower, upper)
        q = round_to_levels_(_bounded_unit(x, lower, upper - lower).clamp_(0, 1), levels)
        return q.sub_(0.5).mul_(2) if signed else q  # weights: 2 * (q - 0.5)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):
        x, lower, upper = ctx.saved_tensors
        den = upper - lower
        scale = 2 if ctx.signed else 1  # d(2 * (q - 0.5)) / dq, exact
        bounds = ctx.needs_input_grad[1] or ctx.needs_input_grad[2]
        buf = _bounded_unit(x, lower, den)  # v
        if bounds:
            sum_gv = clamp_backward(buf, buf, 0, 1, out=buf).mul_(grad).sum_to_size(den.shape) * scale
            torch.sub(x, lower, out=buf).div_(den)  # v again
        g = clamp_backward(grad, buf, 0, 1, out=buf)
        if ctx.signed:
            g.mul_(2)
        grad_lower = grad_upper = None
        if bounds:
            sum_g = g.sum_to_size(den.shape)
            grad_upper, grad_lower = -sum_gv / den, (sum_gv - sum_g) / den
        return g.div_(den), grad_lower, grad_upper, None, None


def quantize_weight(w: torch.Tensor, lower: torch.Tensor, upper: torch.Tensor, levels: int = 4) -> torch.Tensor:
    """Learnable-bound weight quantizer: values in {-1, ..., 1} on ``levels`` points, no scale multiplied back.

    ``lower``/``upper`` broadcast against ``w`` (one pair per branch slot). The BN after the conv absorbs the
    missing scale, which is why MBQuant never rescales.
    """
    return _BoundedQuant.apply(w, lower, upper, levels, True)


def quantize_activation(x: torch.Tensor, lower: torch.Tensor, upper: torch.Tensor, bits: int) -> torch.Tensor:
    """Learnable-bound activation quantizer onto ``2**bits`` levels in [0, 1] (not rescaled)."""
    return _BoundedQuant.apply(in_float32(x), lower, upper, 2**bits, False)


class _ClampRound(torch.autograd.Function):
    """``discretize(clamp(x, 0, 1), levels)``: the gradient passes where the clamp passes it."""

    @staticmethod
    def forward(ctx, x, levels: int):
        ctx.save_for_backward(x)
        return round_to_levels_(torch.clamp(x, 0, 1), levels)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        return clamp_backward(grad, x, 0, 1), None


def clamp_discretize(x: torch.Tensor, levels: int) -> torch.Tensor:
    """``discretize(torch.clamp(x, 0, 1), levels)`` fused (Any-Precision's activation quantizer)."""
    return _ClampRound.apply(in_float32(x), levels)


def tanh_max_backward(grad: torch.Tensor, t: torch.Tensor, m: torch.Tensor, halve: bool) -> torch.Tensor:
    """Gradient w.r.t. ``w`` of ``r = t / 2 / m`` (``halve``) or ``r = t / m``, ``t = tanh(w)``, ``m = max|t|``,
    given ``grad`` w.r.t. ``r``, as autograd computes it: through the division, the max (shared evenly among
    ties, as torch's max backward does) and the tanh."""
    r = (t / 2 if halve else t) / m
    grad_m = -(grad * (r / m)).sum()
    grad_t = grad / m
    if halve:
        grad_t = grad_t / 2
    a = t.abs()
    hit = (a == m).logical_or_(a.isnan().logical_and_(m.isnan()))
    grad_t += hit * (grad_m / hit.sum()) * t.sgn()
    return torch.ops.aten.tanh_backward(grad_t, t)  # torch's own kernel: grad * (1 - t^2), same rounding


def tanh_max(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``t = tanh(w)`` and ``max|t|``: the normalisation of the DoReFa-style weight quantizers."""
    t = torch.tanh(w)
    return t, t.abs().max()


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
