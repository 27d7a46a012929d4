"""The optimisation recipe of a run (``recipe`` in a manifest): read by the methods, which turn it into their
optimiser parameter groups, and by the trainer, which runs the schedule."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import torch

from suite.fields import FieldError, check_number

MAX_EPOCHS = 10_000
# Fields added after the first release of the suite, with the value that means "as before": at that value they
# stay out of a run's identity, so runs stored earlier keep theirs.
ADDED_LATER = {"sync_bn": False, "precision": "fp32", "deterministic": True, "compile_mode": "default"}
MAX_BATCH = 1 << 16


@dataclass
class Recipe:
    """Defaults: the published CIFAR recipe (mbquant.md §7)."""

    __pydantic_config__ = {"extra": "forbid"}
    epochs: int = 200
    batch_size: int = 128
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 1e-4
    lr_quant: float = 1e-4  # the quantizer parameters' learning rate, for methods that optimise them apart
    no_weight_decay_on: list[Literal["bn", "depthwise"]] = field(default_factory=list)
    steps_per_epoch: int | None = None  # cap on training steps per epoch (smoke profiles)
    eval_batch_size: int | None = None  # defaults to batch_size
    device: str = "auto"  # auto: CUDA when present, else CPU
    # torch.compile the training forward: one compilation per bit-width (minutes), then a faster joint step;
    # evaluation stays eager. A model that changes its layers' bit-widths at random recompiles per draw.
    compile: bool = False
    # With compile: "reduce-overhead" replays the compiled step as CUDA graphs (small models are launch-bound on a
    # GPU; checked against the eager step by `suite doctor`).
    compile_mode: Literal["default", "reduce-overhead"] = "default"
    # Under torchrun: BatchNorm statistics over the global batch instead of each process's share (the release's
    # SyncBN on ImageNet). No effect in one process.
    sync_bn: bool = False
    # fp32: true float32, the release's arithmetic (default; TF32 off on GPUs). tf32: float32 tensors with TF32
    # convolutions and matmuls on GPUs. bf16: the training forward under autocast (convolutions and matmuls in
    # bfloat16: faster on GPUs, 8-bit activation levels no longer exact; quantizers stay float32); evaluation fp32.
    # See suite.numerics.
    precision: Literal["fp32", "tf32", "bf16"] = "fp32"
    # Deterministic kernels (cuDNN, cuBLAS, torch): on a GPU two identical steps give identical bits and a resumed
    # run equals an unbroken one. false: torch's fastest kernels (autotuned, not repeatable). No effect on a CPU.
    deterministic: bool = True

    def __post_init__(self):
        for name in ("epochs", "batch_size", "eval_batch_size", "steps_per_epoch"):
            check_number(self, name, 1, MAX_EPOCHS if name == "epochs" else MAX_BATCH if "batch" in name else 10**9,
                         integer=True)
        for name in ("lr", "lr_quant"):
            check_number(self, name, 0, 100, above=True)
        check_number(self, "momentum", 0, 1)
        check_number(self, "weight_decay", 0, 1)
        if self.compile_mode != "default" and not self.compile:
            raise FieldError("compile_mode", f"{self.compile_mode!r} needs compile: true")
        if self.device != "auto":
            try:
                torch.device(self.device)
            except (RuntimeError, TypeError):
                raise FieldError("device", f"must be auto, cpu, cuda or cuda:<index> (a torch device), "
                                           f"got {self.device!r}") from None
