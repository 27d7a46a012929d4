"""The bill before the launch: every (arm, seed) job of a manifest with its state, its steps left and its
estimated device-hours, from a short measured probe of the real training step on this device (or a given
step time). Reads the run store; writes nothing.
"""
from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from suite.bench import make_train_step
from suite.checkpoints import CheckpointSeries
from suite.data import SPLIT_SIZES, missing_folder, num_classes
from suite.manifest import LoadedManifest, Manifest, ResolvedArm
from suite.recipe import Recipe
from suite.tracking import TAG_KEY, tracking_uri
from suite.trainer import resolve_device

IMAGENET_SPLITS = (1_281_167, 50_000)  # ILSVRC-2012, when the folders are not on this machine to count
EVAL_SHARE = 1 / 3  # an evaluation pass over an image (every bit-width, forward only) ~ a third of a training step's


@dataclass
class JobPlan:
    arm: str
    seed: int
    state: str
    steps_left: int
    step_seconds: float
    hours: float


def splits(cfg: Manifest) -> tuple[int, int]:
    """Training and validation images a run of ``cfg`` uses."""
    train, val = SPLIT_SIZES.get(cfg.data.dataset, IMAGENET_SPLITS)
    return cfg.data.train_limit or train, cfg.data.val_limit or val


def steps_per_epoch(cfg: Manifest) -> int:
    full = splits(cfg)[0] // cfg.recipe.batch_size
    return min(full, cfg.recipe.steps_per_epoch or full)


def probe_step_seconds(arm: ResolvedArm, probe_batch: int | None = None, repeats: int = 2) -> float:
    """Seconds of one joint step at the recipe's global batch, scaled from ``probe_batch`` images of random data
    through the real trainer step on this device (step time grows about linearly with the batch; a small probe
    batch overestimates, since fixed per-step costs are scaled too). Default: 32 images, 8 above 64 pixels."""
    cfg = arm.config
    batch = min(probe_batch or (32 if cfg.data.image_size <= 64 else 8), cfg.recipe.batch_size)
    size, classes = cfg.data.image_size, num_classes(cfg.data.dataset)
    images = (torch.randn(batch, 3, size, size), torch.randint(0, classes, (batch,)))
    step = make_train_step(cfg.model.arch, cfg.data.dataset, cfg.method.bits, images, cfg.method.name,
                           cfg.method.options, recipe=Recipe(device=cfg.recipe.device))
    step()  # warm-up: allocation, kernel selection
    started = time.perf_counter()
    for _ in range(repeats):
        step()
    return (time.perf_counter() - started) / repeats * cfg.recipe.batch_size / batch


def job_state(arm: ResolvedArm, seed: int, results: Path, finished_elsewhere: Callable[[str], str | None]) -> tuple[str, int]:
    """(state, steps already done) of one job, read from its run directory and the tracking store."""
    cfg = arm.config
    run_dir = arm.run_dir(results, seed)
    total = cfg.recipe.epochs * steps_per_epoch(cfg)
    if (run_dir / "result.json").exists():
        return "finished", total
    manifest = finished_elsewhere(arm.run_key(seed))
    if manifest is not None:
        return f"reused from {manifest}", total
    files = CheckpointSeries(run_dir, "last").files()
    if files:
        done = int(files[-1].stem.rsplit("-", 1)[1])
        return f"resumable at epoch {done // steps_per_epoch(cfg) + 1}", done
    return "new", 0


def finished_runs_lookup(results: Path) -> Callable[[str], str | None]:
    """run key -> the manifest of a FINISHED run with that key in the tracking store, if the store exists."""
    uri = tracking_uri(results)
    if uri.startswith("sqlite:///") and not Path(uri.removeprefix("sqlite:///")).exists():
        return lambda key: None
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    experiments = [e.experiment_id for e in client.search_experiments()]

    def lookup(key: str) -> str | None:
        found = client.search_runs(experiments, f"tags.`{TAG_KEY}` = '{key}' and attributes.status = 'FINISHED'",
                                   max_results=1) if experiments else []
        return found[0].data.tags.get("suite.manifest", "another manifest") if found else None
    return lookup


def plan(loaded: LoadedManifest, results: Path, *, step_seconds: float | dict[str, float] | None = None,
         probe_batch: int | None = None, jobs_per_gpu: int = 1, gain: float | None = None,
         echo: Callable[[str], None] = print) -> list[JobPlan]:
    """Every job of ``loaded`` with its state and estimated device-hours; prints the table and the totals.
    ``step_seconds``: one time for every arm, or one per arm name (``suite doctor``'s measurements). With
    ``jobs_per_gpu`` K > 1 and ``gain`` (the measured throughput of K jobs sharing a GPU, relative to one job's),
    the wall time on one GPU is printed too."""
    lookup = finished_runs_lookup(Path(results))
    probes: dict[str, float] = {}
    rows = []
    for arm in loaded.arms:
        cfg = arm.config
        what = repr((cfg.model.arch, cfg.method.model_dump(), cfg.data.image_size, cfg.recipe.batch_size))
        for seed in loaded.manifest.seeds:
            state, done = job_state(arm, seed, Path(results), lookup)
            left = cfg.recipe.epochs * steps_per_epoch(cfg) - done
            given = step_seconds.get(arm.name) if isinstance(step_seconds, dict) else step_seconds
            seconds = given or 0.0  # a finished job needs no probe
            if given is None and left:
                if what not in probes:
                    probes[what] = probe_step_seconds(arm, probe_batch)
                seconds = probes[what]
            train, val = splits(cfg)
            epochs_left = math.ceil(left / steps_per_epoch(cfg))
            evaluation = epochs_left * val / cfg.recipe.batch_size * seconds * EVAL_SHARE
            rows.append(JobPlan(arm.name, seed, state, left, seconds, (left * seconds + evaluation) / 3600))
    source = "the steps measured by suite doctor" if isinstance(step_seconds, dict) else \
        f"{step_seconds} s per step (given)" if step_seconds is not None else \
        f"a probe of the real step at batch {probe_batch or '32 (8 above 64 px)'}, scaled to each arm's batch, on " \
        f"{_device_name(loaded)}"
    width = max(len(r.arm) for r in rows)
    echo(f"{loaded.manifest.name}, profile {loaded.profile}: {len(rows)} job(s); step times from {source}")
    for folder in sorted({missing_folder(arm.config.data) for arm in loaded.arms} - {None}):
        echo(f"  warning: no data at {folder}: `run` will stop there until the dataset is in place (docs/paper-protocol.md)")
    echo(f"  {'arm':<{width}}  seed  {'state':<28} {'steps left':>11} {'s/step':>8} {'device-hours':>13}")
    for r in rows:
        echo(f"  {r.arm:<{width}}  {r.seed:>4}  {r.state:<28} {r.steps_left:>11,} {r.step_seconds:>8.3f} {r.hours:>13.1f}")
    echo(f"  total: {sum(r.hours for r in rows):,.1f} device-hours for {sum(r.steps_left > 0 for r in rows)} job(s) "
         f"to run (training steps, plus evaluation at {EVAL_SHARE:.2f} of a step per image); on k devices per job "
         "under torchrun, about 1/k of the wall time each")
    if jobs_per_gpu > 1:
        hours = sum(r.hours for r in rows)
        echo(f"  {jobs_per_gpu} jobs per GPU: " + (
            f"{hours / gain:,.1f} wall hours on one GPU (measured throughput {gain:.2f}x one job's)" if gain else
            "the wall time needs the measured throughput of jobs sharing a GPU: `suite doctor MANIFEST` reports "
            "it (--gain)"))
    return rows


def _device_name(loaded: LoadedManifest) -> str:
    device = resolve_device(loaded.manifest.recipe.device)
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({torch.get_num_threads()} threads, {os.cpu_count()} cores)"
