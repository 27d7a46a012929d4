"""Pieces several methods share: bit-list checks, the quantizer-calibration pass, per-bit-width BN."""
from __future__ import annotations

import itertools
from typing import Iterable

import torch
from torch import nn

from suite.costs import FP_BITS

MAX_BITS = 8


def check_bit_list(bits: list[int], method: str, *, lowest: int = 1) -> None:
    """Bit-widths ``lowest``..8 and 32 (full precision), each at most once."""
    if not bits:
        raise ValueError(f"{method}: the bit list is empty")
    for b in bits:
        if b != FP_BITS and not lowest <= b <= MAX_BITS:
            raise ValueError(f"{method} cannot serve bit-width {b}: only {lowest}..{MAX_BITS} and {FP_BITS} "
                             "(full precision)")
    if len(set(bits)) != len(bits):
        raise ValueError(f"{method}: bit list {bits} repeats a bit-width")


@torch.no_grad()
def calibrate(model: nn.Module, bits: list[int], batches: Iterable) -> None:
    """Quantizer initialisation: one train-mode forward per bit-width, in the listed order, each on a new batch.

    Every layer with a ``calibrating`` flag initialises the quantizer parameters it uses from that forward's
    inputs and weights before quantizing, so later layers calibrate on already-quantized activations; BN
    running statistics of that bit-width update as in any train-mode forward.
    """
    layers = [m for m in model.modules() if hasattr(m, "calibrating")]
    model.train()
    batches = itertools.cycle(batches)  # a loader with fewer batches than bit-widths starts over
    for b in bits:
        x, _ = next(batches)
        model.set_bits(b)
        for m in layers:
            m.calibrating = True
        try:
            model(x)
        finally:
            for m in layers:
                m.calibrating = False


def parameters_named(model: nn.Module, names: Iterable[str]) -> list[nn.Parameter]:
    """Parameters whose own name (the last path component) is in ``names``, e.g. a method's quantizer bounds."""
    names = set(names)
    return [p for n, p in model.named_parameters() if n.rsplit(".", 1)[-1] in names]


class PerBitBatchNorm(nn.Module):
    """One independent ``BatchNorm2d`` per listed bit-width, keyed by ``str(b)``; ``active_bits`` picks it."""

    def __init__(self, channels: int, bits: list[int]):
        super().__init__()
        self.bn = nn.ModuleDict({str(b): nn.BatchNorm2d(channels) for b in bits})
        self.active_bits = max(bits)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn[str(self.active_bits)](x)
