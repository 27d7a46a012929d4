"""Stored bits of a model, by component, counted from its real parameters and buffers.

Shared by the baselines' ``storage_bits``. Each method says only how many bits one body weight is stored at
(``weight_bits(conv)``); everything else is FP32:

- ``weights``:   the weight of every quantized conv (a module with ``macs_and_bitops``) x its stored bits;
- ``bn``:        every BatchNorm's affine parameters and running mean / variance (``num_batches_tracked`` is
                 a training counter, not needed to serve the model, and is not counted);
- ``clip``:      every other parameter of a quantized conv (learnable bounds, clipping levels);
- ``fp_layers``: the parameters of full-precision ``nn.Conv2d`` / ``nn.Linear`` (stem conv, classifier).

A parameter or buffer that fits none of these raises, so a method cannot silently store something unaccounted.
"""
from __future__ import annotations

from typing import Callable

from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from suite.costs import FP_BITS

COMPONENTS = ("weights", "bn", "clip", "fp_layers")


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
        if hasattr(m, "macs_and_bitops"):
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
