"""MBQuant (Zhong et al., arXiv 2305.08117): G weight branches, always 2-bit, shared by every bit-width.

A b-bit forward runs b/2 branches with 2-bit weights and b-bit input activations, so it costs
(b/2) * 2 * b = b*b BitOPs per MAC: exactly one b-bit network. The whole file follows
docs/spec/mbquant.md; by default it reproduces the authors' released implementation, quirks included
(``variant: release``), and ``variant: clean`` aligns them (see ``ConvSlices`` and the calibration below).

Reading order: the branch-selection rule (``first_branch``, ``conv_slices``, ``depthwise_slices``), the layers
built on it (``MultiBranchConv``, ``MultiBranchDepthwiseConv`` for MobileNetV1, ``SwitchableBatchNorm``), then the
method's entry point ``build``. The ImageNet models (docs/spec/imagenet-models.md) use the same layers.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Literal

import torch
import torch.nn.functional as F
from torch import nn

from suite.methods.common import calibrate, parameters_named
from suite.quant import activation_bounds, quantize_activation, quantize_weight, weight_bound

MAX_BITS = 8
BN_SLOTS = MAX_BITS - 1  # one BN / activation-bound column per bit-width 2..8, indexed b - 2

# ----------------------------------------------------------------------------------------------------------
# The selection rule
# ----------------------------------------------------------------------------------------------------------


def first_branch(bits: int, strategy: str) -> int:
    """Index of the first of the b/2 consecutive branches a b-bit forward uses.

    serial:        b -> branches 0 .. b/2-1. Branch 0 serves every bit-width, so it absorbs the error of
                   switching activation bit-width at every switch.
    amortization:  4 and 6 bits start at branch 1 ({1,2}, {1,2,3}); branch 0 is used only at 2 and 8 bits,
                   which spreads that switching error over the branches.
    """
    if strategy == "amortization" and bits in (4, 6):
        return 1
    if strategy not in ("amortization", "serial"):
        raise ValueError(f"unknown branch-selection strategy {strategy!r} (amortization or serial)")
    return 0


def active_branches(bits: int, strategy: str) -> list[int]:
    """Stored branches a b-bit forward reads. At 3 bits: branch 0 plus part of branch 1 (the partial branch)."""
    start = first_branch(bits, strategy)
    return list(range(start, start + (bits + 1) // 2))


@dataclass(frozen=True)
class ConvSlices:
    """What one quantized conv reads at one bit-width (half-open ranges).

    rows:    rows of the stored weight [G*co, ci, k, k] (b/2 whole branches at even b, branch 0 at 3 bits)
    inputs:  channels of the conv's input tensor
    slots:   quantizer-bound indices, one per group (the release indexes bounds by slot, quirk 3)
    partial: the 3-bit partial branch (rows, weight columns, input channels, bound slot), else None
    """

    rows: tuple[int, int]
    inputs: tuple[int, int]
    slots: tuple[int, int]
    partial: tuple[tuple[int, int], tuple[int, int], tuple[int, int], int] | None = None

    @property
    def groups(self) -> int:
        return self.slots[1] - self.slots[0]


def conv_slices(
    bits: int,
    strategy: str,
    ci: int,
    co: int,
    *,
    partial: tuple[int, int],
    reads_stem: bool,
    release_quirks: bool,
    row_offset: Literal["ci", "co"] | None = None,
) -> ConvSlices:
    """The slices a conv with per-branch ``ci -> co`` channels reads at ``bits``.

    ``partial`` = (partial outputs, partial inputs) of this conv at 3 bits. ``reads_stem``: the first body
    conv, which picks its input channels out of the G*ci-wide stem output instead of using its input whole.
    ``release_quirks`` reproduces the release: bounds are indexed by slot instead of by branch (quirk 3).
    ``row_offset`` is the unit of the rows' start ``first * unit``: ``"co"`` keeps branches aligned (the
    ImageNet release, and the clean variant); ``"ci"`` is the CIFAR release's misalignment where ci != co
    (quirk 2). None (default): ``"ci"`` under ``release_quirks``, else ``"co"``, i.e. the CIFAR code.
    """
    if row_offset is None:
        row_offset = "ci" if release_quirks else "co"
    if row_offset not in ("ci", "co"):
        raise ValueError(f"row_offset must be 'ci' or 'co', got {row_offset!r}")
    if bits % 2 == 0:
        n, first = bits // 2, first_branch(bits, strategy)
        row0 = first * (ci if row_offset == "ci" else co)
        in0 = first * ci if reads_stem else 0
        slot0 = 0 if release_quirks else first
        return ConvSlices(rows=(row0, row0 + n * co), inputs=(in0, in0 + n * ci), slots=(slot0, slot0 + n))
    if bits != 3 or strategy != "serial":
        raise ValueError(f"MBQuant serves odd bit-widths only at 3 bits with serial selection, not {bits}")
    p_out, p_in = partial
    return ConvSlices(
        rows=(0, co), inputs=(0, ci), slots=(0, 1),
        partial=((co, co + p_out), (0, p_in), (ci, ci + p_in), 1),
    )


def depthwise_slices(
    bits: int, strategy: str, c: int, *, partial_in: int, reads_stem: bool, release_quirks: bool,
) -> ConvSlices:
    """The slices a depthwise conv with ``c`` channels per branch reads at ``bits`` (imagenet-models.md §2).

    A depthwise conv's rows are its channels, so rows and input channels select the same branches, always
    aligned (offset unit c). ``reads_stem``: the first depthwise conv picks its branches out of the G*c-wide
    tiled head; later ones get exactly the active branches. At 3 bits the main part is branch 0 and the partial
    one the first ``partial_in`` channels of branch 1 (weight column range (0, 1): a depthwise filter has one).
    """
    if bits % 2 == 0:
        n, first = bits // 2, first_branch(bits, strategy)
        in0 = first * c if reads_stem else 0
        if reads_stem and release_quirks and strategy == "serial":
            # The 2-3-4 code reads the tiled head at the amortized offset (4 bits: [c, 3c)) with serial weight
            # rows: a leftover of the 2-4-6-8 code (imagenet-models.md §9 quirk 5). Same values: the head is tiled.
            in0 = first_branch(bits, "amortization") * c
        slot0 = 0 if release_quirks else first
        return ConvSlices(rows=(first * c, (first + n) * c), inputs=(in0, in0 + n * c), slots=(slot0, slot0 + n))
    if bits != 3 or strategy != "serial":
        raise ValueError(f"MBQuant serves odd bit-widths only at 3 bits with serial selection, not {bits}")
    return ConvSlices(
        rows=(0, c), inputs=(0, c), slots=(0, 1),
        partial=((c, c + partial_in), (0, 1), (c, c + partial_in), 1),
    )


# ----------------------------------------------------------------------------------------------------------
# Layers
# ----------------------------------------------------------------------------------------------------------


def quantize_slots(
    layer: nn.Module, x: torch.Tensor, weight: torch.Tensor, slots: tuple[int, int], bits: int, weight_levels: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Quantize ``x`` (channels) and ``weight`` (rows) in ``n`` equal chunks, chunk k with bound slot slots[0]+k.

    ``layer`` holds the bounds (``w_lower/w_upper [G]``, ``a_lower/a_upper [G, 7]``, column b-2). All slots
    are quantized in one broadcast op, not a Python loop.
    """
    n = slots[1] - slots[0]
    w_lo, w_hi = layer.w_lower[slots[0]:slots[1]], layer.w_upper[slots[0]:slots[1]]
    w = quantize_weight(weight.reshape(n, -1), w_lo.view(n, 1), w_hi.view(n, 1), weight_levels).view_as(weight)
    a_lo = layer.a_lower[slots[0]:slots[1], bits - 2].view(1, n, 1, 1, 1)
    a_hi = layer.a_upper[slots[0]:slots[1], bits - 2].view(1, n, 1, 1, 1)
    N, C, H, W = x.shape
    a = quantize_activation(x.reshape(N, n, C // n, H, W), a_lo, a_hi, bits).view(N, C, H, W)
    return a, w


def _add_branch_state(layer: nn.Module, branches: int) -> None:
    """Learnable bounds per branch slot (weights [G]; activations [G, 7], column b-2) and the switch state."""
    layer.w_lower = nn.Parameter(torch.zeros(branches))
    layer.w_upper = nn.Parameter(torch.zeros(branches))
    layer.a_lower = nn.Parameter(torch.zeros(branches, BN_SLOTS))
    layer.a_upper = nn.Parameter(torch.zeros(branches, BN_SLOTS))
    layer.active_bits = None
    layer.calibrating = False  # set by ``calibrate``: the next forward initialises the bounds it uses
    layer._slices = {}  # bit-width -> ConvSlices, computed once


class MultiBranchConv(nn.Module):
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
        self.ci, self.co, self.stride, self.padding = ci, co, stride, padding
        self.partial, self.strategy = partial, strategy
        self.release_quirks, self.reads_stem, self.conv_impl = release_quirks, reads_stem, conv_impl
        self.row_offset = row_offset  # None: the CIFAR code's rule (see ``conv_slices``); the ImageNet models pass "co"
        self.weight = nn.Parameter(torch.empty(branches * co, ci, kernel_size, kernel_size))
        _add_branch_state(self, branches)

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
        out = self._branch_conv(x[:, sl.inputs[0]:sl.inputs[1]], self.weight[sl.rows[0]:sl.rows[1]], sl.slots, b)
        if sl.partial is None:
            return out
        rows, cols, inputs, slot = sl.partial
        weight = self.weight[rows[0]:rows[1], cols[0]:cols[1]]
        partial_out = self._branch_conv(x[:, inputs[0]:inputs[1]], weight, (slot, slot + 1), b)
        return torch.cat([out, partial_out], dim=1)

    def _branch_conv(self, x: torch.Tensor, weight: torch.Tensor, slots: tuple[int, int], bits: int) -> torch.Tensor:
        n = slots[1] - slots[0]
        if self.calibrating:
            self._calibrate(x, weight, slots, bits)
        a, w = quantize_slots(self, x, weight, slots, bits, weight_levels=4)
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


class MultiBranchDepthwiseConv(nn.Module):
    """G branches of a 3x3 depthwise conv over ``c`` channels in one weight ``[G*c, 1, 3, 3]`` (MobileNetV1).

    The release's ``QConv_Tra_Mulit`` (imagenet-models.md §1.3). Unlike ``MultiBranchConv`` its weights are
    **b-bit** at b bits (2^b levels, mapped to [-1, 1]), not 2-bit. The selected branches (plus, at 3 bits, the
    partial branch, slot 1) are quantized per slot with the same bounds layout as ``MultiBranchConv``, then
    concatenated and run as one depthwise conv. Calibration takes the weight bound from each slot's own
    branch chunk (no quirk 1 here).
    """

    # Stored bits per weight: the weight is used at every b of the bit list on 2^b levels, and those grids do
    # not nest (e.g. 255 is no multiple of 63), so serving them all exactly needs the latent FP32 weight.
    stored_weight_bits = 32

    def __init__(
        self, c: int, stride: int = 1, *, branches: int, partial_in: int, strategy: str, release_quirks: bool,
        reads_stem: bool = False,
    ):
        super().__init__()
        self.c, self.stride, self.padding = c, stride, 1
        self.partial_in, self.strategy = partial_in, strategy
        self.release_quirks, self.reads_stem = release_quirks, reads_stem
        self.weight = nn.Parameter(torch.empty(branches * c, 1, 3, 3))
        _add_branch_state(self, branches)

    def slices(self, bits: int) -> ConvSlices:
        if bits not in self._slices:
            self._slices[bits] = depthwise_slices(
                bits, self.strategy, self.c, partial_in=self.partial_in, reads_stem=self.reads_stem,
                release_quirks=self.release_quirks,
            )
        return self._slices[bits]

    def _pieces(self, bits: int) -> list[tuple[tuple[int, int], tuple[int, int], tuple[int, int]]]:
        """(input channels, weight rows, slots) of the main selection and, at 3 bits, of the partial branch."""
        sl = self.slices(bits)
        pieces = [(sl.inputs, sl.rows, sl.slots)]
        if sl.partial is not None:
            rows, _, inputs, slot = sl.partial
            pieces.append((inputs, rows, (slot, slot + 1)))
        return pieces

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b = self.active_bits
        acts, weights = [], []
        for (i0, i1), (r0, r1), slots in self._pieces(b):
            xs, ws = x[:, i0:i1], self.weight[r0:r1]
            if self.calibrating:
                self._calibrate(xs, ws, slots, b)
            a, w = quantize_slots(self, xs, ws, slots, b, weight_levels=2**b)
            acts.append(a)
            weights.append(w)
        a, w = (acts[0], weights[0]) if len(acts) == 1 else (torch.cat(acts, 1), torch.cat(weights, 0))
        return F.conv2d(a, w, None, self.stride, self.padding, 1, a.shape[1])

    def macs_and_bitops(self, out: torch.Tensor) -> tuple[int, int]:
        """One image's MACs (9 per output element) and BitOPs at b-bit weights x b-bit activations."""
        channels = sum(r1 - r0 for _, (r0, r1), _ in self._pieces(self.active_bits))
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


# ----------------------------------------------------------------------------------------------------------
# The method
# ----------------------------------------------------------------------------------------------------------

QUANTIZER_PARAMETERS = ("w_lower", "w_upper", "a_lower", "a_upper")


@dataclass
class Options:
    """MBQuant's manifest options (``method.options``)."""

    __pydantic_config__ = {"extra": "forbid"}
    selection: Literal["amortization", "serial"] = "amortization"
    variant: Literal["release", "clean"] = "release"
    distillation: Literal["inplace", "none"] = "inplace"
    branches: int = 4
    conv_impl: Literal["grouped", "dense"] = "grouped"  # same maths; grouped = the release's kernel choice


def check_bits(bits: list[int], options: Options) -> None:
    """Raise ValueError naming the bit-width this setting cannot serve."""
    for b in bits:
        if b < 2 or b > 2 * options.branches:
            raise ValueError(f"bit-width {b} is outside 2..{2 * options.branches} ({options.branches} branches)")
        if b % 2 and not (b == 3 and options.selection == "serial"):
            raise ValueError(
                f"bit-width {b} cannot be served: MBQuant serves odd bit-widths only at 3 bits, with "
                "selection: serial (the 2-3-4 setting)"
            )


def storage_bits(model: nn.Module) -> dict[str, int]:
    """Stored bits by component: all G branches at 2 bits per weight, FP32 for everything else.

    As released, every stored BN entry (all 7 bit-widths, the last conv's unused eighth) and every bound
    counts: they are in the checkpoint that serves the model. MobileNetV1's depthwise weights are used at
    b bits for every b, so they are stored at ``MultiBranchDepthwiseConv.stored_weight_bits`` (FP32).
    """
    from suite.methods.storage import stored_bits

    return stored_bits(model, lambda conv: getattr(conv, "stored_weight_bits", 2))


def build(arch: str, num_classes: int, bits: list[int], options: Options):
    """The trainer's view of MBQuant: model, bit list, quantizer parameters, loss policy, initialisation."""
    from suite.models import create_model
    from suite.trainer import Trainable

    check_bits(bits, options)
    model = create_model(
        f"mbquant_{arch}", num_classes=num_classes, bits=bits, branches=options.branches,
        strategy=options.selection, release_quirks=options.variant == "release", conv_impl=options.conv_impl,
    )
    return Trainable(
        model=model,
        bits=list(bits),
        quantizer_params=parameters_named(model, QUANTIZER_PARAMETERS),
        loss_policy=options.distillation,
        initialize=lambda m, batches: calibrate(m, bits, batches),
    )
