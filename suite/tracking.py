"""MLflow tracking: one parent run per manifest invocation, one nested run per (arm, seed).

The store is SQLite under ``results/`` unless ``MLFLOW_TRACKING_URI`` points elsewhere (a team server, say).
Runs are identified by a ``suite.run_key`` tag (manifest, arm, seed and a hash of the complete
configuration), which is how a finished run is found and skipped, and a killed one reopened and resumed.
mlflow is imported lazily so the model/trainer core runs where it is not installed.
"""
from __future__ import annotations

import os
import platform
import subprocess
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import torch


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


def environment_tags() -> dict[str, str]:
    """Where a run ran: torch and CUDA versions, GPU model and count, CPU and threads."""
    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    cpu = platform.processor() or platform.machine()
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                   if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return {"torch.version": torch.__version__, "suite.cuda": torch.version.cuda or "none",
            "suite.gpu": torch.cuda.get_device_name(0) if gpus else "none", "suite.gpu_count": str(gpus),
            "suite.cpu": cpu, "suite.cpu_threads": str(torch.get_num_threads()),
            "python.version": platform.python_version()}


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

    @contextmanager
    def artifact_dir(self, run_id: str) -> Iterator[Path]:
        """A temporary folder whose files are logged to the run when the block ends without error."""
        with tempfile.TemporaryDirectory() as tmp:
            yield Path(tmp)
            for path in sorted(Path(tmp).iterdir()):
                self.log_artifact(run_id, path)

    @contextmanager
    def running(self, run_id: str) -> Iterator[str]:
        """Close ``run_id`` as FINISHED when the block ends, KILLED on an interrupt, FAILED on any other error."""
        try:
            yield run_id
        except BaseException as err:
            self.finish(run_id, "KILLED" if isinstance(err, KeyboardInterrupt) else "FAILED")
            raise
        self.finish(run_id)

    def set_tags(self, run_id: str, tags: dict[str, str]) -> None:
        for k, v in tags.items():
            self.client.set_tag(run_id, k, str(v))

    def finish(self, run_id: str, status: str = "FINISHED") -> None:
        self.client.set_terminated(run_id, status)
