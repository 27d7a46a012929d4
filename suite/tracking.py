"""MLflow tracking: one parent run per manifest invocation, one nested run per (arm, seed).

The store is SQLite under ``results/`` unless ``MLFLOW_TRACKING_URI`` points elsewhere (a team server, say).
Runs are identified by a ``suite.run_key`` tag (manifest, arm, seed and a hash of the complete
configuration), which is how a finished run is found and skipped, and a killed one reopened and resumed.
mlflow is imported lazily so the model/trainer core runs where it is not installed.
"""
from __future__ import annotations

import os
import platform
import sqlite3
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import torch
from filelock import FileLock, Timeout

from suite import interrupts
from suite.paths import inside


TAG_KIND, TAG_KEY, TAG_OWNER = "suite.kind", "suite.run_key", "suite.owner"
PARENT_TAG = "mlflow.parentRunId"
PROBE_TIMEOUT_S = 5
# A run's end results (not per-epoch series): what a reuse record carries over.
FINAL_METRICS = ("final_", "best_epoch", "storage_", "macs_", "bitops_", "fp_macs_")
# Experiments open on MLflow's runs table (its "machine learning" view) rather than its GenAI traces view.
EXPERIMENT_KIND = {"mlflow.experimentKind": "custom_model_development"}


class StoreError(RuntimeError):
    """The tracking store cannot be used; the message names it and what to do."""


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


def check_store(uri: str) -> None:
    """Fail within seconds, naming ``uri``, when the tracking store cannot be used: an unreachable server (MLflow's
    own client would retry for minutes), or a SQLite file that is not an intact MLflow store."""
    if uri.startswith("sqlite:///"):
        path = Path(uri.removeprefix("sqlite:///"))
        if not path.exists():
            return
        try:
            with sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=PROBE_TIMEOUT_S) as db:
                status = db.execute("PRAGMA quick_check").fetchone()[0]
                tables = {row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        except sqlite3.DatabaseError as err:
            status, tables = str(err), {"?"}
        if status == "ok" and tables and "experiments" not in tables:
            status = "it holds no MLflow tables"
        if status != "ok":
            raise StoreError(f"{path} is not an intact MLflow SQLite store ({status}): move it aside to start a new "
                             f"store; the checkpoints under {path.parent / 'runs'} are kept and resume")
    elif uri.startswith(("http://", "https://")):
        try:
            urllib.request.urlopen(f"{uri.rstrip('/')}/health", timeout=PROBE_TIMEOUT_S).close()
        except urllib.error.HTTPError:
            pass  # the server answered
        except (urllib.error.URLError, OSError, ValueError) as err:
            reason = getattr(err, "reason", err)
            raise StoreError(f"the tracking server {uri} cannot be reached within {PROBE_TIMEOUT_S} s ({reason}): "
                             "start it, or check MLFLOW_TRACKING_URI") from None


def lock_is_free(path: Path) -> bool:
    """Whether the file lock ``path`` exists and no process holds it (its holder, if any, is gone)."""
    if not path.exists():
        return False
    lock = FileLock(path)
    try:
        lock.acquire(timeout=0)
    except Timeout:
        return False
    lock.release()
    return True


class Tracker:
    def __init__(self, results_dir: Path, uri: str | None = None):
        """The store at ``uri`` (default: ``MLFLOW_TRACKING_URI``, else ``results_dir/mlflow.db``)."""
        from mlflow.tracking import MlflowClient

        self.results_dir = Path(results_dir)
        self.uri = uri or tracking_uri(self.results_dir)
        check_store(self.uri)
        self.results_dir.mkdir(parents=True, exist_ok=True)
        self.locks = self.results_dir / "locks"
        if self.uri.startswith("sqlite:"):
            self.sqlite_path.parent.mkdir(parents=True, exist_ok=True)  # a bundle's folder (run --offline)
        if self.uri.startswith("sqlite:"):
            # A new SQLite store migrates its schema on first use: one process at a time, or they race; and a stop
            # signal waits until it is done (an interrupted migration leaves a store no process can open).
            with FileLock(self.sqlite_path.with_name(".mlflow.db.lock")), interrupts.deferred():
                self.client = MlflowClient(tracking_uri=self.uri)
                self.client.search_experiments(max_results=1)
        else:
            self.client = MlflowClient(tracking_uri=self.uri)

    def close_orphans(self) -> list[str]:
        """Close as KILLED every RUNNING run whose owning invocation is gone (its lock file is free); their ids.

        A process killed without a chance to clean up (SIGKILL, power loss) leaves its runs RUNNING."""
        experiments = self.experiment_ids()
        if not experiments:
            return []
        closed, owners = [], {}
        for run in self.client.search_runs(experiments, "attributes.status = 'RUNNING'", max_results=5000):
            owner = run.data.tags.get(TAG_OWNER)
            if owner and owners.setdefault(owner, lock_is_free(self.invocation_lock(owner))):
                self.finish(run.info.run_id, "KILLED")
                closed.append(run.info.run_id)
        for owner, dead in owners.items():
            if dead:
                self.invocation_lock(owner).unlink(missing_ok=True)
        return closed

    def invocation_lock(self, parent_id: str) -> Path:
        return self.locks / f"invocation-{parent_id}.lock"

    def experiment_id(self, name: str) -> str:
        exp = self.client.get_experiment_by_name(name)
        if exp is not None:
            if not set(EXPERIMENT_KIND) <= set(exp.tags):  # created by an earlier version of the suite
                for key, value in EXPERIMENT_KIND.items():
                    self.client.set_experiment_tag(exp.experiment_id, key, value)
            return exp.experiment_id
        location = None
        if self.uri.startswith("sqlite:"):  # keep artifacts beside the store, not in the working directory
            location = inside(self.sqlite_path.parent, "mlflow-artifacts", name).resolve().as_uri()
        return self.client.create_experiment(name, artifact_location=location, tags=EXPERIMENT_KIND)

    def experiment_ids(self) -> list[str]:
        return [e.experiment_id for e in self.client.search_experiments()]

    @property
    def sqlite_path(self) -> Path:
        return Path(self.uri.removeprefix("sqlite:///")).resolve()

    @contextmanager
    def invocation(self, experiment_id: str, name: str, tags: dict[str, str], params: dict[str, Any]) -> Iterator[str]:
        """The parent run of one invocation, open for the block, closed as ``running`` closes it. The process holds
        the invocation's lock file meanwhile, so a later ``close_orphans`` can tell it is alive."""
        run_id = self.client.create_run(experiment_id, run_name=name, tags={**tags, TAG_KIND: "invocation"}).info.run_id
        self.locks.mkdir(parents=True, exist_ok=True)
        lock = FileLock(self.invocation_lock(run_id))
        lock.acquire()
        try:
            self.set_tags(run_id, {TAG_OWNER: run_id, "suite.host": platform.node(), "suite.pid": str(os.getpid())})
            with self.running(run_id):
                self.log_params(run_id, params)
                yield run_id
        finally:
            lock.release()
            self.invocation_lock(run_id).unlink(missing_ok=True)

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
        """A finished run in this experiment that stands for an identical run that trained elsewhere (``previous``,
        an original, not a record): named and described as a reuse, pointing at that run and its artifacts,
        carrying its final ``metrics`` only (no per-epoch series: nothing was trained here)."""
        source = previous.info
        experiment = self.client.get_experiment(source.experiment_id).name
        note = (f"**Reuse record**: no training happened here. An identical configuration (run key "
                f"`{previous.data.tags[TAG_KEY]}`) finished in experiment **{experiment}** as run "
                f"[{source.run_id}](#/experiments/{source.experiment_id}/runs/{source.run_id}); its final metrics are "
                f"copied here. Its training curves and artifacts are there: {source.artifact_uri}")
        run = self.client.create_run(experiment_id, run_name=f"{name} (reused)", tags={
            **tags, TAG_KIND: previous.data.tags[TAG_KIND], TAG_KEY: previous.data.tags[TAG_KEY],
            PARENT_TAG: parent_id, "suite.reused_from": source.run_id, "suite.reused_from_experiment": experiment,
            "suite.reused_artifacts": source.artifact_uri, "mlflow.note.content": note,
        })
        self.log_params(run.info.run_id, previous.data.params)
        self.log_metrics(run.info.run_id, {k: v for k, v in metrics.items() if k.startswith(FINAL_METRICS)}, 0)
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
            self.set_tags(previous.info.run_id, {"suite.resumed_by": parent_id, TAG_OWNER: parent_id})
            return previous.info.run_id, True
        run = self.client.create_run(experiment_id, run_name=name, tags={
            **tags, TAG_KIND: kind, TAG_KEY: run_key, PARENT_TAG: parent_id, TAG_OWNER: parent_id,
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

    def logged_steps(self, run_id: str, key: str) -> set[int]:
        """The steps at which metric ``key`` of ``run_id`` was logged."""
        return {m.step for m in self.client.get_metric_history(run_id, key)}
