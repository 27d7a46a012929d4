"""Dedicated per-bit QAT: one independent model per bit-width, each trained on labels (baselines.md).

Every listed bit-width ``b`` gets its own single-branch network (own stem, body, BNs, classifier); nothing is
shared. ``DedicatedModels.set_bits(b)`` routes the forward to model ``b``. The shared trainer's joint step
then trains all of them on the same batch, each with its own CE loss (policy ``none``): their parameters
are disjoint, so this equals training them separately on the same batch sequence and schedule.

Choices not fixed by the spec:
- Quantizers: MBQuant's, generalised to b bits (``suite.layers.learned_bounds``): weights onto ``2**b`` levels
  in [-1, 1] between one learnable (lower, upper) pair per conv, no scale multiplied back (the BN absorbs it);
  input activations onto ``2**b`` levels in [0, 1] between one learnable pair per conv. At 1 bit the
  weights are {-1, 1} and the activations {0, 1}. Bounds are optimised by Adam (the ``quantizer`` group).
- Initialisation as MBQuant's ``calibrate``: kaiming weights, then for each bit-width in the listed order one
  train-mode forward under ``no_grad`` on a new batch; each conv sets its activation bounds to
  (min, 3*std/sqrt(1-2/pi)) of its input and its weight bounds to -/+ 3*std of its weight, then quantizes
  with them, so later layers calibrate on quantized inputs (that model's BN running stats update as usual).
- 32 in the bit list is a plain full-precision model (same network, no quantizer, nothing to calibrate).
- Shortcut 1x1 convs are quantized like every body conv (the suite's common model); stem conv and
  classifier stay FP.
- Storage: sum over models of b bits per body weight (32 for the FP model), plus each model's FP32 stem,
  classifier, BNs and bounds.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import partial

import torch
from torch import nn

from suite.costs import stored_bits
from suite.layers.learned_bounds import BOUND_NAMES, LearnedBoundsConv
from suite.losses import labels_only
from suite.contract import Method, Trainable
from suite.methods.common import calibrate, check_bit_list, parameters_named, sgd_and_adam
from suite.models import create_model
from suite.models.base import BitSwitchable


class DedicatedModels(BitSwitchable):
    """One independent network per bit-width in an ``nn.ModuleDict`` keyed by ``str(b)``."""

    def __init__(self, arch: str, num_classes: int, bits: list[int]):
        super().__init__()
        self.bits = list(bits)
        self.models = nn.ModuleDict({
            str(b): create_model(arch, num_classes=num_classes, bits=[b], conv=partial(LearnedBoundsConv, bits=b),
                                 norm=nn.BatchNorm2d)
            for b in self.bits
        })
        self.current = max(self.bits)

    def set_bits(self, bits: int) -> None:
        """Route the forward to model ``bits``; layers are not touched (each keeps its own bit-width)."""
        if bits not in self.bits:
            raise ValueError(f"bit-width {bits} cannot be served by this model (built for bits {self.bits})")
        self.current = bits

    def serving(self, bits: int) -> nn.Module:
        return self.models[str(bits)]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.models[str(self.current)](x)


@dataclass
class Options:
    """Dedicated QAT has no options (``method.options`` must be empty)."""

    __pydantic_config__ = {"extra": "forbid"}


def check_bits(bits: list[int], options: Options) -> None:
    check_bit_list(bits, "dedicated")


def storage_bits(model: DedicatedModels) -> dict[str, int]:
    """Sum over the models: b bits per body weight of model b (32 for FP), everything else FP32."""
    return stored_bits(model, lambda conv: conv.active_bits)


def build(arch: str, num_classes: int, bits: list[int], options: Options) -> Trainable:
    check_bits(bits, options)
    model = DedicatedModels(arch, num_classes, bits)
    return Trainable(
        model=model,
        bits=list(bits),
        loss=labels_only,
        param_groups=partial(sgd_and_adam, model, parameters_named(model, BOUND_NAMES)),
        initialize=lambda m, batches: calibrate(m, bits, batches),
    )


METHOD = Method("dedicated", Options, build, check_bits, storage_bits, "one independent QAT model per bit-width")
