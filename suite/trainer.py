"""The one training loop every method goes through, top to bottom.

A method hands the trainer a ``Trainable`` (``suite.contract``): the model, its bit list, its loss, its
optimiser parameter groups, optimisers and schedule. Each iteration, on one batch, every bit-width runs in the
reverse of the listed order (largest first for ascending lists), each with its own backward into the same
gradients, then one step of every optimiser (``train_step``), each on the method's per-epoch schedule (cosine
by default). After every epoch all bit-widths are evaluated; the best mean top-1 is kept.

The loop knows no method, no MLflow and no manifest: progress goes out through the ``log`` callback, state
into ``run_dir`` as verified data-only checkpoints (``suite.checkpoints``). A killed run resumes from its last
completed epoch; one stopped by SIGINT / SIGTERM finishes its current step and resumes exactly from there; a
finished one is not run again.
"""
from __future__ import annotations

import json
import math
import signal
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import torch
from torch import nn

from suite import interrupts, numerics, rng
from suite.checkpoints import (CheckpointError, CheckpointSeries, UnfitCheckpoint, read_checkpoint, read_json,
                               set_aside, write_json)
from suite.distributed import SINGLE, Distributed, data_parallel, local_device, no_sync, sync_batch_norm
from suite.contract import Trainable
from suite.recipe import Recipe
from suite.rng import seed_everything

try:
    from tqdm.auto import tqdm
except ImportError:  # a bare GPU image may lack tqdm; progress bars are a nicety
    def tqdm(iterable, **_):
        return iterable

def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


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


def epoch_steps(loader: Iterable, recipe: Recipe) -> int | None:
    """Training steps in one epoch: the recipe's cap, or the loader's length, whichever is smaller (when known)."""
    try:
        known = [n for n in (recipe.steps_per_epoch, len(loader)) if n]
    except TypeError:  # a loader without a length
        known = [recipe.steps_per_epoch] if recipe.steps_per_epoch else []
    return min(known) if known else None


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


# -- what a run reads back must fit it: intact files can still hold values no run of this recipe produces ----------

@dataclass
class Expected:
    """What a checkpoint or result of this run can hold: the recipe's epochs and steps, the bit-widths, the model
    (and, once built, the optimisers and schedules whose states a ``last`` checkpoint restores)."""

    recipe: Recipe
    bits: list[int]
    steps: int | None  # training steps in one epoch, when known
    model: nn.Module
    optimizers: list[torch.optim.Optimizer] | None = None
    schedulers: list | None = None

    def results(self, final: dict, history: list[dict], best_epoch: int, best_mean: float, epochs_done: int) -> None:
        """Accuracies are percentages, epochs lie within what was trained; UnfitCheckpoint otherwise."""
        if len(history) != epochs_done or any(row.get("epoch") != i for i, row in enumerate(history)):
            raise UnfitCheckpoint(f"its history does not list epochs 0 to {epochs_done - 1} once each")
        for i, row in enumerate(history):
            for key, value in row.items():
                if "top1" in key or "top5" in key:
                    _percentage(value, f"history epoch {i} {key}")
        if not -1 <= best_epoch < epochs_done:
            raise UnfitCheckpoint(f"best epoch {best_epoch} lies outside the {epochs_done} epoch(s) trained")
        _percentage(best_mean, "best mean top-1")
        for b, values in final.items():
            if b not in self.bits:
                raise UnfitCheckpoint(f"it holds results for {b} bits, not one of {self.bits}")
            for name, value in zip(("top-1", "top-5"), values):
                _percentage(value, f"{b}-bit {name}")

    def progress(self, saved: dict) -> Progress:
        try:
            state = Progress(**saved)
        except TypeError as err:
            raise UnfitCheckpoint(f"its progress record is not one this trainer writes ({err})") from None
        epochs = self.recipe.epochs
        if not 0 <= state.epoch <= epochs:
            raise UnfitCheckpoint(f"progress.epoch = {state.epoch} lies beyond the recipe's {epochs} epochs")
        if not 0 <= state.step <= (self.steps or state.step) or state.epoch == epochs and state.step:
            raise UnfitCheckpoint(f"progress.step = {state.step} lies beyond the {self.steps} steps of an epoch")
        self.results(state.best_final, state.history, state.best_epoch, state.best_mean, state.epoch)
        return state

    def model_state(self, saved: Any) -> None:
        """A checkpoint whose model state this run's model can load (a ``best`` one); UnfitCheckpoint otherwise."""
        if not isinstance(saved, dict) or not isinstance(saved.get("model"), dict):
            raise UnfitCheckpoint("it holds no model state")
        _same_tensors(saved["model"], self.model.state_dict(), "model")

    def checkpoint(self, saved: Any) -> None:
        """A ``last`` checkpoint this run can resume from; UnfitCheckpoint otherwise. Checked before anything is
        loaded, so a refused file leaves the model and optimisers untouched."""
        self.model_state(saved)
        try:
            state = self.progress(saved["progress"])
            for what, built, states in (("optimizer", self.optimizers, saved["optimizers"]),
                                        ("schedule", self.schedulers, saved["schedulers"])):
                if built is not None and len(states) != len(built):
                    raise UnfitCheckpoint(f"it holds {len(states)} {what} state(s), the run has {len(built)}")
            for o, s in zip(self.optimizers or [], saved["optimizers"]):
                _optimizer_fits(o, s)
            for s in saved["schedulers"] if self.schedulers is not None else []:
                if s["last_epoch"] != state.epoch:
                    raise UnfitCheckpoint(f"its schedule stands at epoch {s['last_epoch']}, its progress at "
                                          f"{state.epoch}")
        except (KeyError, TypeError, AttributeError, ValueError) as err:
            raise UnfitCheckpoint(f"it is not a checkpoint this trainer writes ({type(err).__name__}: {err})") from None


def _percentage(value: Any, what: str) -> None:
    if not isinstance(value, (int, float)) or not math.isfinite(value) or not 0 <= value <= 100:
        raise UnfitCheckpoint(f"{what} = {value!r} is not a percentage in [0, 100]")


def _same_tensors(saved: dict, own: dict, what: str) -> None:
    if saved.keys() != own.keys():
        missing, extra = sorted(own.keys() - saved.keys()), sorted(saved.keys() - own.keys())
        raise UnfitCheckpoint(f"its {what} keys differ (missing {missing[:3]}, unexpected {extra[:3]})")
    for key, value in saved.items():
        if not isinstance(value, torch.Tensor) or value.shape != own[key].shape:
            raise UnfitCheckpoint(f"{what} {key}: shape {tuple(getattr(value, 'shape', ()))}, the run's is "
                                  f"{tuple(own[key].shape)}")


def _optimizer_fits(optimizer: torch.optim.Optimizer, saved: dict) -> None:
    groups = saved["param_groups"]
    if [len(g["params"]) for g in groups] != [len(g["params"]) for g in optimizer.param_groups]:
        raise UnfitCheckpoint("its optimizer parameter groups differ from the run's")
    params = dict(zip((i for g in groups for i in g["params"]), (p for g in optimizer.param_groups for p in g["params"])))
    for index, entry in saved["state"].items():
        if index not in params:
            raise UnfitCheckpoint(f"it holds optimizer state for parameter {index}, which the run does not have")
        for key, value in entry.items():
            if isinstance(value, torch.Tensor) and value.dim() and value.shape != params[index].shape:
                raise UnfitCheckpoint(f"optimizer state {index}.{key}: shape {tuple(value.shape)}, its parameter's "
                                      f"is {tuple(params[index].shape)}")


def _plain_result(final: dict, history: list[dict], best_epoch: int, best_mean: float) -> str:
    """A result in one comparable form (NaN losses compare equal)."""
    return json.dumps([{str(b): list(v) for b, v in final.items()}, history, best_epoch, best_mean], sort_keys=True)


def _read_result(path: Path, last: CheckpointSeries, expected: Expected, warn: Callable[[str], None]) -> TrainResult | None:
    """The finished run's result, or None. It must match its checksum, hold percentages and epochs the recipe allows,
    and agree with the run's newest good checkpoint; otherwise it is named, moved aside and the run resumes from
    that checkpoint (or retrains, with none)."""
    if not path.exists():
        return None
    try:
        saved = read_json(path)
        try:
            saved["final"] = {int(b): (float(v[0]), float(v[1])) for b, v in saved["final"].items()}
            result = TrainResult(**{**saved, "already_finished": True})
        except (ValueError, KeyError, TypeError, IndexError, AttributeError) as err:
            raise CheckpointError(f"{path}: is not a run result ({type(err).__name__}: {err})") from None
        if not result.final:
            raise CheckpointError(f"{path}: holds no final metrics")
        try:
            expected.results(result.final, result.history, result.best_epoch, result.best_mean_top1,
                             expected.recipe.epochs)
        except (UnfitCheckpoint, AttributeError, TypeError) as err:
            raise CheckpointError(f"{path}: {err}") from None
        found = last.latest(check=expected.checkpoint)
        if found is not None:  # checkpoints kept: the result must be what the newest one trained to
            state = Progress(**found[0]["progress"])
            if state.epoch != expected.recipe.epochs or _plain_result(
                    state.best_final or result.final, state.history, state.best_epoch, state.best_mean) != \
                    _plain_result(result.final, result.history, result.best_epoch, result.best_mean_top1):
                raise CheckpointError(f"{path}: does not agree with its checkpoint {found[1].name}")
        return result
    except CheckpointError as err:
        warn(f"warning: {err}; moved aside as {path.name}.corrupt, the run resumes from its last good checkpoint")
        set_aside(path)
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
    last, best = CheckpointSeries(run_dir, "last", keep=2, warn=warn), CheckpointSeries(run_dir, "best", keep=1, warn=warn)
    expected = Expected(recipe, trainable.bits, epoch_steps(train_loader, recipe), trainable.model)
    finished = dist.from_main(_read_result(done_file, last, expected, warn) if dist.main else None)
    if finished is not None:
        return finished

    device = local_device(resolve_device(recipe.device), dist)
    numerics.configure(recipe.precision, recipe.deterministic)
    model, bits = trainable.model.to(device), trainable.bits
    optimizers = trainable.optimizers_for(recipe)
    schedulers = [trainable.schedule(o, recipe) for o in optimizers]
    expected.optimizers, expected.schedulers = optimizers, schedulers

    state, resumed_from = Progress(), None
    # Read onto the CPU: load_state_dict copies the tensors to the model's and optimisers' devices, while the RNG
    # states and the optimisers' step counters must stay CPU tensors.
    found = last.latest(check=expected.checkpoint) if dist.main else None  # rank 0 picks (setting bad files aside)
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
        write_json(done_file, asdict(result))
    return result
