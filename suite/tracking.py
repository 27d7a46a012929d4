"""MLflow tracking: one parent run per manifest invocation, one nested run per (arm, seed).

The store is SQLite under ``results/`` unless ``MLFLOW_TRACKING_URI`` points elsewhere (a team server, say).
Runs are identified by a ``suite.run_key`` tag (manifest, arm, seed and a hash of the complete
configuration), which is how a finished run is found and skipped, and a killed one reopened and resumed.
mlflow is imported lazily so the model/trainer core runs where it is not installed.
"""
from __future__ import annotations

import logging
import os
import platform
import re
import sqlite3
import subprocess
import tempfile
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator
from urllib.parse import urlparse

import torch
from filelock import FileLock, Timeout

from suite import interrupts
from suite.paths import disk_full, inside


TAG_KIND, TAG_KEY, TAG_OWNER = "suite.kind", "suite.run_key", "suite.owner"
PARENT_TAG = "mlflow.parentRunId"
PROBE_TIMEOUT_S = 5
# Every request to a tracking server is bounded through MLflow's own settings (its defaults retry for minutes, and
# honour a Retry-After of any length): 3 tries of at most 8 s, 2-2.5 s apart, under 30 s in all. Set by the
# suite only where the user has not set them; processes it starts inherit them.
HTTP_LIMITS = {"MLFLOW_HTTP_REQUEST_TIMEOUT": "8", "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2",
               "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1", "MLFLOW_HTTP_REQUEST_BACKOFF_JITTER": "0.5",
               "MLFLOW_HTTP_RESPECT_RETRY_AFTER_HEADER": "false"}
for _name, _value in HTTP_LIMITS.items():
    os.environ.setdefault(_name, _value)
PREFLIGHT_DEADLINE_S = 20  # opening a store that is not a local SQLite file, and one real API call, in all
DATABASES = ("postgresql", "mysql", "mssql")  # SQLAlchemy URIs MLflow stores runs in (dialect[+driver]://)
REMOTE = ("http", "https", "databricks", *DATABASES)
# Errors a store that works answers with (the suite handles them or they name a bad request); any other error of a
# remote store means the store itself failed.
ANSWERS = {"RESOURCE_ALREADY_EXISTS", "RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE", "INVALID_STATE"}
# A run's end results (not per-epoch series): what a reuse record carries over.
FINAL_METRICS = ("final_", "best_epoch", "storage_", "macs_", "bitops_", "fp_macs_")
# Per-epoch series are logged under sections ("accuracy/val_top1_b2", "loss/train_loss_b2"): MLflow's metrics tab
# shows named sections first, each sorted by key, and its unnamed one last, so a run's page opens on its curves
# rather than on its single-valued results (final_*, costs), which keep their plain names.
SERIES_SECTIONS = (("train_loss", "loss"), ("", "accuracy"))


def series_key(name: str) -> str:
    """The MLflow key of per-epoch series ``name`` (a column of the trainer's history)."""
    return next(f"{section}/{name}" for prefix, section in SERIES_SECTIONS if name.startswith(prefix))


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


def scheme(uri: str) -> str:
    """The store kind of a tracking URI: ``sqlite``, ``http``, ``postgresql`` (any driver), ``file`` (also a path)."""
    if uri == "databricks":  # MLflow's name for a Databricks workspace's store
        return uri
    return urlparse(uri).scheme.split("+", 1)[0].lower() or "file"


def check_store(uri: str) -> None:
    """Refuse, naming ``uri`` and before anything opens, a store the suite cannot use: an unknown scheme, a file
    store (MLflow no longer takes new runs there), a SQLite file that is not an intact MLflow store. A remote store
    is proven by ``connect``."""
    kind = scheme(uri)
    if kind == "file":
        raise StoreError(f"the tracking store {uri} is a file store, which MLflow keeps in maintenance mode: use "
                         "sqlite:///PATH/mlflow.db (the default, under --results) or a tracking server http(s)://")
    if kind not in ("sqlite", *REMOTE):
        raise StoreError(f"the tracking store {uri} has an unknown scheme {kind!r}: use sqlite:///PATH/mlflow.db, "
                         f"http(s)://HOST:PORT or a database ({', '.join(f'{d}://' for d in DATABASES)})")
    if kind != "sqlite":
        return
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


# What a remote store's failure means, from MLflow's and requests' messages (they name every detail in one long
# line, an HTML page included): the first pattern found gives the reason reported.
REASONS = (
    (r"too many (\d{3}) error responses", "it answered HTTP {0} to every try"),
    (r"failed with error code (\d{3})", "it answered HTTP {0}, not an MLflow API answer"),
    (r"not in a valid JSON format", "its answer is not JSON, not an MLflow API answer"),
    (r"[Rr]ead timed out|timeout", "no answer within the request timeout (MLFLOW_HTTP_REQUEST_TIMEOUT)"),
    (r"Connection refused", "connection refused"),
    (r"Failed to resolve|Name or service not known|nodename nor servname", "its host name is unknown"),
    (r"No module named '([\w.]+)'", "the driver {0} is not installed"),
)


# MLflow's SQL store logs each database error with its traceback before raising it; the suite reports what it raises
# in one line (GuardedClient), or lets it through with its own traceback.
logging.getLogger("mlflow.store.db.utils").setLevel(logging.CRITICAL)


def failure_reason(err: BaseException) -> str:
    """One short line saying why a call to a remote store failed."""
    text = " ".join(str(err).split())
    for pattern, reason in REASONS:
        found = re.search(pattern, text)
        if found:
            return reason.format(*found.groups())
    return f"{type(err).__name__}: {text[:200]}"


# A write that lost a race with an identical one: MLflow sets an experiment tag by a read, then an insert, so two
# processes setting the same new tag at once (jobs of one experiment starting together) make the second insert
# break the key's uniqueness. The row exists then, and writing again updates it.
LOST_RACE = re.compile(r"UNIQUE constraint failed|duplicate key value violates unique constraint|IntegrityError")
REPEATABLE_WRITES = ("set_experiment_tag",)


def lost_race(err: BaseException) -> bool:
    return getattr(err, "error_code", None) == "BAD_REQUEST" and bool(LOST_RACE.search(str(err)))


class GuardedClient:
    """An MlflowClient whose store failures are StoreErrors, one line naming the store and the call: a remote store
    that fails, or a SQLite store whose disk is full (naming the free space).

    After one failure every later call fails at once with the same message: the store is down, and closing the runs
    would each wait out the request limits again. The runs stay RUNNING and their invocation's lock file stays; the
    next invocation closes them (``Tracker.close_orphans``) and resumes from the checkpoints."""

    def __init__(self, client, uri: str):
        self.client, self.uri, self.failed = client, uri, None
        self.local = Path(uri.removeprefix("sqlite:///")) if scheme(uri) == "sqlite" else None

    def __getattr__(self, name: str):
        attr = getattr(self.client, name)
        if not callable(attr):
            return attr

        def call(*args, **kwargs):
            if self.failed:
                raise StoreError(self.failed)
            try:
                return self._made_once(name, attr, *args, **kwargs)
            except Exception as err:
                self.failed = self.failure(name, err)
                if self.failed is None:
                    raise
                raise StoreError(self.failed) from None
        return call

    def _made_once(self, name: str, attr, *args, **kwargs):
        """The call; a repeatable write that lost a race to an identical one is made again (it updates the row the
        other process inserted)."""
        try:
            return attr(*args, **kwargs)
        except Exception as err:
            if name not in REPEATABLE_WRITES or not lost_race(err):
                raise
        return getattr(self.client, name)(*args, **kwargs)

    def failure(self, call: str, err: Exception) -> str | None:
        """What failed, in one line, if ``err`` means the store itself failed; None for an answer to the request."""
        from mlflow.exceptions import MlflowException, RestException
        from requests import RequestException

        if self.local is not None:
            full = disk_full(err, self.local)
            return f"the tracking store {self.uri} failed ({call}): {full.strerror}" if full else None
        if isinstance(err, RestException) and err.error_code in ANSWERS:
            return None
        if not isinstance(err, (MlflowException, RequestException)):
            return None
        return (f"the tracking store {self.uri} failed ({call}): {failure_reason(err)}; the runs are checkpointed: run "
                "the same command again once it answers, to resume")


def connect(uri: str) -> GuardedClient:
    """A client of the remote store ``uri``, proven by one real API call (listing an experiment), all within
    PREFLIGHT_DEADLINE_S: a store that hangs, answers errors or is not MLflow's is refused in one line."""
    from mlflow.tracking import MlflowClient

    outcome: dict = {}

    def probe() -> None:
        try:
            client = MlflowClient(tracking_uri=uri)
            client.search_experiments(max_results=1)
            outcome["client"] = client
        except Exception as err:  # the driver missing, the host unknown, a refusal, an answer that is not MLflow's
            outcome["error"] = err

    worker = threading.Thread(target=probe, daemon=True)  # left behind if it hangs: the process exits anyway
    worker.start()
    worker.join(PREFLIGHT_DEADLINE_S)
    if "client" in outcome:
        return GuardedClient(outcome["client"], uri)
    reason = failure_reason(outcome["error"]) if "error" in outcome else f"no answer within {PREFLIGHT_DEADLINE_S} s"
    raise StoreError(f"the tracking store {uri} cannot be used: {reason}; start it, or check MLFLOW_TRACKING_URI")


def lock_is_free(path: Path) -> bool:
    """Whether no process holds the file lock ``path`` (a missing one is free: its holder is gone)."""
    if not path.exists():
        return True
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
        self.closed: set[str] = set()  # the runs this process closed (finish)
        check_store(self.uri)
        if scheme(self.uri) != "sqlite":
            self.client = connect(self.uri)  # proven before anything is written
        self.results_dir.mkdir(parents=True, exist_ok=True)
        self.locks = self.results_dir / "locks"
        if scheme(self.uri) == "sqlite":
            self.sqlite_path.parent.mkdir(parents=True, exist_ok=True)  # a bundle's folder (run --offline)
            # A new SQLite store migrates its schema on first use: one process at a time, or they race; and a stop
            # signal waits until it is done (an interrupted migration leaves a store no process can open).
            with FileLock(self.sqlite_path.with_name(".mlflow.db.lock")), interrupts.deferred():
                self.client = GuardedClient(MlflowClient(tracking_uri=self.uri), self.uri)
                self.client.search_experiments(max_results=1)

    def close_orphans(self) -> list[str]:
        """Close as KILLED every RUNNING run whose owning invocation is gone (its lock file is free); their ids.

        A process killed without a chance to clean up (SIGKILL, power loss), or one whose store failed while it
        closed its runs, leaves them RUNNING."""
        experiments = self.experiment_ids()
        if not experiments:
            return []
        closed, gone = [], {}
        for run in self.client.search_runs(experiments, "attributes.status = 'RUNNING'", max_results=5000):
            owner = run.data.tags.get(TAG_OWNER)
            if owner and owner not in gone:
                gone[owner] = self.owner_lock(owner, run.data.tags if owner == run.info.run_id else None)
            if owner and gone[owner]:
                self.finish(run.info.run_id, "KILLED")
                closed.append(run.info.run_id)
        for lock in filter(None, gone.values()):
            lock.unlink(missing_ok=True)
        return closed

    def owner_lock(self, owner: str, tags: dict[str, str] | None = None) -> Path | None:
        """The lock file of invocation ``owner`` if that invocation is gone, else None. Its lock is where its own
        tags say (another results folder on this machine has its own); an invocation of another machine is left to
        that machine, whose lock files this one cannot see."""
        if tags is None:
            from mlflow.exceptions import MlflowException

            try:
                tags = self.client.get_run(owner).data.tags
            except MlflowException:  # deleted: nothing says where it ran
                tags = {}
        if tags.get("suite.host", platform.node()) != platform.node():
            return None
        lock = Path(tags.get("suite.lock") or self.invocation_lock(owner))
        return lock if lock_is_free(lock) else None

    def invocation_lock(self, parent_id: str) -> Path:
        return self.locks / f"invocation-{parent_id}.lock"

    def experiment_id(self, name: str) -> str:
        """The experiment ``name``, created if missing. Several processes may create it at once (jobs starting
        together against one server): the one that loses the race reads the winner's."""
        from mlflow.exceptions import MlflowException

        exp = self.client.get_experiment_by_name(name)
        if exp is not None:
            if not set(EXPERIMENT_KIND) <= set(exp.tags):  # created by an earlier version of the suite
                self.set_experiment_tags(exp.experiment_id, EXPERIMENT_KIND)
            return exp.experiment_id
        location = None
        if self.uri.startswith("sqlite:"):  # keep artifacts beside the store, not in the working directory
            location = inside(self.sqlite_path.parent, "mlflow-artifacts", name).resolve().as_uri()
        try:
            return self.client.create_experiment(name, artifact_location=location, tags=EXPERIMENT_KIND)
        except MlflowException as err:
            if err.error_code != "RESOURCE_ALREADY_EXISTS":
                raise
        return self.client.get_experiment_by_name(name).experiment_id

    def experiment_ids(self) -> list[str]:
        return [e.experiment_id for e in self.client.search_experiments()]

    @property
    def sqlite_path(self) -> Path:
        return Path(self.uri.removeprefix("sqlite:///")).resolve()

    @contextmanager
    def invocation(self, experiment_id: str, name: str, tags: dict[str, str], params: dict[str, Any]) -> Iterator[str]:
        """The parent run of one invocation, open for the block, closed as ``running`` closes it. The process holds
        the invocation's lock file meanwhile, so a later ``close_orphans`` can tell it is alive; the file is removed
        once the run is closed, and left for that ``close_orphans`` when closing failed."""
        run_id = self.client.create_run(experiment_id, run_name=name, tags={**tags, TAG_KIND: "invocation"}).info.run_id
        self.locks.mkdir(parents=True, exist_ok=True)
        path = self.invocation_lock(run_id)
        lock = FileLock(path)
        lock.acquire()
        try:
            self.set_tags(run_id, {TAG_OWNER: run_id, "suite.host": platform.node(), "suite.pid": str(os.getpid()),
                                   "suite.lock": str(path.resolve())})
            with self.running(run_id):
                self.log_params(run_id, params)
                yield run_id
        finally:
            lock.release()
            if run_id in self.closed:
                path.unlink(missing_ok=True)

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

    def log_series(self, run_id: str, metrics: dict[str, float], step: int) -> None:
        """One epoch's per-epoch series, each under its section (``series_key``)."""
        self.log_metrics(run_id, {series_key(k): v for k, v in metrics.items()}, step)

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
            try:
                self.finish(run_id, "KILLED" if isinstance(err, KeyboardInterrupt) else "FAILED")
            except Exception:  # the store failed too (down, or its disk full): the error that stopped the run is
                pass  # the one to report; the run stays RUNNING and the next invocation closes it (close_orphans)
            raise
        self.finish(run_id)

    def set_experiment_tags(self, experiment_id: str, tags: dict[str, str]) -> None:
        for k, v in tags.items():
            self.client.set_experiment_tag(experiment_id, k, str(v))

    def set_tags(self, run_id: str, tags: dict[str, str]) -> None:
        for k, v in tags.items():
            self.client.set_tag(run_id, k, str(v))

    def finish(self, run_id: str, status: str = "FINISHED") -> None:
        self.client.set_terminated(run_id, status)
        self.closed.add(run_id)

    def logged_steps(self, run_id: str, key: str) -> set[int]:
        """The steps at which metric ``key`` of ``run_id`` was logged."""
        return {m.step for m in self.client.get_metric_history(run_id, key)}
