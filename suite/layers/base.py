"""The one interface every quantized layer offers, and the cost of a layer whose weights and inputs share a bit-width.

``QuantizedLayer`` is what the cost counter, the storage accounting and the switching-error analysis use;
a full-precision ``nn.Conv2d`` / ``nn.Linear`` is not one (it counts as a full-precision layer).
"""
from __future__ import annotations

from typing import Protocol, runtime_checkable

import torch
from torch import nn

FP_BITS = 32  # a bit-width of 32 means full precision: no quantizer runs
MAX_BITS = 8  # the largest quantized bit-width a layer serves


@runtime_checkable
class QuantizedLayer(Protocol):
    """A layer that quantizes its weight and its input at ``active_bits``.

    The two ``quantized_*`` views are in the layer's *stored layout*: the stored weight's shape, and the input
    laid out as ``input_layout`` gives it. Elements that a bit-width does not read are NaN, so two bit-widths
    compare element by element over what both read.
    """

    weight: nn.Parameter
    active_bits: int | None

    def quantized_weight(self, bits: int) -> torch.Tensor:
        """The weight the layer multiplies with at ``bits``, in the stored weight's shape."""

    def quantized_input(self, x: torch.Tensor, bits: int) -> torch.Tensor:
        """``x`` (stored layout) as the layer quantizes it at ``bits``."""

    def input_layout(self, x: torch.Tensor, bits: int) -> torch.Tensor:
        """The input of a ``bits`` forward, placed in the stored layout."""

    def output_layout(self, y: torch.Tensor, bits: int) -> torch.Tensor:
        """The output of a ``bits`` forward, placed in the stored layout."""

    def macs_and_bitops(self, out: torch.Tensor) -> tuple[int, int]:
        """One image's MACs and BitOPs through what ran, given the layer's output."""


def conv_macs(out: torch.Tensor, weight_shape) -> int:
    """MACs of one image through a (grouped) conv: each output element costs in_per_group * kh * kw."""
    return out[0].numel() * weight_shape[1] * weight_shape[2] * weight_shape[3]


def is_depthwise(module: nn.Module) -> bool:
    """A depthwise conv: one input channel per group (a layer that is no ``nn.Conv2d`` says so itself)."""
    if getattr(module, "depthwise_conv", False) is True:
        return True
    return isinstance(module, nn.Conv2d) and module.groups == module.in_channels > 1


class SingleBranchConv(nn.Conv2d):
    """Base of the baselines' quantized convs: one weight, weight and input both at ``active_bits``.

    Subclasses define ``_weight_at(bits)`` and ``_input_at(x, bits)``; the stored layout is the plain one.
    """

    active_bits: int | None

    def __init__(self, ci: int, co: int, kernel_size: int, stride: int = 1, padding: int = 0, groups: int = 1):
        super().__init__(ci, co, kernel_size, stride, padding, groups=groups, bias=False)
        self.active_bits = None

    def _weight_at(self, bits: int) -> torch.Tensor:
        raise NotImplementedError

    def _input_at(self, x: torch.Tensor, bits: int) -> torch.Tensor:
        raise NotImplementedError

    def quantized_weight(self, bits: int) -> torch.Tensor:
        return self._weight_at(bits)

    def quantized_input(self, x: torch.Tensor, bits: int) -> torch.Tensor:
        return self._input_at(x, bits)

    def input_layout(self, x: torch.Tensor, bits: int) -> torch.Tensor:
        return x

    def output_layout(self, y: torch.Tensor, bits: int) -> torch.Tensor:
        return y

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b = self.active_bits
        return self._conv_forward(self._input_at(x, b), self._weight_at(b), None)

    def macs_and_bitops(self, out: torch.Tensor) -> tuple[int, int]:
        macs = conv_macs(out, self.weight.shape)
        return macs, self.active_bits * self.active_bits * macs
