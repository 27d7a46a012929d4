"""The one training loop every method goes through (mbquant.md §6), top to bottom.

A method hands the trainer a ``Trainable``: a model with ``set_bits(b)``, its bit list, which parameters
are quantizer parameters, and its loss policy. Each iteration, on one batch, every bit-width is run in the
reverse of the listed order (largest first for ascending lists), each with its own backward into the same
gradients, then one step of each optimizer: SGD for the weights, Adam for the quantizer parameters, both on
a per-epoch cosine schedule. After every epoch all bit-widths are evaluated; the best mean top-1 is kept.

The loop knows nothing of any particular method, of MLflow or of manifests: progress goes out through the
``log`` callback, state into ``run_dir`` (a killed run resumes from its last epoch; a finished one is not
run again).
"""
from __future__ import annotations

import json
import os
import random
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Iterator, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

try:
    from tqdm.auto import tqdm
except ImportError:  # the bare GPU image has no tqdm; progress bars are a nicety
    def tqdm(iterable, **_):
        return iterable


@dataclass
class Recipe:
    """Optimisation recipe (``recipe`` in a manifest). Defaults: the published CIFAR recipe (mbquant.md §7)."""

    __pydantic_config__ = {"extra": "forbid"}
    epochs: int = 200
    batch_size: int = 128
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 1e-4
    lr_quant: float = 1e-4
    no_weight_decay_on: list[Literal["bn", "depthwise"]] = field(default_factory=list)  # MobileNetV1's recipe
    steps_per_epoch: int | None = None  # cap on training steps per epoch (smoke profiles)
    eval_batch_size: int | None = None  # defaults to batch_size
    device: str = "auto"  # auto: CUDA when present, else CPU
    # torch.compile the training forward: one compilation per bit-width (minutes), then a faster joint step;
    # evaluation stays eager. Bit-Mixer's random layer-wise stage recompiles per draw: leave it off there.
    compile: bool = False


@dataclass
class Trainable:
    """What a method supplies to the trainer."""

    model: nn.Module  # exposes set_bits(b)
    bits: list[int]  # as listed in the manifest; trained in reverse order
    quantizer_params: list[nn.Parameter]  # optimised by Adam; every other parameter by SGD
    loss_policy: str  # a key of LOSS_POLICIES
    initialize: Callable[[nn.Module, Iterable], None] | None = None  # e.g. quantizer calibration batches
    on_epoch_start: Callable[[int, int], None] | None = None  # (epoch, epochs), e.g. a staged schedule


# ----------------------------------------------------------------------------------------------------------
# Loss policies: (logits, targets, logits of the bit-widths already run this step, largest first) -> loss
# ----------------------------------------------------------------------------------------------------------


def soft_cross_entropy(logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
    """-sum_c p_c log softmax(z)_c with p = softmax(teacher), averaged over the batch, temperature 1."""
    return -(F.softmax(teacher_logits, dim=1) * F.log_softmax(logits, dim=1)).sum(dim=1).mean()


def _ce_only(logits, targets, earlier):
    return F.cross_entropy(logits, targets)


def _inplace_distillation(logits, targets, earlier):
    """The first bit-width run (the largest) learns from labels and teaches every other one."""
    if not earlier:
        return F.cross_entropy(logits, targets)
    return 0.5 * (soft_cross_entropy(logits, earlier[0]) + F.cross_entropy(logits, targets))


def _recursive_distillation(logits, targets, earlier):
    """Each bit-width learns from the one run just before it (the next higher); the first from labels."""
    if not earlier:
        return F.cross_entropy(logits, targets)
    return soft_cross_entropy(logits, earlier[-1])


LOSS_POLICIES = {
    "none": _ce_only,
    "inplace": _inplace_distillation,
    "recursive": _recursive_distillation,
}


# ----------------------------------------------------------------------------------------------------------
# Helpers
# ----------------------------------------------------------------------------------------------------------


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def _reseed(loader: Iterable, value: int) -> None:
    """Seed the global RNGs (augmentation, random draws) and the loader's shuffling generator."""
    seed_everything(value)
    if getattr(loader, "generator", None) is not None:
        loader.generator.manual_seed(value)


def _limited(loader: Iterable, steps: int | None) -> Iterator:
    for i, batch in enumerate(loader):
        if steps is not None and i >= steps:
            return
        yield batch


def _to(device: torch.device, batches: Iterable) -> Iterator:
    for x, y in batches:
        yield x.to(device, non_blocking=True), y.to(device, non_blocking=True)


def _save_atomically(obj, path: Path) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def _weight_groups(model: nn.Module, quantizer_params: list[nn.Parameter], recipe: Recipe) -> list[dict]:
    """SGD parameter groups: every non-quantizer parameter, without weight decay where the recipe says so
    (BN affine parameters; depthwise conv weights, i.e. 4-D with one input channel per group)."""
    quant_ids = {id(p) for p in quantizer_params}
    exempt = set()
    for m in model.modules():
        if "bn" in recipe.no_weight_decay_on and isinstance(m, nn.modules.batchnorm._BatchNorm):
            exempt |= {id(p) for p in m.parameters(recurse=False)}
        weight = getattr(m, "weight", None)
        if "depthwise" in recipe.no_weight_decay_on and isinstance(weight, nn.Parameter) and weight.dim() == 4 \
                and weight.shape[1] == 1:
            exempt.add(id(weight))
    params = [p for p in model.parameters() if id(p) not in quant_ids]
    groups = [{"params": [p for p in params if id(p) not in exempt]},
              {"params": [p for p in params if id(p) in exempt], "weight_decay": 0.0}]
    return [g for g in groups if g["params"]]


@torch.no_grad()
def evaluate(model: nn.Module, bits: list[int], loader: Iterable, device: torch.device) -> dict[int, tuple[float, float]]:
    """Top-1 / top-5 accuracy (percent) at every bit-width, model in eval mode."""
    model.eval()
    results = {}
    for b in bits:
        model.set_bits(b)
        correct1 = correct5 = total = 0
        for x, y in _to(device, loader):
            logits = model(x)
            top5 = logits.topk(min(5, logits.shape[1]), dim=1).indices
            hits = top5 == y[:, None]
            correct1 += hits[:, 0].sum().item()
            correct5 += hits.any(dim=1).sum().item()
            total += y.numel()
        results[b] = (100.0 * correct1 / total, 100.0 * correct5 / total)
    return results


# ----------------------------------------------------------------------------------------------------------
# The loop
# ----------------------------------------------------------------------------------------------------------


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
) -> TrainResult:
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    done_file, last_file, best_file = run_dir / "result.json", run_dir / "last.pt", run_dir / "best.pt"
    if done_file.exists():
        saved = json.loads(done_file.read_text())
        saved["final"] = {int(b): tuple(v) for b, v in saved["final"].items()}
        return TrainResult(**{**saved, "already_finished": True})

    device = resolve_device(recipe.device)
    model, bits = trainable.model.to(device), trainable.bits
    loss_fn = LOSS_POLICIES[trainable.loss_policy]
    opt_w = torch.optim.SGD(_weight_groups(model, trainable.quantizer_params, recipe), lr=recipe.lr,
                            momentum=recipe.momentum, weight_decay=recipe.weight_decay)
    opt_q = torch.optim.Adam(trainable.quantizer_params, lr=recipe.lr_quant) if trainable.quantizer_params else None
    optimizers = [o for o in (opt_w, opt_q) if o is not None]
    schedulers = [torch.optim.lr_scheduler.CosineAnnealingLR(o, T_max=recipe.epochs, eta_min=0) for o in optimizers]

    start_epoch, best_mean, best_epoch, best_final, history, resumed_from = 0, 0.0, -1, {}, [], None
    if last_file.exists():
        state = torch.load(last_file, map_location=device, weights_only=False)
        model.load_state_dict(state["model"])
        for o, s in zip(optimizers, state["optimizers"]):
            o.load_state_dict(s)
        for sch, s in zip(schedulers, state["schedulers"]):
            sch.load_state_dict(s)
        start_epoch, history = state["epoch"] + 1, state["history"]
        best_mean, best_epoch, best_final = state["best_mean"], state["best_epoch"], state["best_final"]
        resumed_from = start_epoch
    elif trainable.initialize is not None:
        _reseed(train_loader, seed * 100_003 - 1)
        trainable.initialize(model, _to(device, train_loader))

    forward = torch.compile(model) if recipe.compile else model  # shares the model's parameters
    metrics = best_final
    for epoch in range(start_epoch, recipe.epochs):
        # Re-seed per epoch so a resumed run sees the same batches, augmentation and sampling as an unbroken one.
        _reseed(train_loader, seed * 100_003 + epoch)
        if trainable.on_epoch_start is not None:
            trainable.on_epoch_start(epoch, recipe.epochs)
        model.train()
        loss_sums, steps = {b: 0.0 for b in bits}, 0
        batches = _to(device, _limited(train_loader, recipe.steps_per_epoch))
        total = recipe.steps_per_epoch or (len(train_loader) if hasattr(train_loader, "__len__") else None)
        for x, y in tqdm(batches, total=total, desc=f"epoch {epoch + 1}/{recipe.epochs}", leave=False,
                         disable=not progress):
            for o in optimizers:
                o.zero_grad(set_to_none=True)
            earlier: list[torch.Tensor] = []
            for b in reversed(bits):
                model.set_bits(b)
                logits = forward(x)
                loss = loss_fn(logits, y, earlier)
                loss.backward()
                earlier.append(logits.detach())
                loss_sums[b] += loss.item()
            for o in optimizers:
                o.step()
            steps += 1
        for sch in schedulers:
            sch.step()

        metrics = evaluate(model, bits, val_loader, device)
        row = metric_names(bits, metrics, {b: loss_sums[b] / max(steps, 1) for b in bits})
        history.append({"epoch": epoch, **row})
        if row["val_top1_mean"] > best_mean:  # strictly greater, starting from 0 (the release's rule)
            best_mean, best_epoch, best_final = row["val_top1_mean"], epoch, metrics
            _save_atomically({"model": model.state_dict(), "epoch": epoch, "metrics": metrics}, best_file)
        _save_atomically({
            "model": model.state_dict(), "optimizers": [o.state_dict() for o in optimizers],
            "schedulers": [s.state_dict() for s in schedulers], "epoch": epoch, "history": history,
            "best_mean": best_mean, "best_epoch": best_epoch, "best_final": best_final,
        }, last_file)
        if log is not None:  # after the checkpoint: a logged epoch is never trained twice
            log({**row, "best_val_top1_mean": best_mean}, epoch)

    # A run that never beat 0 % has no best epoch: report its last evaluation instead of nothing.
    result = TrainResult(best_epoch, best_mean, best_final or metrics, history, resumed_from)
    tmp = done_file.with_suffix(".tmp")
    tmp.write_text(json.dumps(asdict(result), indent=1))
    os.replace(tmp, done_file)
    return result
