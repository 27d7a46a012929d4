"""Any-Precision DNNs (Yu et al., AAAI 2021): shared latent weights, DoReFa quantizers, switchable BN.

Follows baselines.md and the authors' release (SHI-Labs/Any-Precision-DNNs, ``models/quan_ops.py``):
- quantized convs: ``suite.layers.dorefa.DoReFaConv`` (DoReFa weights times mean|w|, ``clamp(x, 0, 1)``
  activations; at 32 bits the same latent weights through the transform without rounding, so the b-bit
  weights approximate the FP path's; the suite's body convs receive post-ReLU inputs, as the release's do).
- one BatchNorm per listed bit-width (``PerBitBatchNorm``), nothing else per bit-width; no quantizer
  parameters (SGD only), no initialisation pass (kaiming weights as the model sets).
- ``distillation``: ``recursive`` (the paper's: highest bit on labels, each lower one soft-CE against the
  next higher's detached softmax); ``hard`` (CE on labels for every bit-width); ``soft`` (highest bit as
  teacher, the suite's in-place loss ``0.5*(softCE + CE)``, whereas the release's commented-out soft variant
  is soft-CE alone).
- These need the largest bit-width run first, so with ``recursive``/``soft`` the list must be ascending
  (the release sorts it); the trainer runs it in reverse.

Suite conventions that differ from the release: the suite's single-branch models (on CIFAR the standard
post-activation ResNet-20, not the 5x-wide pre-activation one; ResNet-18 / MobileNetV1 on ImageNet) with FP
stem and classifier, its 1x1 shortcut convs quantized (the release keeps its
stride-2 shortcut conv FP) and its stem BN shared by all bit-widths.

Storage: the shared latent weights at FP32. The paper serves lower bit-widths by truncating the stored
codes' least significant bits, but the released quantizer (the one trained and evaluated) rounds the latent
weights onto each ``2^b - 1``-step grid; those grids are not nested in general (3 does not divide 255) and
re-rounding stored 8-bit values is not the same as rounding the latent weights (double rounding), so the
evaluated b-bit weights can only be reproduced from the FP32 weights. Plus FP32 stem, classifier and one BN
per bit-width.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import Literal

from suite.layers.dorefa import DoReFaConv
from suite.layers.norms import PerBitBatchNorm
from suite.losses import inplace_distillation, labels_only, recursive_distillation
from suite.contract import Method, Trainable, fp32_weight_storage
from suite.methods.common import check_bit_list, weight_groups
from suite.models import create_model

LOSSES = {"recursive": recursive_distillation, "hard": labels_only, "soft": inplace_distillation}


@dataclass
class Options:
    """Any-Precision's manifest options (``method.options``)."""

    __pydantic_config__ = {"extra": "forbid"}
    distillation: Literal["recursive", "hard", "soft"] = "recursive"


def check_bits(bits: list[int], options: Options) -> None:
    check_bit_list(bits, "any-precision")
    if options.distillation != "hard" and list(bits) != sorted(bits):
        raise ValueError(
            f"any-precision with {options.distillation} distillation needs an ascending bit list (the highest "
            f"bit-width teaches and is run first), got {bits}"
        )


storage_bits = fp32_weight_storage  # latent FP32 body weights (module docstring); FP32 stem, classifier, BNs


def build(arch: str, num_classes: int, bits: list[int], options: Options) -> Trainable:
    check_bits(bits, options)
    model = create_model(arch, num_classes=num_classes, bits=bits, conv=DoReFaConv,
                         norm=partial(PerBitBatchNorm, bits=bits))
    return Trainable(model=model, bits=list(bits), loss=LOSSES[options.distillation],
                     param_groups=partial(weight_groups, model))


METHOD = Method("anyprecision", Options, build, check_bits, storage_bits,
                "shared latent weights, DoReFa quantizers, per-bit BN, recursive distillation")
