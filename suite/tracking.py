"""MLflow tracking: one parent run per manifest invocation, one nested run per (arm, seed).

The store is SQLite under ``results/`` unless ``MLFLOW_TRACKING_URI`` points elsewhere (a team server, say).
Runs are identified by a ``suite.run_key`` tag (manifest, arm, seed and a hash of the complete
configuration), which is how a finished run is found and skipped, and a killed one reopened and resumed.
mlflow is imported lazily so the model/trainer core runs where it is not installed.
"""
from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path
from typing import Any

import pandas as pd

TAG_KIND, TAG_KEY = "suite.kind", "suite.run_key"
PARENT_TAG = "mlflow.parentRunId"


def tracking_uri(results_dir: Path) -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{(Path(results_dir) / 'mlflow.db').resolve()}"


def git_state(cwd: Path | None = None) -> dict[str, str]:
    def git(*args):
        return subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, timeout=10)

    try:
        commit = git("rev-parse", "HEAD")
        dirty = git("status", "--porcelain", "--untracked-files=no")
    except (OSError, subprocess.SubprocessError):
        return {"git.commit": "unknown", "git.dirty": "unknown"}
    if commit.returncode != 0:
        return {"git.commit": "unknown", "git.dirty": "unknown"}
    return {"git.commit": commit.stdout.strip(), "git.dirty": str(bool(dirty.stdout.strip())).lower()}


class Tracker:
    def __init__(self, results_dir: Path):
        import mlflow  # noqa: F401  (fail here, clearly, if the tracking extra is missing)
        from mlflow.tracking import MlflowClient

        self.results_dir = Path(results_dir)
        self.results_dir.mkdir(parents=True, exist_ok=True)
        self.uri = tracking_uri(self.results_dir)
        self.client = MlflowClient(tracking_uri=self.uri)

    def experiment_id(self, name: str) -> str:
        exp = self.client.get_experiment_by_name(name)
        if exp is not None:
            return exp.experiment_id
        location = None
        if self.uri.startswith("sqlite:"):  # keep artifacts beside the store, not in the working directory
            location = (self.results_dir / "mlflow-artifacts" / name).resolve().as_uri()
        return self.client.create_experiment(name, artifact_location=location)

    def start_parent(self, experiment_id: str, name: str, tags: dict[str, str], params: dict[str, Any]) -> str:
        run = self.client.create_run(experiment_id, run_name=name, tags={**tags, TAG_KIND: "invocation"})
        self.log_params(run.info.run_id, params)
        return run.info.run_id

    def find(self, run_key: str, experiment_id: str | None = None, status: str | None = None):
        """The newest run with this key (in one experiment, or in any), optionally of one status; else None."""
        ids = [experiment_id] if experiment_id else [e.experiment_id for e in self.client.search_experiments()]
        query = f"tags.`{TAG_KEY}` = '{run_key}'" + (f" and attributes.status = '{status}'" if status else "")
        runs = self.client.search_runs(ids, filter_string=query, order_by=["attributes.start_time DESC"], max_results=1)
        return runs[0] if runs else None

    def original(self, run):
        """The run that actually trained: ``run`` itself, or the one a reuse record points to."""
        source = run.data.tags.get("suite.reused_from")
        return self.client.get_run(source) if source else run

    def record_reuse(self, previous, experiment_id: str, parent_id: str, name: str, tags: dict[str, str],
                     metrics: dict[str, float]) -> str:
        """A finished run in this experiment that reports an identical run that trained elsewhere (``previous``,
        an original, not a record), with the ``metrics`` of that run it carries over."""
        run = self.client.create_run(experiment_id, run_name=name, tags={
            **tags, TAG_KIND: previous.data.tags[TAG_KIND], TAG_KEY: previous.data.tags[TAG_KEY],
            PARENT_TAG: parent_id, "suite.reused_from": previous.info.run_id,
        })
        self.log_params(run.info.run_id, previous.data.params)
        self.log_metrics(run.info.run_id, metrics, 0)
        self.finish(run.info.run_id)
        return run.info.run_id

    def start_child(self, experiment_id: str, parent_id: str, name: str, run_key: str, tags: dict[str, str],
                    params: dict[str, Any], kind: str = "arm-run") -> tuple[str, bool]:
        """Open the run for ``run_key``: the unfinished one from an earlier, killed invocation if any.

        Returns (run_id, reopened).
        """
        previous = self.find(run_key, experiment_id)
        if previous is not None and previous.info.status != "FINISHED":
            self.client.update_run(previous.info.run_id, status="RUNNING")
            self.client.set_tag(previous.info.run_id, "suite.resumed_by", parent_id)
            return previous.info.run_id, True
        run = self.client.create_run(experiment_id, run_name=name, tags={
            **tags, TAG_KIND: kind, TAG_KEY: run_key, PARENT_TAG: parent_id,
        })
        self.log_params(run.info.run_id, params)
        return run.info.run_id, False

    def log_params(self, run_id: str, params: dict[str, Any]) -> None:
        from mlflow.entities import Param

        items = [Param(k, str(v)[:6000]) for k, v in params.items()]
        for i in range(0, len(items), 100):  # MLflow's batch limit for params
            self.client.log_batch(run_id, params=items[i:i + 100])

    def log_metrics(self, run_id: str, metrics: dict[str, float], step: int) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self.client.log_batch(run_id, metrics=[Metric(k, float(v), now, step) for k, v in metrics.items()])

    def log_artifact(self, run_id: str, path: Path, subdir: str | None = None) -> None:
        self.client.log_artifact(run_id, str(path), subdir)

    def set_tags(self, run_id: str, tags: dict[str, str]) -> None:
        for k, v in tags.items():
            self.client.set_tag(run_id, k, str(v))

    def finish(self, run_id: str, status: str = "FINISHED") -> None:
        self.client.set_terminated(run_id, status)


def _finished_runs(results_dir: Path, kind: str) -> list:
    """Finished runs of one kind (``arm-run``, ``cost-run``) across all experiments, newest first."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=tracking_uri(results_dir))
    experiments = client.search_experiments()
    if not experiments:
        return []
    return client.search_runs(
        [e.experiment_id for e in experiments], order_by=["attributes.start_time DESC"], max_results=50_000,
        filter_string=f"tags.`{TAG_KIND}` = '{kind}' and attributes.status = 'FINISHED'",
    )


QERR_KINDS = ("weight", "act", "drift", "logits")  # per-bit means of the quant_error analysis
RUN_COLUMNS = ["manifest", "manifest_version", "title", "paper_ref", "paper_verified", "profile", "arm", "method",
               "seed", "bits", "top1", "top5", "dataset", "model", "run_id", "manifest_hash", "setup",
               "tolerance", "storage_mib", "bitops"] + [f"qerr_{k}" for k in QERR_KINDS]


def load_runs(results_dir: Path) -> pd.DataFrame:
    """Finished (arm, seed) runs as one row per evaluated bit-width (the report's input).

    Per (manifest, profile, arm, seed) only the newest run is kept, so changing a manifest and re-running
    does not mix old and new numbers.
    """
    rows = []
    for run in _finished_runs(results_dir, "arm-run"):
        t, m = run.data.tags, run.data.metrics
        for b in [int(x) for x in t["suite.bits"].split(",")]:
            rows.append({
                "manifest": t["suite.manifest"], "manifest_version": int(t["suite.manifest_version"]),
                "title": t["suite.title"], "paper_ref": t["suite.paper_ref"],
                "paper_verified": t["suite.paper_verified"] == "true", "profile": t["suite.profile"],
                "arm": t["suite.arm"], "method": t["suite.method"], "seed": int(t["suite.seed"]), "bits": b,
                "top1": m.get(f"final_top1_b{b}"), "top5": m.get(f"final_top5_b{b}"),
                "storage_mib": m.get("storage_mib"), "bitops": m.get(f"bitops_b{b}"),
                **{f"qerr_{k}": m.get(f"qerr_{k}_b{b}") for k in QERR_KINDS},
                "dataset": t["suite.dataset"], "model": t["suite.model"], "run_id": run.info.run_id,
                "manifest_hash": t["suite.manifest_hash"], "setup": t.get("suite.setup"),
                "tolerance": float(t["suite.tolerance"]) if t.get("suite.tolerance") else float("nan"),
                "_start": run.info.start_time,
            })
    df = pd.DataFrame(rows, columns=RUN_COLUMNS + ["_start"])
    if df.empty:
        return df.drop(columns="_start")
    newest = df.groupby(["manifest", "profile", "arm", "seed"])["_start"].transform("max")
    df = df[df["_start"] == newest].drop(columns="_start")
    return df.sort_values(["manifest", "profile", "arm", "seed", "bits"]).reset_index(drop=True)


def load_costs(results_dir: Path) -> pd.DataFrame:
    """Finished ``task: costs`` runs, one row per (arm, bit-width), newest per (manifest, profile, arm)."""
    rows, seen = [], set()
    for run in _finished_runs(results_dir, "cost-run"):  # newest first
        t, m = run.data.tags, run.data.metrics
        key = (t["suite.manifest"], t["suite.profile"], t["suite.arm"])
        if key in seen:
            continue
        seen.add(key)
        for b in [int(x) for x in t["suite.bits"].split(",")]:
            rows.append({"manifest": t["suite.manifest"], "profile": t["suite.profile"], "title": t["suite.title"],
                         "paper_ref": t["suite.paper_ref"], "paper_verified": t["suite.paper_verified"] == "true",
                         "arm": t["suite.arm"], "method": t["suite.method"],
                         "model": t["suite.model"], "bits": b, "storage_mib": m["storage_mib"],
                         "macs": m[f"macs_b{b}"], "bitops": m[f"bitops_b{b}"], "fp_macs": m[f"fp_macs_b{b}"]})
    return pd.DataFrame(rows)
