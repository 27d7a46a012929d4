"""Loss policies of the joint step: ``loss(logits, targets, earlier)`` where ``earlier`` holds the detached
logits of the bit-widths already run in this step, in the order they ran (largest first for ascending lists)."""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

LossFn = Callable[[torch.Tensor, torch.Tensor, list[torch.Tensor]], torch.Tensor]


def soft_cross_entropy(logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
    """-sum_c p_c log softmax(z)_c with p = softmax(teacher), averaged over the batch, temperature 1."""
    return -(F.softmax(teacher_logits, dim=1) * F.log_softmax(logits, dim=1)).sum(dim=1).mean()


def labels_only(logits: torch.Tensor, targets: torch.Tensor, earlier: list[torch.Tensor]) -> torch.Tensor:
    """Cross-entropy on the labels for every bit-width."""
    return F.cross_entropy(logits, targets)


def inplace_distillation(logits: torch.Tensor, targets: torch.Tensor, earlier: list[torch.Tensor]) -> torch.Tensor:
    """The first bit-width run (the largest) learns from labels and teaches every other one: ½(soft-CE + CE)."""
    if not earlier:
        return F.cross_entropy(logits, targets)
    return 0.5 * (soft_cross_entropy(logits, earlier[0]) + F.cross_entropy(logits, targets))


def recursive_distillation(logits: torch.Tensor, targets: torch.Tensor, earlier: list[torch.Tensor]) -> torch.Tensor:
    """Each bit-width learns from the one run just before it (the next higher); the first from labels."""
    if not earlier:
        return F.cross_entropy(logits, targets)
    return soft_cross_entropy(logits, earlier[-1])
