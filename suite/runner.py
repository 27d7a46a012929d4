"""Runs a resolved manifest: every (arm, seed) job as one tracked MLflow run under one parent run per invocation.

What a run does is its task's (``task`` in the manifest, suite.tasks: ``train``, ``costs``, ``evaluate``); every
run goes through the same lifecycle (suite.lifecycle): a run is identified by its configuration, and an identical
run that finished is reused, not run again.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable

import pandas as pd
import torch

from suite.distributed import SINGLE, Distributed, from_environment
from suite.invocation import Invocation, describe_experiment, manifest_tags
from suite.manifest import LoadedManifest, ManifestError, flatten
from suite.tasks import task as registered_task
from suite.titles import experiment_name, invocation_name
from suite.tracking import Tracker


def preflight(loaded: LoadedManifest, dist: Distributed = SINGLE) -> Any:
    """Everything that can be checked without the tracking store, so that a missing device, dataset or checkpoint
    fails before any run is opened or any file written. Returns the task's state for its runs (an ``evaluate``
    task's checkpoints)."""
    for arm in loaded.arms:
        recipe = arm.config.recipe
        if recipe.device != "auto" and torch.device(recipe.device).type == "cuda":
            index, count = torch.device(recipe.device).index or 0, torch.cuda.device_count() if torch.cuda.is_available() else 0
            if index >= count:
                raise ManifestError(f"{loaded.path}: field `recipe.device`: {recipe.device} is not present on this "
                                    f"machine ({count} CUDA device(s)); use auto or cpu")
        if recipe.batch_size % dist.world_size:
            raise ManifestError(f"{loaded.path}: field `recipe.batch_size`: the global batch {recipe.batch_size} does "
                                f"not divide into {dist.world_size} processes (arm {arm.name})")
    return registered_task(loaded.manifest.task).preflight(loaded, dist)


def run_manifest(loaded: LoadedManifest, results_dir: Path, *, progress: bool = True,
                 echo: Callable[[str], None] = print, tracking: str | None = None) -> pd.DataFrame:
    """Run every (arm, seed) not already finished; returns one row per (arm, seed, bit-width). ``tracking``: the
    tracking URI (default: ``MLFLOW_TRACKING_URI``, else the SQLite store in ``results_dir``).

    Under torchrun (``WORLD_SIZE`` > 1) every process calls this: a task's runs are shared by all of them where
    the task says so (training), else run on rank 0 alone.
    """
    m, task = loaded.manifest, registered_task(loaded.manifest.task)
    dist = from_environment()
    state = preflight(loaded, dist)
    jobs = [(arm, seed) for arm in loaded.arms for seed in (m.seeds if task.seeded else [0])]
    if not dist.main:
        inv = Invocation(loaded, Path(results_dir), progress, echo, dist)
        for arm, seed in jobs if task.all_ranks else []:
            task.run_arm(inv, arm, seed, state)
        return pd.DataFrame()
    tracker = Tracker(results_dir, tracking)
    for run_id in tracker.close_orphans():
        echo(f"closed run {run_id} as KILLED: the process running it is gone")
    experiment = tracker.experiment_id(experiment_name(loaded))
    tags = manifest_tags(loaded) | {"suite.world_size": str(dist.world_size)}
    params = flatten(m.model_dump(mode="json", exclude={"profiles", "arms"}))
    rows: list[dict] = []
    with tracker.invocation(experiment, invocation_name(loaded),
                            tags | {"suite.jobs": json.dumps(loaded.jobs)}, params) as parent:
        inv = Invocation(loaded, Path(results_dir), progress, echo, dist, tracker, experiment, parent, tags)
        describe_experiment(inv)
        runs = f"{len(loaded.arms)} arm(s)" + (f" x {len(m.seeds)} seed(s)" if task.seeded else "")
        where = f" on {dist.world_size} processes" if dist.active else ""
        echo(f"{m.name} ({m.paper.ref}, profile {loaded.profile}): {runs}{where}; MLflow {tracker.uri}")
        with tracker.artifact_dir(parent) as tmp:
            (tmp / f"{m.name}.{loaded.profile}.resolved.yaml").write_text(loaded.resolved_yaml())
        for arm, seed in jobs:
            rows += task.run_arm(inv, arm, seed, state)
        task.summarize(inv, pd.DataFrame(rows))
    return pd.DataFrame(rows)
