"""What a method is to the rest of the suite: a ``Method`` (its registry entry) that builds a ``Trainable``.

A ``Trainable`` carries everything method-specific the trainer needs, as behaviour: the model, its bit list,
the loss, the optimiser parameter groups, the optimisers and learning-rate schedule built over them (by default
SGD / Adam by group and a per-epoch cosine) and optional hooks. The trainer knows no method.

This module is a leaf: it imports torch and the suite's leaf modules only (never ``suite.methods`` or
``suite.models``), so the trainer, and anything else that only speaks the contract, loads no method.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Iterable

import torch
from torch import nn

from suite.costs import stored_bits
from suite.layers.base import FP_BITS
from suite.losses import LossFn
from suite.recipe import Recipe

SINGLE_BRANCH = "single_branch"  # the topology of the architectures built from a method's conv / norm factories


@dataclass
class ParamGroup:
    """One optimiser parameter group: which parameters, which optimiser, learning rate, weight decay."""

    name: str  # e.g. "weights", "weights, no decay", "quantizer"
    params: list[nn.Parameter]
    optimizer: str  # "sgd" or "adam" for the default optimisers (``make_optimizers``); a method's own may use others
    lr: float
    weight_decay: float = 0.0
    momentum: float = 0.0  # SGD only

    def torch_group(self) -> dict[str, Any]:
        group = {"params": self.params, "lr": self.lr, "weight_decay": self.weight_decay}
        return group | {"momentum": self.momentum} if self.optimizer == "sgd" else group


OPTIMIZERS = {"sgd": torch.optim.SGD, "adam": torch.optim.Adam}


def make_optimizers(groups: list[ParamGroup]) -> list[torch.optim.Optimizer]:
    """The default optimisers: one per kind named in ``groups`` (``OPTIMIZERS``), in order of first appearance,
    holding its groups."""
    kinds = dict.fromkeys(g.optimizer for g in groups if g.params)
    return [OPTIMIZERS[kind]([g.torch_group() for g in groups if g.optimizer == kind and g.params]) for kind in kinds]


def cosine_schedule(optimizer: torch.optim.Optimizer, recipe: Recipe) -> torch.optim.lr_scheduler.LRScheduler:
    """The default schedule: cosine from each group's learning rate to 0 over ``recipe.epochs``."""
    return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=recipe.epochs, eta_min=0)


@dataclass
class Trainable:
    """What a method hands the trainer."""

    model: nn.Module  # exposes set_bits(b)
    bits: list[int]  # as listed in the manifest; the joint step runs them in reverse order
    loss: LossFn
    param_groups: Callable[[Recipe], list[ParamGroup]]  # every trainable parameter in exactly one group
    initialize: Callable[[nn.Module, Iterable], None] | None = None  # e.g. quantizer calibration on batches
    on_epoch_start: Callable[[int, int], None] | None = None  # (epoch, epochs), e.g. a staged schedule
    # The optimisers over the parameter groups, and each one's learning-rate schedule, stepped once per epoch
    # (its ``last_epoch`` is the number of epochs done, which a resumed run checks).
    optimizers: Callable[[list[ParamGroup]], list[torch.optim.Optimizer]] = make_optimizers
    schedule: Callable[[torch.optim.Optimizer, Recipe], torch.optim.lr_scheduler.LRScheduler] = cosine_schedule

    def optimizers_for(self, recipe: Recipe) -> list[torch.optim.Optimizer]:
        """This method's optimisers over its parameter groups under ``recipe``."""
        return self.optimizers(self.param_groups(recipe))

    def params_of(self, name: str, recipe: Recipe | None = None) -> list[nn.Parameter]:
        """The parameters of the groups called ``name`` (which parameters do not depend on the recipe)."""
        return [p for g in self.param_groups(recipe or Recipe()) if g.name == name for p in g.params]


def _any_bits(bits: list[int], options: Any) -> None:
    """Default bit check: anything the model can be built with."""


def fp32_weight_storage(model: nn.Module) -> dict[str, int]:
    """Stored bits when every quantized layer keeps its latent FP32 weight (the default: a method that stores
    fewer bits says so)."""
    return stored_bits(model, lambda layer: FP_BITS)


@dataclass(frozen=True)
class Method:
    """A method's registry entry.

    ``Options`` is a dataclass of its ``method.options`` (``__pydantic_config__ = {"extra": "forbid"}`` makes
    an unknown option an error); ``build(arch, num_classes, bits, options) -> Trainable``;
    ``check_bits(bits, options)`` raises ValueError for a bit list it cannot serve; ``storage_bits(model)`` gives
    stored bits by component (``suite.costs.COMPONENTS``). ``topology`` names the family of networks it builds
    on: every architecture registered with that topology (``suite.models.register_model``) is a ``model.arch``
    it accepts, looked up when asked (``suite.methods.supported_archs``), so one registered later is accepted.
    """

    name: str
    Options: type
    build: Callable[..., Trainable]
    check_bits: Callable[[list[int], Any], None] = _any_bits
    storage_bits: Callable[[nn.Module], dict[str, int]] = fp32_weight_storage
    description: str = ""
    topology: str = SINGLE_BRANCH
