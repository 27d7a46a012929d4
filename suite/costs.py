"""Cost accounting measured on a model's real forward: MACs and BitOPs per bit-width.

BitOPs = sum over quantized convs of w_bits * a_bits * MACs of the rows actually run (the 3-bit partial
branch included); full-precision layers (stem, classifier) are reported separately and counted at 32 x 32.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from suite.methods.mbquant import MultiBranchConv

FP_BITS = 32


@dataclass
class Cost:
    quantized_macs: int
    quantized_bitops: int
    fp_macs: int

    @property
    def fp_bitops(self) -> int:
        return FP_BITS * FP_BITS * self.fp_macs


def _conv_macs(out: torch.Tensor, weight_shape: torch.Size) -> int:
    # Each output element of a (grouped) conv costs in_channels_per_group * kh * kw MACs.
    return out[0].numel() * weight_shape[1] * weight_shape[2] * weight_shape[3]


@torch.no_grad()
def measure_cost(model: nn.Module, bits: int, input_size: tuple[int, int, int]) -> Cost:
    """MACs/BitOPs of one image's forward at ``bits`` (eval mode, one dummy image of ``input_size``)."""
    quant = {"macs": 0, "bitops": 0}
    fp = {"macs": 0}
    hooks = []

    def on_mbconv(module: MultiBranchConv, inputs, out):
        sl = module.slices(bits)
        k = module.weight.shape[2] * module.weight.shape[3]
        n, (_, _, h, w) = sl.groups, out.shape
        macs = n * module.co * h * w * module.ci * k
        if sl.partial is not None:
            rows, cols, _, _ = sl.partial
            macs += (rows[1] - rows[0]) * h * w * (cols[1] - cols[0]) * k
        quant["macs"] += macs
        quant["bitops"] += macs * 2 * bits  # 2-bit weights, b-bit activations

    def on_fp(module, inputs, out):
        if isinstance(module, nn.Conv2d):
            fp["macs"] += _conv_macs(out, module.weight.shape)
        else:
            fp["macs"] += module.in_features * module.out_features

    for m in model.modules():
        if isinstance(m, MultiBranchConv):
            hooks.append(m.register_forward_hook(on_mbconv))
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
