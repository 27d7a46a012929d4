"""MBQuant's layers: G weight branches, always 2-bit, in one stored weight; one BN per bit-width.

A b-bit forward runs the branches ``branch_selection`` picks (b/2 of them; at 3 bits branch 0 plus the partial
branch) with 2-bit weights and b-bit input activations, so a conv costs (b/2) * 2 * b = b*b BitOPs per MAC, as in
one b-bit network. MobileNetV1's depthwise conv is the exception: its weights are b-bit over the b/2 branches'
channels, (b/2) * b * b per MAC of one branch (docs/spec/imagenet-models.md §9, quirk 4). ``release_quirks``
reproduces the authors' released implementation (weight bounds initialised from output filter *s* of the whole
stored weight, bounds indexed by slot); docs/spec/mbquant.md.

The stored layout of the ``QuantizedLayer`` views is branch-major: branch g owns weight rows g*co..(g+1)*co
(as the code reads them), input channels g*ci..(g+1)*ci and output channels g*co..(g+1)*co.
"""
from __future__ import annotations

from typing import Iterable, Literal

import torch
import torch.nn.functional as F
from torch import nn

from suite.layers.branch_selection import (
    BN_SLOTS, MAX_BITS, ConvSlices, active_branches, conv_slices, depthwise_slices,
)
from suite.layers.quant import activation_bounds, quantize_activation, quantize_weight, weight_bound

BOUND_NAMES = ("w_lower", "w_upper", "a_lower", "a_upper")  # every quantizer parameter of these layers


def quantize_weight_slots(layer: nn.Module, weight: torch.Tensor, slots: tuple[int, int], levels: int) -> torch.Tensor:
    """Quantize ``weight`` (rows) in ``n`` equal chunks, chunk k with weight bounds ``slots[0] + k``, in one op."""
    n = slots[1] - slots[0]
    w_lo, w_hi = layer.w_lower[slots[0]:slots[1]], layer.w_upper[slots[0]:slots[1]]
    return quantize_weight(weight.reshape(n, -1), w_lo.view(n, 1), w_hi.view(n, 1), levels).view_as(weight)


def quantize_input_slots(layer: nn.Module, x: torch.Tensor, slots: tuple[int, int], bits: int) -> torch.Tensor:
    """Quantize ``x`` (channels) in ``n`` equal chunks, chunk k with activation bounds ``[slots[0] + k, bits - 2]``."""
    n = slots[1] - slots[0]
    a_lo = layer.a_lower[slots[0]:slots[1], bits - 2].view(1, n, 1, 1, 1)
    a_hi = layer.a_upper[slots[0]:slots[1], bits - 2].view(1, n, 1, 1, 1)
    N, C, H, W = x.shape
    return quantize_activation(x.reshape(N, n, C // n, H, W), a_lo, a_hi, bits).view(N, C, H, W)


def narrowed(t: torch.Tensor, span: tuple[int, int], dim: int = 1) -> torch.Tensor:
    """``t``'s entries ``span[0]:span[1]`` along ``dim``; ``t`` itself when that is all of them, so that the
    backward needs no zero-filled copy of the gradient (what a slice's backward allocates)."""
    if span == (0, t.shape[dim]):
        return t
    return t.narrow(dim, span[0], span[1] - span[0])


def _add_branch_state(layer: nn.Module, branches: int) -> None:
    """Learnable bounds per branch slot (weights [G]; activations [G, 7], column b-2) and the switch state."""
    layer.w_lower = nn.Parameter(torch.zeros(branches))
    layer.w_upper = nn.Parameter(torch.zeros(branches))
    layer.a_lower = nn.Parameter(torch.zeros(branches, BN_SLOTS))
    layer.a_upper = nn.Parameter(torch.zeros(branches, BN_SLOTS))
    layer.active_bits = None
    layer.calibrating = False  # set by ``calibrate``: the next forward initialises the bounds it uses
    layer._slices = {}  # bit-width -> ConvSlices, computed once


Piece = tuple[int, tuple[int, int], tuple[int, int], int, tuple[int, int], int]


class _BranchViews:
    """The ``QuantizedLayer`` views of a multi-branch layer, from its ``slices`` (see the module docstring).

    A subclass gives ``ci``/``co`` per branch (``_units``), its ``strategy`` and ``weight_levels(bits)``.
    """

    branches: int

    def _pieces(self, bits: int) -> list[Piece]:
        """Per branch a ``bits`` forward reads: (branch, stored rows, weight columns, bound slot,
        channels of that forward's input, offset of its output channels). The partial branch is branch 1."""
        sl = self.slices(bits)
        ci, co = self._units()
        if sl.partial is None:
            return [(g, (sl.rows[0] + k * co, sl.rows[0] + (k + 1) * co), (0, self.weight.shape[1]), sl.slots[0] + k,
                     (sl.inputs[0] + k * ci, sl.inputs[0] + (k + 1) * ci), k * co)
                    for k, g in enumerate(active_branches(bits, self.strategy))]
        rows, cols, inputs, slot = sl.partial
        return [(0, sl.rows, (0, self.weight.shape[1]), sl.slots[0], sl.inputs, 0), (1, rows, cols, slot, inputs, co)]

    def quantized_weight(self, bits: int) -> torch.Tensor:
        out = torch.full_like(self.weight, float("nan"))
        for _, (r0, r1), (c0, c1), slot, _, _ in self._pieces(bits):
            out[r0:r1, c0:c1] = quantize_weight_slots(self, self.weight[r0:r1, c0:c1], (slot, slot + 1),
                                                      self.weight_levels(bits))
        return out

    def datapath_weight(self, bits: int) -> torch.Tensor:
        """``quantized_weight(bits)`` with each piece's rows placed where ``output_layout`` places the outputs they
        compute (block g*co of branch g), not at their stored rows: the two differ only where a forward reads
        other rows in a branch's place (the CIFAR release's convs with ci != co, quirk 2)."""
        _, co = self._units()
        stored, out = self.quantized_weight(bits), torch.full_like(self.weight, float("nan"))
        for g, (r0, r1), (c0, c1), _, _, _ in self._pieces(bits):
            out[g * co:g * co + r1 - r0, c0:c1] = stored[r0:r1, c0:c1]
        return out

    def quantized_input(self, x: torch.Tensor, bits: int) -> torch.Tensor:
        ci, _ = self._units()
        out = torch.full_like(x, float("nan"))
        for g, _, _, slot, (i0, i1), _ in self._pieces(bits):
            c0 = g * ci
            out[:, c0:c0 + i1 - i0] = quantize_input_slots(self, x[:, c0:c0 + i1 - i0], (slot, slot + 1), bits)
        return out

    def input_layout(self, x: torch.Tensor, bits: int) -> torch.Tensor:
        ci, _ = self._units()
        out = x.new_full((x.shape[0], self.branches * ci, *x.shape[2:]), float("nan"))
        for g, _, _, _, (i0, i1), _ in self._pieces(bits):
            out[:, g * ci:g * ci + i1 - i0] = x[:, i0:i1]
        return out

    def output_layout(self, y: torch.Tensor, bits: int) -> torch.Tensor:
        _, co = self._units()
        out = y.new_full((y.shape[0], self.branches * co, *y.shape[2:]), float("nan"))
        for g, (r0, r1), _, _, _, o0 in self._pieces(bits):
            out[:, g * co:g * co + r1 - r0] = y[:, o0:o0 + r1 - r0]
        return out


class MultiBranchConv(_BranchViews, nn.Module):
    """G branches of a ``ci -> co`` conv in one weight ``[G*co, ci, k, k]`` (branch g = rows g*co..(g+1)*co).

    At b bits the selected rows run as one grouped conv (groups = b/2) on b-bit inputs, every branch slot
    with its own learnable weight bounds (``w_lower/w_upper[G]``) and activation bounds
    (``a_lower/a_upper[G, 7]``, column b-2). Quantization of all slots is one broadcast op, not a Python loop.
    """

    def __init__(
        self, ci: int, co: int, kernel_size: int, stride: int = 1, padding: int = 0, *,
        branches: int, partial: tuple[int, int], strategy: str, release_quirks: bool, reads_stem: bool = False,
        conv_impl: str = "grouped", row_offset: Literal["ci", "co"] | None = None,
    ):
        super().__init__()
        self.ci, self.co, self.stride, self.padding, self.branches = ci, co, stride, padding, branches
        self.partial, self.strategy = partial, strategy
        self.release_quirks, self.reads_stem, self.conv_impl = release_quirks, reads_stem, conv_impl
        self.row_offset = row_offset  # None: the CIFAR code's rule (see ``conv_slices``); the ImageNet models pass "co"
        self.weight = nn.Parameter(torch.empty(branches * co, ci, kernel_size, kernel_size))
        _add_branch_state(self, branches)

    def _units(self) -> tuple[int, int]:
        return self.ci, self.co

    def weight_levels(self, bits: int) -> int:
        return 4  # always 2-bit

    def slices(self, bits: int) -> ConvSlices:
        if bits not in self._slices:
            self._slices[bits] = conv_slices(
                bits, self.strategy, self.ci, self.co, partial=self.partial,
                reads_stem=self.reads_stem, release_quirks=self.release_quirks, row_offset=self.row_offset,
            )
        return self._slices[bits]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b = self.active_bits
        sl = self.slices(b)
        out = self._branch_conv(narrowed(x, sl.inputs), narrowed(self.weight, sl.rows, 0), sl.slots, b)
        if sl.partial is None:
            return out
        rows, cols, inputs, slot = sl.partial
        weight = self.weight[rows[0]:rows[1], cols[0]:cols[1]]
        partial_out = self._branch_conv(narrowed(x, inputs), weight, (slot, slot + 1), b)
        return torch.cat([out, partial_out], dim=1)

    def _branch_conv(self, x: torch.Tensor, weight: torch.Tensor, slots: tuple[int, int], bits: int) -> torch.Tensor:
        n = slots[1] - slots[0]
        if self.calibrating:
            self._calibrate(x, weight, slots, bits)
        w = quantize_weight_slots(self, weight, slots, 4)
        a = quantize_input_slots(self, x, slots, bits)
        if self.conv_impl == "dense" and n > 1:  # one dense conv per branch: faster than grouped on some CPUs
            return torch.cat([F.conv2d(ac, wc, None, self.stride, self.padding)
                              for ac, wc in zip(a.chunk(n, dim=1), w.chunk(n, dim=0))], dim=1)
        return F.conv2d(a, w, None, self.stride, self.padding, 1, n)

    def macs_and_bitops(self, out: torch.Tensor) -> tuple[int, int]:
        """One image's MACs through the rows that ran, and BitOPs at 2-bit weights x b-bit activations."""
        sl, k = self.slices(self.active_bits), self.weight.shape[2] * self.weight.shape[3]
        h, w = out.shape[-2:]
        macs = sl.groups * self.co * h * w * self.ci * k
        if sl.partial is not None:
            rows, cols, _, _ = sl.partial
            macs += (rows[1] - rows[0]) * h * w * (cols[1] - cols[0]) * k
        return macs, macs * 2 * self.active_bits

    @torch.no_grad()
    def _calibrate(self, x: torch.Tensor, weight: torch.Tensor, slots: tuple[int, int], bits: int) -> None:
        """The release's quantizer initialisation for the slots this forward uses (mbquant.md §2)."""
        n = slots[1] - slots[0]
        is_partial = weight.shape[0] != n * self.co
        for k, (slot, chunk) in enumerate(zip(range(*slots), x.chunk(n, dim=1))):
            self.a_lower[slot, bits - 2], self.a_upper[slot, bits - 2] = activation_bounds(chunk)
            if is_partial:
                source = weight  # the partial slice itself
            elif self.release_quirks:
                source = self.weight[slot]  # quirk 1: output filter ``slot`` of the whole stored weight
            else:
                source = weight[k * self.co:(k + 1) * self.co]  # the branch's own rows
            self.w_upper[slot] = weight_bound(source)
            self.w_lower[slot] = -self.w_upper[slot]


class MultiBranchDepthwiseConv(_BranchViews, nn.Module):
    """G branches of a 3x3 depthwise conv over ``c`` channels in one weight ``[G*c, 1, 3, 3]`` (MobileNetV1).

    The release's ``QConv_Tra_Mulit`` (imagenet-models.md §1.3). Unlike ``MultiBranchConv`` its weights are
    **b-bit** at b bits (2^b levels, mapped to [-1, 1]), not 2-bit. The selected branches (plus, at 3 bits, the
    partial branch, slot 1) are quantized per slot with the same bounds layout as ``MultiBranchConv``, then
    concatenated and run as one depthwise conv. Calibration takes the weight bound from each slot's own
    branch chunk (no quirk 1 here).
    """

    depthwise_conv = True
    # Stored bits per weight: the weight is used at every b of the bit list on 2^b levels, and those grids do
    # not nest (e.g. 255 is no multiple of 63), so serving them all exactly needs the latent FP32 weight.
    stored_weight_bits = 32

    def __init__(
        self, c: int, stride: int = 1, *, branches: int, partial_in: int, strategy: str, release_quirks: bool,
        reads_stem: bool = False,
    ):
        super().__init__()
        self.c, self.stride, self.padding, self.branches = c, stride, 1, branches
        self.partial_in, self.strategy = partial_in, strategy
        self.release_quirks, self.reads_stem = release_quirks, reads_stem
        self.weight = nn.Parameter(torch.empty(branches * c, 1, 3, 3))
        _add_branch_state(self, branches)

    def _units(self) -> tuple[int, int]:
        return self.c, self.c

    def weight_levels(self, bits: int) -> int:
        return 2**bits

    def slices(self, bits: int) -> ConvSlices:
        if bits not in self._slices:
            self._slices[bits] = depthwise_slices(
                bits, self.strategy, self.c, partial_in=self.partial_in, reads_stem=self.reads_stem,
                release_quirks=self.release_quirks,
            )
        return self._slices[bits]

    def _runs(self, bits: int) -> list[tuple[tuple[int, int], tuple[int, int], tuple[int, int]]]:
        """(input channels, weight rows, slots) of the main selection and, at 3 bits, of the partial branch."""
        sl = self.slices(bits)
        runs = [(sl.inputs, sl.rows, sl.slots)]
        if sl.partial is not None:
            rows, _, inputs, slot = sl.partial
            runs.append((inputs, rows, (slot, slot + 1)))
        return runs

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b = self.active_bits
        acts, weights = [], []
        for inputs, rows, slots in self._runs(b):
            xs, ws = narrowed(x, inputs), narrowed(self.weight, rows, 0)
            if self.calibrating:
                self._calibrate(xs, ws, slots, b)
            weights.append(quantize_weight_slots(self, ws, slots, 2**b))
            acts.append(quantize_input_slots(self, xs, slots, b))
        a, w = (acts[0], weights[0]) if len(acts) == 1 else (torch.cat(acts, 1), torch.cat(weights, 0))
        return F.conv2d(a, w, None, self.stride, self.padding, 1, a.shape[1])

    def macs_and_bitops(self, out: torch.Tensor) -> tuple[int, int]:
        """One image's MACs (9 per output element) and BitOPs at b-bit weights x b-bit activations."""
        channels = sum(r1 - r0 for _, (r0, r1), _ in self._runs(self.active_bits))
        h, w = out.shape[-2:]
        macs = channels * h * w * 9
        return macs, macs * self.active_bits * self.active_bits

    @torch.no_grad()
    def _calibrate(self, x: torch.Tensor, weight: torch.Tensor, slots: tuple[int, int], bits: int) -> None:
        """The release's initialisation: per slot, activation bounds of its input chunk, weight bound
        3*std of its own weight chunk (imagenet-models.md §1.3, §1.5)."""
        n = slots[1] - slots[0]
        for slot, chunk, w in zip(range(*slots), x.chunk(n, dim=1), weight.chunk(n, dim=0)):
            self.a_lower[slot, bits - 2], self.a_upper[slot, bits - 2] = activation_bounds(chunk)
            self.w_upper[slot] = weight_bound(w)
            self.w_lower[slot] = -self.w_upper[slot]


class SwitchableBatchNorm(nn.Module):
    """One independent BatchNorm2d per bit-width 2..8 (index b-2); nothing is shared between bit-widths."""

    def __init__(self, sizes: Iterable[int]):
        super().__init__()
        self.bn = nn.ModuleList(nn.BatchNorm2d(c) for c in sizes)
        self.active_bits: int | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn[self.active_bits - 2](x)


def bn_sizes(co: int, p_out: int, *, last: bool, branches: int, release_quirks: bool) -> list[int]:
    """Channel count of each bit-width's BN: the width of the conv output it normalises.

    The network's last conv has a full-width partial branch, hence ceil(b/2)*co; the release also stores an
    eighth, never used, G*co entry there.
    """
    sizes = [(-(-b // 2) * co) if last else (b // 2) * co + (p_out if b % 2 else 0) for b in range(2, MAX_BITS + 1)]
    return sizes + [branches * co] if last and release_quirks else sizes


def depthwise_bn_sizes(c: int, p_in: int) -> list[int]:
    """Channel count of each bit-width's BN after a depthwise conv: its input's width, [c, c+p_in, 2c, ..., 4c]."""
    return [(b // 2) * c + (p_in if b % 2 else 0) for b in range(2, MAX_BITS + 1)]
