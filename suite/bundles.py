"""Runs tracked where the tracking service cannot be reached: each job writes a self-contained bundle (an MLflow
SQLite store and its artifacts, ``run --offline DIR``), and ``import-runs DIR`` merges bundles into the store.

A bundle is an ordinary MLflow store, so ``mlflow ui`` opens one as it is. Importing copies every finished run
(parents first; tags, params, full metric histories, artifacts, status and times) and marks the copy with
``suite.imported_from = <bundle>/<run id>``: importing a bundle twice adds nothing, and a run still RUNNING in
its bundle waits for a later import.
"""
from __future__ import annotations

import os
import platform
import tempfile
import time
from pathlib import Path
from typing import Callable

from suite.tracking import PARENT_TAG, Tracker

IMPORTED_FROM = "suite.imported_from"
REWRITTEN_TAGS = (PARENT_TAG, "suite.reused_from", "suite.owner", "suite.resumed_by")  # run ids: mapped on import


def new_bundle(folder: str | os.PathLike) -> str:
    """The tracking URI of a new bundle under ``folder``, unique to this process (created on first use)."""
    path = Path(folder).resolve() / f"{platform.node()}-{os.getpid()}-{int(time.time())}"
    return f"sqlite:///{path / 'mlflow.db'}"


def import_bundles(folder: str | os.PathLike, tracker: Tracker, echo: Callable[[str], None] = print) -> tuple[int, int]:
    """Copy every finished run of every bundle under ``folder`` into ``tracker``'s store; (imported, already there)."""
    from mlflow.entities import Metric
    from mlflow.tracking import MlflowClient

    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    imported = present = 0
    for db in sorted(Path(folder).rglob("mlflow.db")):
        source = MlflowClient(f"sqlite:///{db.resolve()}")
        experiments = {e.experiment_id: e.name for e in source.search_experiments()}
        runs = source.search_runs(list(experiments), max_results=50_000, order_by=["attributes.start_time ASC"])
        runs.sort(key=lambda r: PARENT_TAG in r.data.tags)  # parents first: their children point at them
        ids: dict[str, str] = {}
        for run in runs:
            mark = f"{db.parent.name}/{run.info.run_id}"
            if run.info.status == "RUNNING":
                echo(f"  {mark}: still running, not imported (import again once its job has ended)")
                continue
            found = tracker.client.search_runs(tracker.experiment_ids(), f"tags.`{IMPORTED_FROM}` = '{mark}'",
                                               max_results=1)
            if found:
                ids[run.info.run_id] = found[0].info.run_id
                present += 1
                continue
            tags = {k: ids.get(v, v) if k in REWRITTEN_TAGS else v for k, v in run.data.tags.items()}
            copy = tracker.client.create_run(tracker.experiment_id(experiments[run.info.experiment_id]),
                                             start_time=run.info.start_time, run_name=run.info.run_name,
                                             tags=tags | {IMPORTED_FROM: mark}).info.run_id
            ids[run.info.run_id] = copy
            tracker.log_params(copy, run.data.params)
            history = [Metric(m.key, m.value, m.timestamp, m.step) for key in run.data.metrics
                       for m in source.get_metric_history(run.info.run_id, key)]
            for i in range(0, len(history), 1000):  # MLflow's batch limit for metrics
                tracker.client.log_batch(copy, metrics=history[i:i + 1000])
            with tempfile.TemporaryDirectory() as tmp:
                if source.list_artifacts(run.info.run_id):
                    tracker.client.log_artifacts(copy, source.download_artifacts(run.info.run_id, "", tmp))
            tracker.client.set_terminated(copy, run.info.status, end_time=run.info.end_time)
            imported += 1
        echo(f"{db.parent}: {len(runs)} run(s)")
    return imported, present
