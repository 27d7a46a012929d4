"""The arithmetic a run asked for, set before it trains: ``recipe.precision`` and ``recipe.deterministic``.

On Ampere and Hopper GPUs torch runs float32 convolutions as TF32 (10-bit mantissa) unless told otherwise, and
picks the fastest, not always repeatable, kernels. A reproduction must know which arithmetic it ran, so nothing
is left to the defaults:

- ``fp32``: true IEEE float32 for convolutions and matmuls (TF32 off): the release's arithmetic.
- ``tf32``: float32 tensors, TF32 tensor-core arithmetic for convolutions and matmuls (GPU speed, ~1e-3 error).
- ``bf16``: the training forward under bfloat16 autocast; the quantizers and evaluation stay float32 (TF32 off).

``deterministic``: cuDNN's deterministic algorithms, no autotuning, torch's deterministic kernels where they
exist (a warning names any op that has none): two identical steps give identical bits, so a resumed run equals an
unbroken one on a GPU as it does on a CPU. On a CPU both settings change nothing.
"""
from __future__ import annotations

import os

import torch

# cuBLAS is deterministic only with a fixed workspace, which it reads when its first handle is made: set here, on
# import, before any CUDA work (a user's own setting wins).
CUBLAS_WORKSPACE = ":4096:8"
os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", CUBLAS_WORKSPACE)


def autocast_dtype(precision: str) -> torch.dtype | None:
    """The autocast dtype of the training forward, if any."""
    return torch.bfloat16 if precision == "bf16" else None


def set_tf32(enabled: bool) -> None:
    """TF32 for float32 convolutions and matmuls on or off (torch >= 2.9's API where present, else the flags)."""
    cudnn_conv = getattr(torch.backends.cudnn, "conv", None)
    if cudnn_conv is not None and hasattr(cudnn_conv, "fp32_precision"):
        mode = "tf32" if enabled else "ieee"
        torch.backends.cuda.matmul.fp32_precision = mode
        cudnn_conv.fp32_precision = mode
    else:
        torch.backends.cuda.matmul.allow_tf32 = enabled
        torch.backends.cudnn.allow_tf32 = enabled


def tf32_enabled() -> bool:
    """Whether float32 convolutions may run as TF32 right now (what a run records)."""
    cudnn_conv = getattr(torch.backends.cudnn, "conv", None)
    if cudnn_conv is not None and hasattr(cudnn_conv, "fp32_precision"):
        return cudnn_conv.fp32_precision == "tf32"
    return bool(torch.backends.cudnn.allow_tf32)


def configure(precision: str, deterministic: bool) -> None:
    """Set this process's arithmetic for a run (its tags record ``precision`` and ``deterministic``)."""
    set_tf32(precision == "tf32")
    torch.backends.cudnn.deterministic = deterministic
    torch.backends.cudnn.benchmark = not deterministic
    torch.use_deterministic_algorithms(deterministic, warn_only=True)
