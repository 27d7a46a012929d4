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

from suite.layers.base import FP_BITS, SingleBranchConv
from suite.layers.quant import discretize


class DoReFaConv(SingleBranchConv):
    def _weight_at(self, bits: int) -> torch.Tensor:
        """The release's order of operations."""
        scale = self.weight.abs().mean().detach()
        t = torch.tanh(self.weight)
        if bits == FP_BITS:
            return t / t.abs().max() * scale
        t = t / 2 / t.abs().max() + 0.5
        return (2 * discretize(t, 2**bits) - 1) * scale

    def _input_at(self, x: torch.Tensor, bits: int) -> torch.Tensor:
        return x if bits == FP_BITS else discretize(torch.clamp(x, 0, 1), 2**bits)
