"""MBQuant's branch-selection rule: which stored branches, weight rows, input channels and bound slots a
b-bit forward reads (docs/spec/mbquant.md §3-§5, imagenet-models.md §2).

``first_branch`` is the rule itself (serial vs amortization); ``conv_slices`` and ``depthwise_slices`` turn it
into the exact slices of one conv, release quirks included, which the multi-branch layers run and the tests
check against the slices measured on the release.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from suite.layers.base import MAX_BITS

BN_SLOTS = MAX_BITS - 1  # one BN / activation-bound column per bit-width 2..8, indexed b - 2


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
