"""Per-bit-width BatchNorm: one independent ``BatchNorm2d`` per listed bit-width (the baselines' switchable BN)."""
from __future__ import annotations

import torch
from torch import nn


class PerBitBatchNorm(nn.Module):
    """Keyed by ``str(b)``; ``active_bits`` picks the one that runs."""

    def __init__(self, channels: int, bits: list[int]):
        super().__init__()
        self.bn = nn.ModuleDict({str(b): nn.BatchNorm2d(channels) for b in bits})
        self.active_bits = max(bits)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn[str(self.active_bits)](x)
