"""AdaBits (Jin et al., CVPR 2020): shared weights on a nested grid, switchable BN and clipping level.

Follows baselines.md and the authors' release (deJQK/AdaBits, ``models/quant_ops.py`` with the CIFAR config
``apps/cifar10/q_resnet_uint8_train_val.yml``):
- quantized convs: ``suite.layers.adabits.AdaBitsConv`` (nested-grid weights rescaled to a fan-out kaiming
  std, as the release's CIFAR config ``rescale_conv: True, rescale_type: constant``; PACT activations with
  one clipping level per bit-width, ``switch_alpha: True``). The modified grid is not zero-mean
  ({-1, -1/2, 0, 1/2} at 2 bits, {-1, 0} at 1 bit; most normalised weights lie near 0, so at 2 bits the
  positive ones collapse to 0): the authors' README now recommends the centered grid "for convergent
  training". (The README lists
  ``rescale_conv=False`` for its ImageNet model zoo; the BN after every conv absorbs the scale either way at
  inference.)
- ``alpha_init``: ``"calibrate"`` (default): before training, one train-mode forward per bit-width (listed
  order, a new batch each, ``no_grad``) sets ``alpha_b = 3*std/sqrt(1-2/pi)`` of each conv's input, MBQuant's
  upper activation bound and initialisation pass; or a number, e.g. 8.0, the release's constant for convs
  (its CIFAR config trains 3-5 bits from scratch; the paper starts from an FP model). Not the default: from
  scratch at 2 bits, alpha = 8 zeroes most post-BN activations and alpha runs away (docs/spec/baselines.md).
- alpha is optimised with the weights by the trainer's SGD (lr, momentum and the suite's uniform weight
  decay), not by the quantizer Adam: the paper and release train it with the weights' SGD (the release
  exempts 1-D tensors from weight decay, PACT regularises alpha with L2; the suite's trainer applies its
  one weight decay to every SGD parameter). Adam at the quantizer lr (1e-4) would move alpha by ~1e-4 a step.
  So there is no quantizer group. Gradients reach alpha through the clip and through the ``/alpha`` and
  ``*alpha`` around the rounding (STE), as in the release's autograd graph.
- one BatchNorm per listed bit-width; loss: CE on labels for every bit-width, summed.

Suite conventions that differ from the release: FP stem conv and classifier (the release quantizes their
weights at the highest bit-width), the stem BN shared by all bit-widths, inputs normalised (the release feeds
0..255 pixels), training from scratch (the paper starts from an FP model), the suite's recipe.

Storage: if 32 is listed, the FP32 latent weights; otherwise only the highest bit-width's codes (lower
bit-widths drop least significant bits, the scale is recomputed from the codes), i.e. ``max(bits)`` bits per
body weight. Plus FP32 stem, classifier, one BN and (for b < 32) one alpha per bit-width and conv.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import Literal

from torch import nn

from suite.costs import stored_bits
from suite.layers.adabits import AdaBitsConv
from suite.layers.base import FP_BITS
from suite.layers.norms import PerBitBatchNorm
from suite.losses import labels_only
from suite.contract import Method, Trainable
from suite.methods.common import calibrate, check_bit_list, weight_groups
from suite.models import create_model


@dataclass
class Options:
    """AdaBits' manifest options (``method.options``)."""

    __pydantic_config__ = {"extra": "forbid"}
    grid: Literal["modified", "centered"] = "modified"
    alpha_init: Literal["calibrate"] | float = "calibrate"


def check_bits(bits: list[int], options: Options) -> None:
    check_bit_list(bits, "adabits")
    if options.alpha_init != "calibrate" and not options.alpha_init > 0:
        raise ValueError(f"adabits: alpha_init must be positive or 'calibrate', got {options.alpha_init}")


def stored_weight_bits(bits: list[int]) -> int:
    """FP32 latent weights if full precision is served, else the highest bit-width's codes."""
    return FP_BITS if FP_BITS in bits else max(bits)


def storage_bits(model: nn.Module) -> dict[str, int]:
    return stored_bits(model, lambda conv: stored_weight_bits(model.bits))


def build(arch: str, num_classes: int, bits: list[int], options: Options) -> Trainable:
    check_bits(bits, options)
    model = create_model(
        arch, num_classes=num_classes, bits=bits,
        conv=partial(AdaBitsConv, bits=bits, grid=options.grid, alpha_init=options.alpha_init),
        norm=partial(PerBitBatchNorm, bits=bits),
    )
    calibrating = options.alpha_init == "calibrate"
    return Trainable(
        model=model, bits=list(bits), loss=labels_only, param_groups=partial(weight_groups, model),
        initialize=(lambda m, batches: calibrate(m, bits, batches)) if calibrating else None,
    )


METHOD = Method("adabits", Options, build, check_bits, storage_bits,
                "nested-grid shared weights, per-bit BN and PACT clipping levels")
