"""Cost accounting measured on a model's real forward: MACs and BitOPs per bit-width.

BitOPs = sum over quantized layers of w_bits * a_bits * MACs of what actually runs (MBQuant's 3-bit partial
branch included); full-precision layers (stem, classifier) are reported separately and counted at 32 x 32.
A quantized layer reports its own cost through a ``macs_and_bitops(output) -> (macs, bitops)`` method, so this
counter needs no knowledge of any method; plain ``nn.Conv2d`` / ``nn.Linear`` count as full precision.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

FP_BITS = 32


def conv_macs(out: torch.Tensor, weight_shape) -> int:
    """MACs of one image through a (grouped) conv: each output element costs in_per_group * kh * kw."""
    return out[0].numel() * weight_shape[1] * weight_shape[2] * weight_shape[3]


class SameBitsCost:
    """Mixin for a quantized conv whose weights and input activations are both at ``active_bits``."""

    def macs_and_bitops(self, out: torch.Tensor) -> tuple[int, int]:
        macs = conv_macs(out, self.weight.shape)
        return macs, self.active_bits * self.active_bits * macs


@dataclass
class Cost:
    quantized_macs: int
    quantized_bitops: int
    fp_macs: int

    @property
    def fp_bitops(self) -> int:
        return FP_BITS * FP_BITS * self.fp_macs


@torch.no_grad()
def measure_cost(model: nn.Module, bits: int, input_size: tuple[int, int, int]) -> Cost:
    """MACs/BitOPs of one image's forward at ``bits`` (eval mode, one dummy image of ``input_size``)."""
    quant = {"macs": 0, "bitops": 0}
    fp = {"macs": 0}
    hooks = []

    def on_quantized(module, inputs, out):
        macs, bitops = module.macs_and_bitops(out)
        quant["macs"] += macs
        quant["bitops"] += bitops

    def on_fp(module, inputs, out):
        if isinstance(module, nn.Conv2d):
            fp["macs"] += conv_macs(out, module.weight.shape)
        else:
            fp["macs"] += module.in_features * module.out_features

    for m in model.modules():
        if hasattr(m, "macs_and_bitops"):
            hooks.append(m.register_forward_hook(on_quantized))
        elif isinstance(m, (nn.Conv2d, nn.Linear)):
            hooks.append(m.register_forward_hook(on_fp))
    was_training = model.training
    try:
        model.eval()
        model.set_bits(bits)
        device = next(model.parameters()).device
        model(torch.zeros(1, *input_size, device=device))
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    return Cost(quant["macs"], quant["bitops"], fp["macs"])
