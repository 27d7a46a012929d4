"""Runs tracked where the tracking service cannot be reached: each job writes a self-contained bundle (an MLflow
SQLite store and its artifacts, ``run --offline DIR``), and ``import-runs DIR`` merges bundles into the store.

A bundle is an ordinary MLflow store, so ``mlflow ui`` opens one as it is. When its job ends the bundle is sealed:
``bundle.json`` lists every file with its SHA-256 and the run keys its runs carry. ``import-runs`` proves every
bundle against its seal before it opens the store, and refuses the whole import, naming the bundle, when a file was
edited, truncated, removed or added, when its ``mlflow.db`` is no MLflow store, or when an accuracy lies outside
[0, 100]. A bundle not yet sealed (its job still running, or killed: rerun it) waits for a later import.

Runs are imported by identity, never by folder name: a run whose run key (configuration hash and seed) has
finished in the same experiment of the store, trained there or imported earlier, is reported and skipped; an
invocation (parent) run is the same run wherever its bundle lies. Each copy is made invisible (no run key or kind,
an ``importing`` mark) and completed by one last write; an import killed half-way leaves copies that the next
import removes and makes again.
"""
from __future__ import annotations

import json
import math
import os
import platform
import shutil
import sqlite3
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator
from urllib.parse import urlparse
from urllib.request import url2pathname

from filelock import FileLock, Timeout

from suite.checkpoints import sha256_file
from suite.tracking import PARENT_TAG, TAG_KEY, TAG_KIND, Tracker

SEAL, FORMAT = "bundle.json", "suite-bundle/1"
IMPORTED_FROM = "suite.imported_from"  # the source run's id: set last, it marks the copy complete
IMPORTING = "suite.importing"  # the source run's id while its copy is being made
REWRITTEN_TAGS = (PARENT_TAG, "suite.reused_from", "suite.owner", "suite.resumed_by")  # run ids: mapped on import
HELD_TAGS = (TAG_KEY, TAG_KIND)  # what makes a run visible to the suite: written with the completion mark
MLFLOW_TABLES = {"experiments", "runs", "metrics", "params", "tags", "alembic_version"}


class BundleError(ValueError):
    """A bundle that cannot be imported as it is; the message names it and what is wrong."""


@dataclass
class Bundle:
    path: Path
    root: str  # the folder it was sealed in: its artifact locations point there
    files: dict[str, str]  # relative path -> SHA-256
    run_keys: list[str]


def new_bundle(folder: str | os.PathLike) -> str:
    """The tracking URI of a new bundle under ``folder``, unique to this process (created on first use)."""
    path = Path(folder).resolve() / f"{platform.node()}-{os.getpid()}-{int(time.time())}"
    return f"sqlite:///{path / 'mlflow.db'}"


@contextmanager
def offline_bundle(folder: str | os.PathLike | None) -> Iterator[str | None]:
    """The tracking URI of this process's bundle under ``folder`` (None without one), sealed when the block ends,
    however it ends: its runs are closed by then, and nothing writes to it again."""
    if folder is None:
        yield None
        return
    uri = new_bundle(folder)
    try:
        yield uri
    finally:
        seal(Path(uri.removeprefix("sqlite:///")).parent)


def _files(bundle: Path) -> dict[str, Path]:
    """Every file of a bundle by relative path, but its seal and lock files (run-time only, never read)."""
    found = {}
    for path in sorted(bundle.rglob("*")):
        rel = path.relative_to(bundle).as_posix()
        if path.is_symlink() or not (path.is_file() or path.is_dir()):
            raise BundleError(f"{bundle}: {rel} is not a plain file (a link or a device)")
        if path.is_file() and rel != SEAL and not path.name.endswith(".lock"):
            found[rel] = path
    return found


def _query(db: Path, sql: str) -> list[tuple]:
    """Rows of ``sql`` on ``db``, opened read-only (a foreign file is never written)."""
    with sqlite3.connect(f"{db.resolve().as_uri()}?mode=ro", uri=True, timeout=5) as conn:
        return conn.execute(sql).fetchall()


def _not_mlflow(db: Path) -> str | None:
    """Why ``db`` is not an intact MLflow store, or None."""
    try:
        status = _query(db, "PRAGMA quick_check")[0][0]
        tables = {row[0] for row in _query(db, "SELECT name FROM sqlite_master WHERE type = 'table'")}
    except sqlite3.Error as err:
        return str(err)
    if status != "ok":
        return status
    return f"it lacks MLflow's tables {sorted(MLFLOW_TABLES - tables)}" if MLFLOW_TABLES - tables else None


def _run_keys(db: Path) -> list[str]:
    return sorted(row[0] for row in _query(db, f"SELECT DISTINCT value FROM tags WHERE key = '{TAG_KEY}'"))


def seal(bundle: Path) -> None:
    """Write ``bundle.json``: every file of the bundle with its SHA-256, and its run keys (once a store exists)."""
    db = bundle / "mlflow.db"
    if not db.exists():
        return
    record = {"format": FORMAT, "root": str(bundle.resolve()), "run_keys": _run_keys(db),
              "files": {rel: sha256_file(path) for rel, path in _files(bundle).items()}}
    tmp = bundle / f".{SEAL}.{os.getpid()}.tmp"
    tmp.write_text(json.dumps(record, indent=1))
    os.replace(tmp, bundle / SEAL)


def _verified(path: Path) -> Bundle | None:
    """The bundle at ``path`` proven against its seal; None when it is an MLflow store not sealed yet."""
    db = path / "mlflow.db"
    if not (path / SEAL).exists():
        reason = _not_mlflow(db) if db.exists() else f"it holds {SEAL} but no mlflow.db"
        if reason:
            raise BundleError(f"{path}: not an MLflow bundle ({reason})")
        return None
    try:
        record = json.loads((path / SEAL).read_text())
        bundle = Bundle(path, str(record["root"]), dict(record["files"]), sorted(record["run_keys"]))
        if record["format"] != FORMAT or not all(isinstance(v, str) for v in bundle.files.values()):
            raise ValueError(f"format {record['format']!r}")
    except (ValueError, KeyError, TypeError, UnicodeDecodeError) as err:
        raise BundleError(f"{path}: {SEAL} is not a bundle seal ({type(err).__name__}: {err})") from None
    present = _files(path)
    if missing := sorted(bundle.files.keys() - present.keys()):
        raise BundleError(f"{path}: {missing[0]} is sealed in {SEAL} but missing ({len(missing)} file(s) missing: "
                          "a truncated bundle)")
    if extra := sorted(present.keys() - bundle.files.keys()):
        raise BundleError(f"{path}: {extra[0]} was not there when the bundle was sealed ({len(extra)} file(s) added)")
    for rel, digest in bundle.files.items():
        if sha256_file(present[rel]) != digest:
            raise BundleError(f"{path}: {rel} does not match its SHA-256 in {SEAL} (edited or truncated)")
    if "mlflow.db" not in bundle.files or (reason := _not_mlflow(db)):
        raise BundleError(f"{path}: not an MLflow bundle ({reason or 'no mlflow.db'})")
    if _run_keys(db) != bundle.run_keys:
        raise BundleError(f"{path}: its runs carry other run keys than {SEAL} lists")
    for key, value, is_nan in _query(db, "SELECT key, value, is_nan FROM metrics WHERE key LIKE '%top1%' "
                                         "OR key LIKE '%top5%'"):
        if is_nan or not math.isfinite(value) or not 0 <= value <= 100:
            raise BundleError(f"{path}: metric {key} = {'nan' if is_nan else value} is not a percentage in [0, 100]")
    return bundle


def verify_bundles(folder: str | os.PathLike, echo: Callable[[str], None] = print) -> list[Bundle]:
    """Every sealed bundle under ``folder``, each proven against its seal; BundleError naming the first that is
    not, or when ``folder`` holds no bundle. Unsealed ones are named and left for a later import."""
    folder = Path(folder)
    if not folder.is_dir():
        raise BundleError(f"{folder}: {'is not a folder' if folder.exists() else 'no such folder'} (give the folder "
                          "passed to run --offline)")
    found = sorted({p.parent for name in ("mlflow.db", SEAL) for p in folder.rglob(name)})
    if not found:
        raise BundleError(f"{folder}: holds no run bundles (folders with an mlflow.db, as run --offline writes)")
    bundles = []
    for path in found:
        bundle = _verified(path)
        if bundle is None:
            echo(f"  {path}: not sealed, not imported (its job is still running, or was killed: run it again)")
        else:
            bundles.append(bundle)
    return bundles


# -------------------------------------------------------------------------------------------------- import


def import_bundles(bundles: list[Bundle], tracker: Tracker, echo: Callable[[str], None] = print) -> tuple[int, int]:
    """Copy every closed run of ``bundles`` (from ``verify_bundles``) into ``tracker``'s store, one import at a time;
    (imported, already there)."""
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    tracker.locks.mkdir(parents=True, exist_ok=True)
    lock = FileLock(tracker.locks / "import-runs.lock")
    try:
        lock.acquire(timeout=0)
    except Timeout:
        raise BundleError(f"{tracker.uri}: another import-runs is writing to this store; run this one after it") from None
    try:
        _remove_incomplete(tracker, echo)
        counts = [_import(bundle, tracker, echo) for bundle in bundles]
    finally:
        lock.release()
    return sum(c[0] for c in counts), sum(c[1] for c in counts)


def _remove_incomplete(tracker: Tracker, echo: Callable[[str], None]) -> None:
    """Delete the copies an import killed half-way left (marked importing, never completed)."""
    for run in tracker.client.search_runs(tracker.experiment_ids(), f"tags.`{IMPORTING}` LIKE '%'", max_results=50_000):
        if IMPORTED_FROM in run.data.tags:  # completed; only its mark was left
            tracker.client.delete_tag(run.info.run_id, IMPORTING)
        else:
            tracker.client.delete_run(run.info.run_id)
            echo(f"  removed the incomplete copy {run.info.run_id} of run {run.data.tags[IMPORTING]} (an import "
                 "stopped half-way); importing it again")


def _import(bundle: Bundle, tracker: Tracker, echo: Callable[[str], None]) -> tuple[int, int]:
    from mlflow.tracking import MlflowClient

    with tempfile.TemporaryDirectory() as tmp:
        db = Path(tmp) / "mlflow.db"  # a copy: opening a store may write to it, and the bundle stays as sealed
        shutil.copyfile(bundle.path / "mlflow.db", db)
        if sha256_file(db) != bundle.files["mlflow.db"]:
            raise BundleError(f"{bundle.path}: mlflow.db changed while it was imported")
        source = MlflowClient(f"sqlite:///{db}")
        experiments = {e.experiment_id: e.name for e in source.search_experiments()}
        runs = source.search_runs(list(experiments), max_results=50_000, order_by=["attributes.start_time ASC"])
        ids: dict[str, str] = {}  # source run id -> its copy (or the run standing for it) in the store
        new = [run for run in runs if _wanted(run, experiments[run.info.experiment_id], bundle, tracker, ids, echo)]
        # An invocation comes with its new runs: one whose runs are all in the store already adds nothing.
        parents, wanted = ({r.data.tags.get(PARENT_TAG) for r in chosen} for chosen in (runs, new))
        for run in [r for r in new if r.info.run_id in parents - wanted]:
            echo(f"  {bundle.path.name}/{run.info.run_id}: its runs are all in the store already, skipped")
            new.remove(run)
        new.sort(key=lambda r: PARENT_TAG in r.data.tags)  # parents first: their children point at them
        for run in new:
            ids[run.info.run_id] = _copy(source, run, experiments[run.info.experiment_id], bundle, tracker, ids)
    echo(f"{bundle.path}: {len(runs)} run(s), {len(new)} imported")
    return len(new), len(runs) - len(new) - sum(r.info.status == "RUNNING" for r in runs)


def _wanted(run, experiment: str, bundle: Bundle, tracker: Tracker, ids: dict[str, str], echo) -> bool:
    """Whether ``run`` is to be copied; the ones the store holds already are mapped in ``ids``."""
    mark = f"{bundle.path.name}/{run.info.run_id}"
    if run.info.status == "RUNNING":
        echo(f"  {mark}: still running, not imported")
        return False
    found = tracker.client.search_runs(tracker.experiment_ids(), f"tags.`{IMPORTED_FROM}` = '{run.info.run_id}'",
                                       max_results=1)
    key, there = run.data.tags.get(TAG_KEY), tracker.client.get_experiment_by_name(experiment)
    if not found and key and there is not None:
        found = tracker.client.search_runs([there.experiment_id], f"tags.`{TAG_KEY}` = '{key}' and "
                                           "attributes.status = 'FINISHED'", max_results=1)
        if found:
            echo(f"  {mark}: run key {key} finished in the store already (run {found[0].info.run_id}), skipped")
    if found:
        ids[run.info.run_id] = found[0].info.run_id
    return not found


def _copy(source, run, experiment: str, bundle: Bundle, tracker: Tracker, ids: dict[str, str]) -> str:
    """A complete copy of ``run`` (tags, params, metric histories, artifacts, status and times), or none: the tags
    that make it visible and its completion mark are written last, in one write."""
    from mlflow.entities import Metric, RunTag

    tags = {k: ids.get(v, v) if k in REWRITTEN_TAGS else v for k, v in run.data.tags.items()}
    held = {k: tags.pop(k) for k in HELD_TAGS if k in tags} | {IMPORTED_FROM: run.info.run_id}
    copy = tracker.client.create_run(tracker.experiment_id(experiment), start_time=run.info.start_time,
                                     run_name=run.info.run_name, tags=tags | {IMPORTING: run.info.run_id}).info.run_id
    tracker.log_params(copy, run.data.params)
    history = [Metric(m.key, m.value, m.timestamp, m.step) for key in run.data.metrics
               for m in source.get_metric_history(run.info.run_id, key)]
    for i in range(0, len(history), 1000):  # MLflow's batch limit for metrics
        tracker.client.log_batch(copy, metrics=history[i:i + 1000])
    artifacts = _artifact_folder(run.info.artifact_uri, bundle)
    if artifacts.is_dir():
        tracker.client.log_artifacts(copy, str(artifacts))
    tracker.client.set_terminated(copy, run.info.status, end_time=run.info.end_time)
    tracker.client.log_batch(copy, tags=[RunTag(k, v) for k, v in held.items()])
    tracker.client.delete_tag(copy, IMPORTING)
    return copy


def _artifact_folder(uri: str, bundle: Bundle) -> Path:
    """Where a run's artifacts lie in the bundle now (it may have been moved since it was sealed)."""
    try:
        return bundle.path / Path(url2pathname(urlparse(uri).path)).relative_to(bundle.root)
    except ValueError:
        raise BundleError(f"{bundle.path}: run artifacts at {uri}, outside the bundle") from None
