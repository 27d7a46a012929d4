"""Pieces several methods share: bit-list checks, the quantizer-calibration pass, the usual parameter groups."""
from __future__ import annotations

import itertools
from typing import Iterable

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from suite.layers.base import FP_BITS, MAX_BITS, is_depthwise
from suite.contract import ParamGroup
from suite.recipe import Recipe


def check_bit_list(bits: list[int], method: str, *, lowest: int = 1) -> None:
    """Bit-widths ``lowest``..8 and 32 (full precision), each at most once."""
    if not bits:
        raise ValueError(f"{method}: the bit list is empty")
    for b in bits:
        if b != FP_BITS and not lowest <= b <= MAX_BITS:
            raise ValueError(f"{method} cannot serve bit-width {b}: only {lowest}..{MAX_BITS} and {FP_BITS} "
                             "(full precision)")
    if len(set(bits)) != len(bits):
        raise ValueError(f"{method}: bit list {bits} repeats a bit-width")


@torch.no_grad()
def calibrate(model: nn.Module, bits: list[int], batches: Iterable) -> None:
    """Quantizer initialisation: one train-mode forward per bit-width, in the listed order, each on a new batch.

    Every layer with a ``calibrating`` flag initialises the quantizer parameters it uses from that forward's
    inputs and weights before quantizing, so later layers calibrate on already-quantized activations; BN
    running statistics of that bit-width update as in any train-mode forward.
    """
    layers = [m for m in model.modules() if hasattr(m, "calibrating")]
    model.train()
    batches = itertools.cycle(batches)  # a loader with fewer batches than bit-widths starts over
    for b in bits:
        x, _ = next(batches)
        model.set_bits(b)
        for m in layers:
            m.calibrating = True
        try:
            model(x)
        finally:
            for m in layers:
                m.calibrating = False


def parameters_named(model: nn.Module, names: Iterable[str]) -> list[nn.Parameter]:
    """Parameters whose own name (the last path component) is in ``names``, e.g. a method's quantizer bounds."""
    names = set(names)
    return [p for n, p in model.named_parameters() if n.rsplit(".", 1)[-1] in names]


def weight_groups(model: nn.Module, recipe: Recipe, exclude: Iterable[nn.Parameter] = ()) -> list[ParamGroup]:
    """SGD groups of every parameter not in ``exclude``: the recipe's weight decay, none on BN affine parameters
    or depthwise conv weights where ``recipe.no_weight_decay_on`` says so (MobileNetV1's recipe)."""
    excluded = {id(p) for p in exclude}
    exempt: set[int] = set()
    for m in model.modules():
        if "bn" in recipe.no_weight_decay_on and isinstance(m, _BatchNorm):
            exempt |= {id(p) for p in m.parameters(recurse=False)}
        if "depthwise" in recipe.no_weight_decay_on and is_depthwise(m):
            exempt.add(id(m.weight))
    params = [p for p in model.parameters() if id(p) not in excluded]
    groups = [
        ParamGroup("weights", [p for p in params if id(p) not in exempt], "sgd", recipe.lr, recipe.weight_decay,
                   recipe.momentum),
        ParamGroup("weights, no decay", [p for p in params if id(p) in exempt], "sgd", recipe.lr, 0.0,
                   recipe.momentum),
    ]
    return [g for g in groups if g.params]


def sgd_and_adam(model: nn.Module, quantizer_params: list[nn.Parameter], recipe: Recipe) -> list[ParamGroup]:
    """The released MBQuant recipe: SGD on the weights (``weight_groups``), Adam at ``recipe.lr_quant`` on the
    quantizer parameters."""
    groups = weight_groups(model, recipe, exclude=quantizer_params)
    if quantizer_params:
        groups.append(ParamGroup("quantizer", list(quantizer_params), "adam", recipe.lr_quant))
    return groups
