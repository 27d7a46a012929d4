"""What ``suite doctor`` runs under torchrun (``python -m suite.doctor.probe ...``); needs torch and the suite's
core only (no pydantic, no MLflow), so the CUDA tests run it on bare GPU images too.

Arguments ``ARCH METHOD BITS OPTIONS CLASSES SIDE OUT [PERTURB_RANK]``. An all-reduce; three joint steps of DDP with SyncBN on an equal share each of one global batch, in float64, against one process's steps on
  the whole batch, and every rank's weights after them against rank 0's; evaluation of a sharded validation set
  against one process's; on CUDA, torch's SyncBatchNorm kernels against the suite's global batch norm, in float32
  and under bf16. Rank 0 writes the figures to OUT.
  PERTURB_RANK shifts that rank's images (a rank that diverges: the check must fail).
"""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import torch
import torch.distributed as tdist
from torch import nn

from suite.distributed import SINGLE, data_parallel, from_environment, global_batch_norm_2d, local_device, \
    sync_batch_norm
from suite.methods import METHODS
from suite.recipe import Recipe
from suite.rng import seed_everything
from suite.trainer import evaluate, train_step

STEPS, SHARE, VAL_IMAGES = 3, 8, 37  # steps compared; images per rank per step; an uneven validation set


def _trainable(arch: str, method: str, bits: list[int], options: dict, classes: int, device: torch.device):
    seed_everything(0)
    spec = METHODS[method]
    trainable = spec.build(arch, classes, bits, spec.Options(**options))
    trainable.model.double().to(device)
    return trainable


def _batches(world: int, classes: int, side: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    gen = torch.Generator().manual_seed(1)
    return [(torch.rand(SHARE * world, 3, side, side, generator=gen, dtype=torch.float64),
             torch.randint(0, classes, (SHARE * world,), generator=gen)) for _ in range(STEPS)]


def _mean_over_ranks(value: torch.Tensor, world: int) -> float:
    if world > 1:
        value = value.clone()
        tdist.all_reduce(value)
    return value.item() / world


def _steps(trainable, forward, batches, device, rank: int, world: int, perturb: int | None) -> list[dict]:
    """Joint steps, each rank on its equal share of every global batch; the losses averaged over the ranks."""
    optimizers = trainable.optimizers_for(Recipe(lr=0.05))
    losses = []
    for x, y in batches:
        n = len(x) // world
        x, y = x[rank * n:(rank + 1) * n], y[rank * n:(rank + 1) * n]
        if perturb == rank:
            x = x + 0.5
        step = train_step(trainable, forward, optimizers, x.to(device), y.to(device))
        losses.append({b: _mean_over_ranks(v, world) for b, v in step.items()})
    return losses


def _largest_difference_from_rank_0(model: nn.Module) -> float:
    """Largest |difference| of any rank's weights from rank 0's: 0 when every rank applied the same averaged
    gradients."""
    mine = torch.cat([p.detach().flatten() for p in model.parameters()])
    theirs = mine.clone()
    tdist.broadcast(theirs, src=0)
    worst = (mine - theirs).abs().max()
    tdist.all_reduce(worst, op=tdist.ReduceOp.MAX)
    return worst.item()


def _sync_bn_kernels(device: torch.device) -> dict[str, float]:
    """Largest |difference| between torch's SyncBatchNorm function and ``global_batch_norm_2d`` on this world."""
    from torch.nn.modules._functions import SyncBatchNorm as SyncBatchNormFunction  # the fused kernels' entry

    out = {}
    gen = torch.Generator().manual_seed(2 + tdist.get_rank())
    x = (torch.randn(16, 32, 9, 9, generator=gen) * 2 + 0.5).to(device)
    for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        a, b = nn.BatchNorm2d(32).to(device), nn.BatchNorm2d(32).to(device)
        try:
            fused = SyncBatchNormFunction.apply(x.to(dtype), a.weight, a.bias, a.running_mean, a.running_var, a.eps,
                                                a.momentum, tdist.group.WORLD, tdist.get_world_size())
        except (RuntimeError, TypeError, ValueError) as err:  # reported as the check's figure
            out[name] = f"{type(err).__name__}: {str(err).splitlines()[0][:160]}"
            continue
        mine = global_batch_norm_2d(b, x.to(dtype))
        out[name] = max((fused.float() - mine.float()).abs().max().item(),
                        (a.running_mean - b.running_mean).abs().max().item(),
                        (a.running_var - b.running_var).abs().max().item())
    return out


def ddp(arch, method, bits, options, classes, side, out, perturb=None) -> None:
    dist = from_environment(alone_too=True)
    device = local_device(torch.device("cuda" if torch.cuda.is_available() else "cpu"), dist)
    world, rank = dist.world_size, dist.rank
    figures: dict = {"world": world, "backend": tdist.get_backend(), "device": str(device)}

    payload = torch.full((1 << 18,), float(rank + 1), device=device)  # 1 MiB
    reduced = payload.clone()
    tdist.all_reduce(reduced)  # warm-up: the backend's first collective sets up its channels
    started = time.perf_counter()
    for _ in range(10):
        reduced = payload.clone()
        tdist.all_reduce(reduced)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    figures["allreduce_seconds"] = (time.perf_counter() - started) / 10
    figures["allreduce_correct"] = bool((reduced == world * (world + 1) / 2).all().item())

    batches = _batches(world, classes, side)
    trainable = _trainable(arch, method, bits, options, classes, device)
    if trainable.initialize is not None:  # calibration on the whole first batch, as fit() does on every rank
        trainable.initialize(trainable.model, [(batches[0][0].to(device), batches[0][1].to(device))] * len(bits))
    sync_batch_norm(trainable.model, device)
    ddp_losses = _steps(trainable, data_parallel(trainable.model, device), batches, device, rank, world, perturb)
    figures["ranks_differ_by"] = _largest_difference_from_rank_0(trainable.model)

    gen = torch.Generator().manual_seed(3)
    val = list(zip(torch.rand(VAL_IMAGES, 3, side, side, generator=gen, dtype=torch.float64),
                   torch.randint(0, classes, (VAL_IMAGES,), generator=gen)))
    loader = torch.utils.data.DataLoader(val[rank::world], batch_size=5)
    sharded = evaluate(trainable.model, bits, loader, device, dist)
    if device.type == "cuda":
        figures["sync_bn_kernels"] = _sync_bn_kernels(device)
    if dist.main:
        whole = evaluate(trainable.model, bits, torch.utils.data.DataLoader(val, batch_size=5), device, SINGLE)
        one = _trainable(arch, method, bits, options, classes, device)
        if one.initialize is not None:
            one.initialize(one.model, [(batches[0][0].to(device), batches[0][1].to(device))] * len(bits))
        one_losses = _steps(one, one.model, batches, device, 0, 1, None)
        figures["losses"] = {"ddp": ddp_losses, "one": one_losses}
        figures["evaluation"] = {"sharded": {str(b): v for b, v in sharded.items()},
                                 "whole": {str(b): v for b, v in whole.items()}}
        Path(out).write_text(json.dumps(figures))
    tdist.barrier(group=dist.control)
    tdist.destroy_process_group()


if __name__ == "__main__":
    args = sys.argv[1:]
    arch, method, bits, options, classes, side, out, *perturb = args
    ddp(arch, method, json.loads(bits), json.loads(options), int(classes), int(side), out,
        int(perturb[0]) if perturb else None)
