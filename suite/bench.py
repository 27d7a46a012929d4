"""One training step of the real trainer as a zero-argument callable, for benchmarks and outside harnesses.

``make_train_step(...)()`` runs exactly ``suite.trainer.train_step`` (every bit-width, every optimiser) on one
fixed batch, after the method's own initialisation on that batch: what ``fit`` runs each iteration.
"""
from __future__ import annotations

from typing import Any, Callable

import torch

from suite import numerics
from suite.data import num_classes
from suite.methods import method as get_method
from suite.recipe import Recipe
from suite.trainer import resolve_device, train_step, training_forward


def equal_flop_passes(bits: list[int]) -> int:
    """FP32 single-width steps a joint step over ``bits`` equals in FLOPs: MBQuant's b-bit forward runs b/2
    single-width branches, so 2-4-6-8 costs 1 + 2 + 3 + 4 = 10 (the joint step's equal-FLOP limit)."""
    return sum(b // 2 for b in bits)


def make_train_step(model: str = "resnet20", dataset: str = "cifar100", bits: list[int] | None = None,
                    batch: tuple[torch.Tensor, torch.Tensor] | None = None, method: str = "mbquant",
                    options: dict[str, Any] | None = None, device: str | torch.device | None = None,
                    recipe: Recipe | None = None, synchronize: bool = True) -> Callable[[], dict[int, torch.Tensor]]:
    """Build ``method`` on ``model`` for ``dataset``'s classes and return a callable running one joint step.

    ``batch`` defaults to 64 random 32x32 images; ``device`` to the recipe's (CUDA when present). With
    ``synchronize`` the callable returns only once the device is done (for timing asynchronous CUDA kernels).
    """
    recipe = recipe or Recipe()
    numerics.configure(recipe.precision, recipe.deterministic)  # the arithmetic fit() would run
    bits = list(bits or [2, 4, 6, 8])
    dev = torch.device(device) if device is not None else resolve_device(recipe.device)
    if batch is None:
        gen = torch.Generator().manual_seed(0)
        batch = (torch.randn(64, 3, 32, 32, generator=gen),
                 torch.randint(0, num_classes(dataset), (64,), generator=gen))
    x, y = batch[0].to(dev), batch[1].to(dev)
    spec = get_method(method)
    trainable = spec.build(model, num_classes(dataset), bits, spec.Options(**(options or {})))
    trainable.model.to(dev).train()
    if trainable.initialize is not None:
        trainable.initialize(trainable.model, [(x, y)] * len(bits))
    optimizers = trainable.optimizers_for(recipe)
    forward = training_forward(trainable.model, recipe)

    def step() -> dict[int, torch.Tensor]:
        losses = train_step(trainable, forward, optimizers, x, y, numerics.autocast_dtype(recipe.precision))
        if synchronize and dev.type == "cuda":
            torch.cuda.synchronize(dev)
        return losses

    step.trainable = trainable  # for inspection (e.g. peak memory, parameter counts)
    return step
