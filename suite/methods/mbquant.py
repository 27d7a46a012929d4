"""MBQuant (Zhong et al., arXiv 2305.08117): G weight branches, always 2-bit, shared by every bit-width.

The layers and the branch-selection rule live in ``suite.layers`` (``branch_selection``, ``multibranch``), the
networks in ``suite.models`` (``mbquant_*``). This file is the method: its options, the bit-widths it can serve,
its storage, and what it hands the trainer. By default it reproduces the authors' released implementation,
quirks included (``variant: release``); ``variant: clean`` aligns them (docs/spec/mbquant.md).
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import Literal

from torch import nn

from suite.costs import stored_bits
from suite.layers.multibranch import BOUND_NAMES
from suite.losses import inplace_distillation, labels_only
from suite.contract import Method, Trainable
from suite.methods.common import calibrate, parameters_named, sgd_and_adam
from suite.models import create_model, model_name

TOPOLOGY = "mbquant"  # its multi-branch networks, registered in suite.models under this topology
LOSSES = {"inplace": inplace_distillation, "none": labels_only}


@dataclass
class Options:
    """MBQuant's manifest options (``method.options``)."""

    __pydantic_config__ = {"extra": "forbid"}
    selection: Literal["amortization", "serial"] = "amortization"
    variant: Literal["release", "clean"] = "release"
    distillation: Literal["inplace", "none"] = "inplace"
    branches: int = 4
    conv_impl: Literal["grouped", "dense"] = "grouped"  # same maths; grouped = the release's kernel choice


def check_bits(bits: list[int], options: Options) -> None:
    """Raise ValueError naming the bit-width this setting cannot serve."""
    for b in bits:
        if b < 2 or b > 2 * options.branches:
            raise ValueError(f"bit-width {b} is outside 2..{2 * options.branches} ({options.branches} branches)")
        if b % 2 and not (b == 3 and options.selection == "serial"):
            raise ValueError(
                f"bit-width {b} cannot be served: MBQuant serves odd bit-widths only at 3 bits, with "
                "selection: serial (the 2-3-4 setting)"
            )


def storage_bits(model: nn.Module) -> dict[str, int]:
    """Stored bits by component: all G branches at 2 bits per weight, FP32 for everything else.

    As released, every stored BN entry (all 7 bit-widths, the last conv's unused eighth) and every bound
    counts: they are in the checkpoint that serves the model. MobileNetV1's depthwise weights are used at
    b bits for every b, so they are stored at ``MultiBranchDepthwiseConv.stored_weight_bits`` (FP32).
    """
    return stored_bits(model, lambda conv: getattr(conv, "stored_weight_bits", 2))


def build(arch: str, num_classes: int, bits: list[int], options: Options) -> Trainable:
    """The trainer's view of MBQuant: SGD on the weights, Adam on the bounds, calibration, in-place distillation."""
    check_bits(bits, options)
    model = create_model(
        model_name(arch, TOPOLOGY), num_classes=num_classes, bits=bits, branches=options.branches,
        strategy=options.selection, release_quirks=options.variant == "release", conv_impl=options.conv_impl,
    )
    return Trainable(
        model=model,
        bits=list(bits),
        loss=LOSSES[options.distillation],
        param_groups=partial(sgd_and_adam, model, parameters_named(model, BOUND_NAMES)),
        initialize=lambda m, batches: calibrate(m, bits, batches),
    )


METHOD = Method("mbquant", Options, build, check_bits, storage_bits,
                "multi-branch 2-bit weights, amortized branch selection, in-place distillation",
                topology=TOPOLOGY)
