"""MBQuant (Zhong et al., arXiv 2305.08117): G weight branches, always 2-bit, shared by every bit-width.

A b-bit forward runs b/2 branches with 2-bit weights and b-bit input activations, so it costs
(b/2) * 2 * b = b*b BitOPs per MAC: exactly one b-bit network. The whole file follows
../shared/spec/mbquant.md; by default it reproduces the authors' released implementation, quirks included
(``variant: release``), and ``variant: clean`` aligns them (see ``ConvSlices`` and the calibration below).

Reading order: the branch-selection rule (``first_branch``, ``conv_slices``), the two layers built on it
(``MultiBranchConv``, ``SwitchableBatchNorm``), then the method's entry point ``build``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Literal

import torch
import torch.nn.functional as F
from torch import nn

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
) -> ConvSlices:
    """The slices a conv with per-branch ``ci -> co`` channels reads at ``bits``.

    ``partial`` = (partial outputs, partial inputs) of this conv at 3 bits. ``reads_stem``: the first body
    conv, which picks its input channels out of the G*ci-wide stem output instead of using its input whole.
    ``release_quirks`` reproduces the release: rows start at ``first*ci`` instead of ``first*co`` (quirk 2,
    misaligned where ci != co) and bounds are indexed by slot instead of by branch (quirk 3).
    """
    if bits % 2 == 0:
        n, first = bits // 2, first_branch(bits, strategy)
        row0 = first * (ci if release_quirks else co)
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


# ----------------------------------------------------------------------------------------------------------
# Layers
# ----------------------------------------------------------------------------------------------------------


class MultiBranchConv(nn.Module):
    """G branches of a ``ci -> co`` conv in one weight ``[G*co, ci, k, k]`` (branch g = rows g*co..(g+1)*co).

    At b bits the selected rows run as one grouped conv (groups = b/2) on b-bit inputs, every branch slot
    with its own learnable weight bounds (``w_lower/w_upper[G]``) and activation bounds
    (``a_lower/a_upper[G, 7]``, column b-2). Quantization of all slots is one broadcast op, not a Python loop.
    """

    def __init__(
        self, ci: int, co: int, kernel_size: int, stride: int = 1, padding: int = 0, *,
        branches: int, partial: tuple[int, int], strategy: str, release_quirks: bool, reads_stem: bool = False,
        conv_impl: str = "grouped",
    ):
        super().__init__()
        self.ci, self.co, self.stride, self.padding = ci, co, stride, padding
        self.partial, self.strategy = partial, strategy
        self.release_quirks, self.reads_stem, self.conv_impl = release_quirks, reads_stem, conv_impl
        self.weight = nn.Parameter(torch.empty(branches * co, ci, kernel_size, kernel_size))
        self.w_lower = nn.Parameter(torch.zeros(branches))
        self.w_upper = nn.Parameter(torch.zeros(branches))
        self.a_lower = nn.Parameter(torch.zeros(branches, BN_SLOTS))
        self.a_upper = nn.Parameter(torch.zeros(branches, BN_SLOTS))
        self.active_bits: int | None = None
        self.calibrating = False  # set by ``calibrate``: the next forward initialises the bounds it uses
        self._slices: dict[int, ConvSlices] = {}

    def slices(self, bits: int) -> ConvSlices:
        if bits not in self._slices:
            self._slices[bits] = conv_slices(
                bits, self.strategy, self.ci, self.co, partial=self.partial,
                reads_stem=self.reads_stem, release_quirks=self.release_quirks,
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
        w_lo, w_hi = self.w_lower[slots[0]:slots[1]], self.w_upper[slots[0]:slots[1]]
        w = quantize_weight(weight.reshape(n, -1), w_lo.view(n, 1), w_hi.view(n, 1)).view_as(weight)
        a_lo = self.a_lower[slots[0]:slots[1], bits - 2].view(1, n, 1, 1, 1)
        a_hi = self.a_upper[slots[0]:slots[1], bits - 2].view(1, n, 1, 1, 1)
        N, C, H, W = x.shape
        a = quantize_activation(x.reshape(N, n, C // n, H, W), a_lo, a_hi, bits).view(N, C, H, W)
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


@torch.no_grad()
def calibrate(model: nn.Module, bits: list[int], batches: Iterable) -> None:
    """Quantizer initialisation: one train-mode forward per bit-width, in the listed order, each on a new batch.

    Every conv sets the bounds of the slots it uses from that forward's inputs and weights before quantizing,
    so later layers calibrate on already-quantized activations; BN running statistics of that bit-width
    (and the shared stem BN) update as in any train-mode forward.
    """
    convs = [m for m in model.modules() if isinstance(m, MultiBranchConv)]
    model.train()
    batches = iter(batches)
    for b in bits:
        x, _ = next(batches)
        model.set_bits(b)
        for conv in convs:
            conv.calibrating = True
        try:
            model(x)
        finally:
            for conv in convs:
                conv.calibrating = False


def storage_bits(model: nn.Module) -> dict[str, int]:
    """Stored bits by component: all G branches at 2 bits per weight, FP32 for everything else.

    As released, every stored BN entry (all 7 bit-widths, the last conv's unused eighth) and every bound
    counts: they are in the checkpoint that serves the model.
    """
    from suite.methods.storage import stored_bits

    return stored_bits(model, lambda conv: 2)


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
        quantizer_params=[p for n, p in model.named_parameters() if n.rsplit(".", 1)[-1] in QUANTIZER_PARAMETERS],
        loss_policy=options.distillation,
        initialize=lambda m, batches: calibrate(m, bits, batches),
    )
