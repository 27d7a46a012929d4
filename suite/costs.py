"""What a model costs, measured from the model itself: MACs / BitOPs of a real forward, and stored bits.

BitOPs = sum over quantized layers of w_bits * a_bits * MACs of what actually runs (MBQuant's 3-bit partial
branch included); full-precision layers (stem, classifier) are reported separately and counted at 32 x 32.
A quantized layer reports its own cost (``QuantizedLayer.macs_and_bitops``), so nothing here knows a method.

Stored bits, by component (``COMPONENTS``); a method says only how many bits one body weight is stored at:

- ``weights``:   the weight of every quantized layer x its stored bits;
- ``bn``:        every BatchNorm's affine parameters and running mean / variance (``num_batches_tracked`` is
                 a training counter, not needed to serve the model, and is not counted);
- ``clip``:      every other parameter of a quantized layer (learnable bounds, clipping levels, steps);
- ``fp_layers``: the parameters of full-precision ``nn.Conv2d`` / ``nn.Linear`` (stem conv, classifier).

A parameter or buffer that fits none of these raises, so a method cannot silently store something unaccounted.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from suite.layers.base import FP_BITS, QuantizedLayer, conv_macs

COMPONENTS = ("weights", "bn", "clip", "fp_layers")


@dataclass
class Cost:
    quantized_macs: int
    quantized_bitops: int
    fp_macs: int

    @property
    def fp_bitops(self) -> int:
        return FP_BITS * FP_BITS * self.fp_macs


@torch.no_grad()
def measure_cost(model: nn.Module, bits, input_size: tuple[int, int, int]) -> Cost:
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
        if isinstance(m, QuantizedLayer):
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


def stored_bits(model: nn.Module, weight_bits: Callable[[nn.Module], int]) -> dict[str, int]:
    """Bits stored to serve every bit-width of ``model``, by component (keys ``COMPONENTS``, zeros kept)."""
    out = dict.fromkeys(COMPONENTS, 0)
    counted: set[int] = set()

    def add(component: str, tensors, bits: int = FP_BITS) -> None:
        for t in tensors:
            if t is not None and id(t) not in counted:
                counted.add(id(t))
                out[component] += bits * t.numel()

    for m in model.modules():
        if isinstance(m, QuantizedLayer):
            add("weights", [m.weight], weight_bits(m))
            add("clip", m.parameters())
        elif isinstance(m, _BatchNorm):
            add("bn", [m.weight, m.bias, m.running_mean, m.running_var])
        elif isinstance(m, (nn.Conv2d, nn.Linear)):
            add("fp_layers", m.parameters(recurse=False))
    unknown = [n for n, p in model.named_parameters() if id(p) not in counted]
    unknown += [n for n, b in model.named_buffers() if id(b) not in counted and not n.endswith("num_batches_tracked")]
    if unknown:
        raise ValueError(f"storage accounting does not know {unknown}")
    return out
