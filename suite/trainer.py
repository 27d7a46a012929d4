"""The one training loop every method goes through, top to bottom.

A method hands the trainer a ``Trainable`` (``suite.methods.api``): the model, its bit list, its loss and its
optimiser parameter groups. Each iteration, on one batch, every bit-width runs in the reverse of the listed
order (largest first for ascending lists), each with its own backward into the same gradients, then one step
of every optimiser (``train_step``), all on a per-epoch cosine schedule. After every epoch all bit-widths are
evaluated; the best mean top-1 is kept.

The loop knows no method, no MLflow and no manifest: progress goes out through the ``log`` callback, state
into ``run_dir`` as verified data-only checkpoints (``suite.checkpoints``). A killed run resumes from its last
completed epoch; one stopped by SIGINT / SIGTERM finishes its current step and resumes exactly from there; a
finished one is not run again.
"""
from __future__ import annotations

import json
import os
import signal
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import torch
from torch import nn

from suite import interrupts, numerics, rng
from suite.checkpoints import CheckpointSeries, read_checkpoint
from suite.distributed import SINGLE, Distributed, data_parallel, local_device, no_sync, sync_batch_norm
from suite.methods.api import ParamGroup, Trainable
from suite.recipe import Recipe
from suite.rng import seed_everything

try:
    from tqdm.auto import tqdm
except ImportError:  # a bare GPU image may lack tqdm; progress bars are a nicety
    def tqdm(iterable, **_):
        return iterable

OPTIMIZERS = {"sgd": torch.optim.SGD, "adam": torch.optim.Adam}


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def make_optimizers(groups: list[ParamGroup]) -> list[torch.optim.Optimizer]:
    """One optimiser per kind named in ``groups``, in order of first appearance, holding its groups."""
    kinds = dict.fromkeys(g.optimizer for g in groups if g.params)
    return [OPTIMIZERS[kind]([g.torch_group() for g in groups if g.optimizer == kind and g.params]) for kind in kinds]


def training_forward(model: nn.Module, recipe: Recipe) -> Callable[[torch.Tensor], torch.Tensor]:
    """What the training step calls: the model itself, or ``torch.compile(model)`` (sharing its parameters)."""
    return torch.compile(model, mode=recipe.compile_mode) if recipe.compile else model


def train_step(trainable: Trainable, forward: Callable[[torch.Tensor], torch.Tensor],
               optimizers: list[torch.optim.Optimizer], x: torch.Tensor, y: torch.Tensor,
               precision: torch.dtype | None = None) -> dict[int, torch.Tensor]:
    """One joint step: every bit-width on ``(x, y)``, largest first, each backward into the shared gradients, then
    every optimiser steps. ``forward`` is the model or a wrapper of it (compiled, DDP); ``precision``: the autocast
    dtype of the forwards, if any. Returns the detached losses by bit-width, left on the device (no host
    synchronisation)."""
    for o in optimizers:
        o.zero_grad(set_to_none=True)
    earlier: list[torch.Tensor] = []
    losses = {}
    skip_sync = no_sync(forward)  # under DDP: gradients are all-reduced once, after the last backward
    for i, b in enumerate(reversed(trainable.bits)):
        trainable.model.set_bits(b)
        with skip_sync() if skip_sync is not None and i < len(trainable.bits) - 1 else nullcontext():
            with torch.autocast(x.device.type, dtype=precision, enabled=precision is not None):
                logits = forward(x)
                loss = trainable.loss(logits, y, earlier)
            loss.backward()
        earlier.append(logits.detach())
        losses[b] = loss.detach()
    for o in optimizers:
        o.step()
    return losses


def _reseed(loader: Iterable, value: int, rank: int = 0) -> None:
    """Seed the streams of an epoch from ``value``: the global RNGs (the model's random draws) and the sampler's
    permutation alike on every rank, the loader's generator (the augmentation: ``suite.data``) with this rank's
    own stream."""
    seed_everything(value)
    if getattr(loader, "generator", None) is not None:
        loader.generator.manual_seed(rng.rank_seed(value, rank))
    if hasattr(getattr(loader, "sampler", None), "seed"):
        loader.sampler.seed = value


def _limited(loader: Iterable, steps: int | None) -> Iterator:
    for i, batch in enumerate(loader):
        if steps is not None and i >= steps:
            return
        yield batch


def _to(device: torch.device, batches: Iterable) -> Iterator:
    for x, y in batches:
        yield x.to(device, non_blocking=True), y.to(device, non_blocking=True)


@torch.no_grad()
def evaluate(model: nn.Module, bits: list[int], loader: Iterable, device: torch.device,
             dist: Distributed = SINGLE) -> dict[int, tuple[float, float]]:
    """Top-1 / top-5 accuracy (percent) at every bit-width, model in eval mode. Under ``dist`` each rank counts
    its own shard of the validation set and the counts are summed: the single-process numbers, no image twice."""
    model.eval()
    results = {}
    for b in bits:
        model.set_bits(b)
        counts = torch.zeros(3, dtype=torch.int64, device=device)  # top-1 hits, top-5 hits, images
        for x, y in _to(device, loader):
            logits = model(x)
            hits = logits.topk(min(5, logits.shape[1]), dim=1).indices == y[:, None]
            counts += torch.stack([hits[:, 0].sum(), hits.any(dim=1).sum(), torch.tensor(y.numel(), device=device)])
        correct1, correct5, total = dist.sum(counts).tolist()
        results[b] = (100.0 * correct1 / total, 100.0 * correct5 / total)
    return results


@dataclass
class TrainResult:
    best_epoch: int
    best_mean_top1: float
    final: dict[int, tuple[float, float]]  # bit-width -> (top1, top5) at the best epoch
    history: list[dict] = field(default_factory=list)  # one metrics dict per epoch
    resumed_from: int | None = None
    already_finished: bool = False


def metric_names(bits: list[int], epoch_metrics: dict[int, tuple[float, float]], losses: dict[int, float]) -> dict:
    """The flat metric names every method shares (``val_top1_b4``, ``train_loss_b4``, ``val_top1_mean``...)."""
    out = {}
    for b in bits:
        out[f"train_loss_b{b}"] = losses[b]
        out[f"val_top1_b{b}"], out[f"val_top5_b{b}"] = epoch_metrics[b]
    out["train_loss_mean"] = sum(losses.values()) / len(losses)
    out["val_top1_mean"] = sum(epoch_metrics[b][0] for b in bits) / len(bits)
    out["val_top5_mean"] = sum(epoch_metrics[b][1] for b in bits) / len(bits)
    return out


@dataclass
class Progress:
    """Where training stands: what a ``last`` checkpoint holds besides the model, optimiser and schedule states."""

    epoch: int = 0  # the epoch to run next (or to finish, when ``step`` > 0)
    step: int = 0  # steps of ``epoch`` already done (a stop between steps)
    steps_done: int = 0  # in the whole run: orders the checkpoints
    loss_sums: dict[int, float] = field(default_factory=dict)  # of ``epoch``'s steps done
    rng: list[dict[str, Any]] | dict[str, Any] | None = None  # every rank's RNGs right after step ``step``
    history: list[dict] = field(default_factory=list)
    best_mean: float = 0.0
    best_epoch: int = -1
    best_final: dict[int, tuple[float, float]] = field(default_factory=dict)


def _read_result(path: Path, warn: Callable[[str], None]) -> TrainResult | None:
    """The finished run's result, or None; an unreadable file is named, moved aside and the run resumes."""
    if not path.exists():
        return None
    try:
        saved = json.loads(path.read_text())
        saved["final"] = {int(b): (float(v[0]), float(v[1])) for b, v in saved["final"].items()}
        if not saved["final"]:
            raise ValueError("no final metrics")
        return TrainResult(**{**saved, "already_finished": True})
    except (ValueError, KeyError, TypeError, IndexError) as err:
        warn(f"warning: {path} cannot be read ({err}); moved aside as {path.name}.corrupt, the run resumes")
        os.replace(path, path.with_name(path.name + ".corrupt"))
        return None


def fit(
    trainable: Trainable,
    train_loader: Iterable,
    val_loader: Iterable,
    recipe: Recipe,
    *,
    seed: int,
    run_dir: Path,
    log: Callable[[dict, int], None] | None = None,
    progress: bool = True,
    warn: Callable[[str], None] = print,
    dist: Distributed = SINGLE,
    calibration_loader: Iterable | None = None,
) -> TrainResult:
    """Train ``trainable`` by ``recipe``, resuming from ``run_dir``. Under ``dist`` (torchrun) every rank calls this
    with its shard of the data; rank 0 alone reads the choices from disk, writes checkpoints and logs.
    ``calibration_loader``: the batches ``initialize`` sees (default: ``train_loader``; under ``dist`` the
    unsharded global batches, so every rank calibrates exactly as one process would)."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    done_file = run_dir / "result.json"
    finished = dist.from_main(_read_result(done_file, warn) if dist.main else None)
    if finished is not None:
        return finished

    device = local_device(resolve_device(recipe.device), dist)
    numerics.configure(recipe.precision, recipe.deterministic)
    model, bits = trainable.model.to(device), trainable.bits
    optimizers = make_optimizers(trainable.param_groups(recipe))
    schedulers = [torch.optim.lr_scheduler.CosineAnnealingLR(o, T_max=recipe.epochs, eta_min=0) for o in optimizers]
    last, best = CheckpointSeries(run_dir, "last", keep=2, warn=warn), CheckpointSeries(run_dir, "best", keep=1, warn=warn)

    state, resumed_from = Progress(), None
    # Read onto the CPU: load_state_dict copies the tensors to the model's and optimisers' devices, while the RNG
    # states and the optimisers' step counters must stay CPU tensors.
    found = last.latest() if dist.main else None  # rank 0 picks (setting damaged files aside)
    path = dist.from_main(found[1] if found else None)
    if path is not None:
        saved = found[0] if dist.main else read_checkpoint(path)
        model.load_state_dict(saved["model"])
        for o, s in zip(optimizers, saved["optimizers"]):
            o.load_state_dict(s)
        for sch, s in zip(schedulers, saved["schedulers"]):
            sch.load_state_dict(s)
        state = Progress(**saved["progress"])
        resumed_from = state.epoch
    elif trainable.initialize is not None:
        calibration = calibration_loader or train_loader
        _reseed(calibration, seed * 100_003 - 1)  # rank 0's stream on every rank: the same calibration
        trainable.initialize(model, _to(device, calibration))
    if dist.active and recipe.sync_bn:  # after calibration, which every rank runs on the same, whole batches
        sync_batch_norm(model, device)

    def checkpoint() -> None:
        if dist.main:
            last.save({"model": model.state_dict(), "optimizers": [o.state_dict() for o in optimizers],
                       "schedulers": [s.state_dict() for s in schedulers], "progress": asdict(state)},
                      state.steps_done)

    def global_mean(sums: dict[int, torch.Tensor]) -> dict[int, float]:
        """Each rank's loss sums averaged over the ranks: the single-process sums for equal shards."""
        return {b: (dist.sum(v.clone()) / dist.world_size).item() for b, v in sums.items()}

    forward = training_forward(data_parallel(model, device) if dist.active else model, recipe)
    metrics = state.best_final
    for epoch in range(state.epoch, recipe.epochs):
        # Re-seed per epoch so a resumed run sees the same batches, augmentation and sampling as an unbroken one.
        _reseed(train_loader, seed * 100_003 + epoch, dist.rank)
        if trainable.on_epoch_start is not None:
            trainable.on_epoch_start(epoch, recipe.epochs)
        model.train()
        # float64 sums on the device: the same values as summing loss.item() in Python, without a sync per step
        loss_sums = {b: torch.tensor(state.loss_sums.get(b, 0.0), dtype=torch.float64, device=device) for b in bits}
        batches = _limited(train_loader, recipe.steps_per_epoch)
        if state.step:  # resuming between two steps: fetch the batches done (the data RNGs replay them exactly),
            for _ in range(state.step):  # then put back the RNGs as they were after the last step done
                next(batches)
            own = rng.of_rank(state.rng, dist.rank, dist.world_size)
            if own is None:
                warn(f"warning: resuming mid-epoch on {dist.world_size} process(es), the checkpoint was written by "
                     "another number: the rest of this epoch draws other augmentation than an unbroken run")
                seed_everything(rng.rank_seed(seed * 100_003 + epoch, dist.rank) + state.step)
            else:
                rng.restore(own, device)
        total = recipe.steps_per_epoch or (len(train_loader) if hasattr(train_loader, "__len__") else None)
        with interrupts.deferred():
            for x, y in tqdm(_to(device, batches), total=total, initial=state.step, leave=False,
                             disable=not progress or not dist.main, desc=f"epoch {epoch + 1}/{recipe.epochs}"):
                for b, loss in train_step(trainable, forward, optimizers, x, y,
                                          numerics.autocast_dtype(recipe.precision)).items():
                    loss_sums[b] += loss
                state.step, state.steps_done = state.step + 1, state.steps_done + 1
                if dist.any(interrupts.requested() is not None):  # every rank stops after the same step
                    state.epoch, state.loss_sums = epoch, global_mean(loss_sums)
                    state.rng = dist.gather(rng.capture(device))
                    checkpoint()
                    raise interrupts.Interrupted(interrupts.requested() or signal.SIGTERM,
                                                 f"in epoch {epoch + 1} after step {state.step}")
            for sch in schedulers:
                sch.step()

            dist.broadcast_buffers(model)  # every rank evaluates rank 0's BN statistics, which it checkpoints
            metrics = evaluate(model, bits, val_loader, device, dist)
            row = metric_names(bits, metrics, {b: v / max(state.step, 1) for b, v in global_mean(loss_sums).items()})
            state.history.append({"epoch": epoch, **row})
            if row["val_top1_mean"] > state.best_mean:  # strictly greater, starting from 0 (the release's rule)
                state.best_mean, state.best_epoch, state.best_final = row["val_top1_mean"], epoch, metrics
                if dist.main:
                    best.save({"model": model.state_dict(), "epoch": epoch, "metrics": metrics}, state.steps_done)
            state.epoch, state.step, state.loss_sums, state.rng = epoch + 1, 0, {}, None
            checkpoint()
            if log is not None and dist.main:  # after the checkpoint: a logged epoch is never trained twice
                log({**row, "best_val_top1_mean": state.best_mean}, epoch)
        if dist.any(interrupts.requested() is not None):
            raise interrupts.Interrupted(interrupts.requested() or signal.SIGTERM, f"after epoch {epoch + 1}")

    # A run that never beat 0 % has no best epoch: report its last evaluation instead of nothing.
    result = TrainResult(state.best_epoch, state.best_mean, state.best_final or metrics, state.history, resumed_from)
    if dist.main:
        tmp = done_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(asdict(result), indent=1))
        os.replace(tmp, done_file)
    return result
