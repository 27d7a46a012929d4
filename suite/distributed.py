"""Training on several processes under ``torchrun``: which process this is, the process groups, the global-batch
BatchNorm, and the few agreements the processes need (a stop signal, the checkpoint to resume, rank 0's choices).

Without torchrun's environment (``WORLD_SIZE`` unset or 1) everything here is a no-op: one process, as always.
NCCL carries the training collectives on GPUs, gloo on CPUs; a gloo group always carries the small control
messages, so agreeing on a stop never synchronises a GPU stream.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

TIMEOUT = timedelta(minutes=60)  # rank 0 may spend minutes on tracking / analyses while the others wait


@dataclass(frozen=True)
class Distributed:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    control: Any = None  # the gloo group for control messages

    @property
    def active(self) -> bool:
        return self.world_size > 1

    @property
    def main(self) -> bool:
        return self.rank == 0

    def from_main(self, value: Any) -> Any:
        """Rank 0's ``value`` (any picklable object) on every rank."""
        if not self.active:
            return value
        box = [value if self.main else None]
        dist.broadcast_object_list(box, src=0, group=self.control)
        return box[0]

    def gather(self, value: Any) -> list | None:
        """Every rank's ``value`` (picklable), in rank order, on rank 0; None on the other ranks."""
        if not self.active:
            return [value]
        box = [None] * self.world_size if self.main else None
        dist.gather_object(value, box, dst=0, group=self.control)
        return box

    def any(self, flag: bool) -> bool:
        """Whether ``flag`` is true on any rank (on every rank the same answer)."""
        if not self.active:
            return flag
        t = torch.tensor([int(flag)])
        dist.all_reduce(t, op=dist.ReduceOp.MAX, group=self.control)
        return bool(t.item())

    def sum(self, tensor: torch.Tensor) -> torch.Tensor:
        """``tensor`` summed over the ranks (in place; on its device)."""
        if self.active:
            dist.all_reduce(tensor)
        return tensor

    def broadcast_buffers(self, model: nn.Module) -> None:
        """Rank 0's buffers (BN running statistics) on every rank: what rank 0 evaluates and checkpoints."""
        if self.active:
            for b in model.buffers():
                dist.broadcast(b, src=0)


SINGLE = Distributed()


def backend(cuda: bool) -> str:
    """NCCL for CUDA tensors and gloo for CPU ones where the node has GPUs (each collective goes by its tensor's
    device, so arms on either device train in one process group), else gloo."""
    return "cpu:gloo,cuda:nccl" if cuda else "gloo"


def from_environment(*, alone_too: bool = False) -> Distributed:
    """Join the process group torchrun describes (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``...).
    A world of one process joins none, unless ``alone_too`` (to exercise the backend itself)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1 and not alone_too:
        return SINGLE
    if not dist.is_initialized():
        dist.init_process_group(backend(torch.cuda.is_available()), timeout=TIMEOUT)
    control = dist.new_group(backend="gloo", timeout=TIMEOUT)
    return Distributed(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")), control)


def local_device(device: torch.device, d: Distributed) -> torch.device:
    """One GPU per process: rank's ``LOCAL_RANK``-th GPU where the recipe asks for CUDA."""
    if device.type == "cuda" and d.active:
        device = torch.device("cuda", d.local_rank)
        torch.cuda.set_device(device)
    return device


class _SumOverRanks(torch.autograd.Function):
    """All-reduce (sum) with its gradient: the gradient of a sum over ranks is the gradient summed over ranks."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        x = x.clone()
        dist.all_reduce(x)
        return x

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.clone()
        dist.all_reduce(grad)
        return grad


def global_batch_norm_2d(bn: nn.BatchNorm2d, x: torch.Tensor, reduce=_SumOverRanks.apply) -> torch.Tensor:
    """``bn``'s training forward with the statistics of the global batch: sums (with autograd) are ``reduce``d over
    the ranks. Statistics are computed and kept in float32 whatever ``x``'s dtype (bf16 under autocast); the output
    has ``x``'s dtype, as BatchNorm2d's. The two-pass mean / variance is the numerically stable form."""
    dims = (0, 2, 3)
    xf = x.float() if x.dtype in (torch.bfloat16, torch.float16) else x  # float64 stays float64
    n = reduce(torch.tensor([x.numel() / x.shape[1]], device=x.device, dtype=xf.dtype))
    mean = reduce(xf.sum(dims)) / n
    centred = xf - mean[None, :, None, None]
    var = reduce(centred.pow(2).sum(dims)) / n
    if bn.track_running_stats:
        with torch.no_grad():
            bn.num_batches_tracked.add_(1)
            bn.running_mean.lerp_(mean.detach().to(bn.running_mean.dtype), bn.momentum)
            unbiased = var.detach() * n / (n - 1)  # as BatchNorm2d
            bn.running_var.lerp_(unbiased.to(bn.running_var.dtype), bn.momentum)
    y = centred * torch.rsqrt(var + bn.eps)[None, :, None, None]
    if bn.affine:
        y = y * bn.weight[None, :, None, None] + bn.bias[None, :, None, None]
    return y.to(x.dtype)


class GlobalBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm2d whose training statistics are those of the global batch over all ranks, on any device and
    backend (gloo included). With one process, or in eval mode, it is exactly ``nn.BatchNorm2d``. The state dict
    is a BatchNorm2d's."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and dist.is_initialized() and dist.get_world_size() > 1) or self.momentum is None:
            return super().forward(x)
        return global_batch_norm_2d(self, x)


def sync_batch_norm(model: nn.Module, device: torch.device) -> nn.Module:
    """Every ``nn.BatchNorm2d`` of ``model`` normalises over the global batch, holding the same tensors: torch's
    ``nn.SyncBatchNorm`` (fused kernels) on CUDA, ``GlobalBatchNorm2d`` elsewhere (SyncBatchNorm needs a GPU)."""
    for module in model.modules():
        if type(module) is nn.BatchNorm2d:
            if device.type == "cuda":  # same attributes, parameters and buffers; only forward differs
                module.__class__, module.process_group = nn.SyncBatchNorm, None
            else:
                module.__class__ = GlobalBatchNorm2d
    return model


def data_parallel(model: nn.Module, device: torch.device) -> nn.Module:
    """DDP over the process group; rank 0's parameters and buffers are broadcast to all at construction. Unused
    parameters are expected: a b-bit forward reads only some branches and one bit-width's BNs."""
    ids = [device.index] if device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=ids, find_unused_parameters=True)


def no_sync(forward: nn.Module):
    """DDP's gradient-sync skip for all but the last backward of a joint step; None when not under DDP."""
    return getattr(forward, "no_sync", None)


