"""Tracked runs read back as tables: what the report (or a notebook) consumes. Reading only; the runner writes.

``collect(results_dir)`` reads everything the report needs in one go: the finished runs' final numbers
(``load_runs``), every (arm, seed) run of any status (``load_children``), the newest invocation of each
(manifest, profile) with its plan, command, environment and resolved manifest (``load_invocations``), the cost
measurements (``load_costs``) and the per-epoch histories (``load_histories``; a reuse record's history is its
original run's: the record itself carries final numbers only).
"""
from __future__ import annotations

import json
import os
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from suite.analyses import run_columns
from suite.records import RUN_COLUMNS
from suite.tracking import TAG_KIND, series_key, tracking_uri

# Columns ``load_runs`` adds to records.RUN_COLUMNS and the analyses' columns: the run an (arm, seed) row's numbers
# were trained by.
EXTRA_RUN_COLUMNS = ["pipeline_check", "reused_from"]
PROGRESS_BAR = "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"
CHILD_KINDS = ("arm-run", "cost-run")
ENVIRONMENT_TAGS = {"torch": "torch.version", "cuda": "suite.cuda", "gpu": "suite.gpu", "gpu_count": "suite.gpu_count",
                    "cpu": "suite.cpu", "cpu_threads": "suite.cpu_threads", "python": "python.version",
                    "device": "suite.device", "git_commit": "git.commit", "git_dirty": "git.dirty"}


def _client(results_dir: Path):
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=tracking_uri(results_dir))


def _search(results_dir: Path, kind: str, finished_only: bool = False) -> list:
    """Runs of one kind (``arm-run``, ``cost-run``, ``invocation``) across all experiments, newest first."""
    client = _client(results_dir)
    experiments = client.search_experiments()
    if not experiments:
        return []
    query = f"tags.`{TAG_KIND}` = '{kind}'" + (" and attributes.status = 'FINISHED'" if finished_only else "")
    return client.search_runs([e.experiment_id for e in experiments], filter_string=query,
                              order_by=["attributes.start_time DESC"], max_results=50_000)


def _bits(tags: dict) -> list[int]:
    return [int(x) for x in tags["suite.bits"].split(",")]


def _section_fields(tags: dict) -> dict:
    """What every run of one (manifest, profile) carries: which experiment, at which profile, checking what."""
    return {"manifest": tags["suite.manifest"], "profile": tags["suite.profile"], "title": tags["suite.title"],
            "paper_ref": tags["suite.paper_ref"], "paper_verified": tags["suite.paper_verified"] == "true",
            "pipeline_check": tags.get("suite.pipeline_check") == "true"}


def _arm_fields(run) -> dict:
    """Which (arm, seed) a child run is; a cost run has no seed (it measures the untrained model): seed 0."""
    t = run.data.tags
    return {"arm": t["suite.arm"], "seed": int(t.get("suite.seed", 0)), "method": t["suite.method"],
            "model": t["suite.model"], "run_id": run.info.run_id, "reused_from": t.get("suite.reused_from")}


def load_runs(results_dir: Path) -> pd.DataFrame:
    """Finished (arm, seed) runs as one row per evaluated bit-width (the report's input).

    Per (manifest, profile, arm, seed) only the newest run is kept, so changing a manifest and re-running
    does not mix old and new numbers.
    """
    rows, analysis_columns = [], run_columns()
    for run in _search(results_dir, "arm-run", finished_only=True):
        t, m = run.data.tags, run.data.metrics
        for b in _bits(t):
            rows.append({
                **_section_fields(t), **_arm_fields(run), "manifest_version": int(t["suite.manifest_version"]),
                "bits": b, "top1": m.get(f"final_top1_b{b}"), "top5": m.get(f"final_top5_b{b}"),
                "storage_mib": m.get("storage_mib"), "bitops": m.get(f"bitops_b{b}"),
                **{column: m.get(f"{column}_b{b}") for column in analysis_columns},
                "dataset": t["suite.dataset"], "manifest_hash": t["suite.manifest_hash"], "setup": t.get("suite.setup"),
                "tolerance": float(t["suite.tolerance"]) if t.get("suite.tolerance") else float("nan"),
                "_start": run.info.start_time,
            })
    df = pd.DataFrame(rows, columns=RUN_COLUMNS + analysis_columns + EXTRA_RUN_COLUMNS + ["_start"])
    if df.empty:
        return df.drop(columns="_start")
    newest = df.groupby(["manifest", "profile", "arm", "seed"])["_start"].transform("max")
    df = df[df["_start"] == newest].drop(columns="_start")
    return df.sort_values(["manifest", "profile", "arm", "seed", "bits"]).reset_index(drop=True)


def load_children(results_dir: Path) -> pd.DataFrame:
    """Every (arm, seed) and cost run, whatever its status (FINISHED, FAILED, KILLED, RUNNING), newest first:
    what the report counts as finished, failed or unfinished."""
    rows = []
    for kind in CHILD_KINDS:
        for run in _search(results_dir, kind):
            t, p = run.data.tags, run.data.params
            rows.append({**_section_fields(t), **_arm_fields(run), "kind": kind, "status": run.info.status,
                         "bits": t["suite.bits"], "start": run.info.start_time,
                         "epochs": p.get("recipe.epochs"), "steps_per_epoch": p.get("recipe.steps_per_epoch")})
    columns = ["manifest", "profile", "arm", "seed", "method", "model", "kind", "status", "run_id", "reused_from",
               "bits", "start", "epochs", "steps_per_epoch", "title", "paper_ref", "paper_verified", "pipeline_check"]
    return pd.DataFrame(rows, columns=columns).sort_values("start", ascending=False, ignore_index=True)


@contextmanager
def _quiet_downloads():
    """No progress bar per downloaded file (one per invocation would flood the terminal)."""
    old = os.environ.get(PROGRESS_BAR)
    os.environ[PROGRESS_BAR] = "false"
    try:
        yield
    finally:
        if old is None:
            os.environ.pop(PROGRESS_BAR)
        else:
            os.environ[PROGRESS_BAR] = old


def _resolved_yaml(client, run) -> tuple[str, str]:
    """The invocation's resolved manifest and where it was read: its YAML artifact, else (an older or partial
    record) its flattened manifest params, which lack the arms."""
    t = run.data.tags
    name = f"{t['suite.manifest']}.{t['suite.profile']}.resolved.yaml"
    try:
        with tempfile.TemporaryDirectory() as tmp, _quiet_downloads():
            return Path(client.download_artifacts(run.info.run_id, name, tmp)).read_text(), f"artifact {name}"
    except Exception:  # noqa: BLE001  (absent artifact, unreachable artifact store: fall back to the params)
        params = "\n".join(f"{k}: {v}" for k, v in sorted(run.data.params.items()))
        return params, f"the run's params ({name} not found; arms not included)"


def load_invocations(results_dir: Path) -> pd.DataFrame:
    """The newest invocation (parent run) of each (manifest, profile): its plan (``jobs``, [(arm, seed)]), claim,
    tolerance, reproducing command, environment, status and resolved manifest."""
    client, rows, seen = _client(results_dir), [], set()
    for run in _search(results_dir, "invocation"):  # newest first
        t = run.data.tags
        key = (t["suite.manifest"], t["suite.profile"])
        if key in seen:
            continue
        seen.add(key)
        rows.append({
            **_section_fields(t), "manifest_version": int(t["suite.manifest_version"]),
            "task": run.data.params.get("task", "train"), "claim": t.get("suite.claim", ""),
            "tolerance": float(t["suite.tolerance"]) if t.get("suite.tolerance") else float("nan"),
            "command": t.get("suite.command", ""), "scale": t.get("suite.scale", ""),
            "jobs": [tuple(j) for j in json.loads(t.get("suite.jobs", "[]"))],
            **{k: t.get(tag, "unknown") for k, tag in ENVIRONMENT_TAGS.items()},
            "status": run.info.status, "start": run.info.start_time, "run_id": run.info.run_id,
            **dict(zip(("resolved_yaml", "resolved_from"), _resolved_yaml(client, run))),
        })
    return pd.DataFrame(rows)


def _series(client, run_id: str, name: str) -> dict[int, float]:
    """Per-epoch series ``name`` of a run, step -> value: under its section (``series_key``), or under its plain
    name in a store written before series had sections."""
    for key in (series_key(name), name):
        history = client.get_metric_history(run_id, key)
        if history:
            return {m.step: m.value for m in history}
    return {}


def load_histories(results_dir: Path, children: pd.DataFrame) -> pd.DataFrame:
    """Per-epoch validation top-1 and training loss, one row per (run, bit-width, epoch), for the runs in
    ``children`` (columns run_id, reused_from, bits). A reuse record's series are read from its original run."""
    client, rows = _client(results_dir), []
    for child in children.drop_duplicates("run_id").itertuples():
        source = child.reused_from if isinstance(child.reused_from, str) and child.reused_from else child.run_id
        for b in (child.bits if isinstance(child.bits, list) else [int(x) for x in child.bits.split(",")]):
            series = {name: _series(client, source, f"{name}_b{b}") for name in ("val_top1", "train_loss")}
            for epoch in sorted(set(series["val_top1"]) | set(series["train_loss"])):
                rows.append({"run_id": child.run_id, "bits": b, "epoch": epoch,
                             "val_top1": series["val_top1"].get(epoch), "train_loss": series["train_loss"].get(epoch)})
    return pd.DataFrame(rows, columns=["run_id", "bits", "epoch", "val_top1", "train_loss"])


def load_costs(results_dir: Path) -> pd.DataFrame:
    """Finished ``task: costs`` runs, one row per (arm, bit-width), newest per (manifest, profile, arm)."""
    rows, seen = [], set()
    for run in _search(results_dir, "cost-run", finished_only=True):  # newest first
        t, m = run.data.tags, run.data.metrics
        key = (t["suite.manifest"], t["suite.profile"], t["suite.arm"])
        if key in seen:
            continue
        seen.add(key)
        for b in _bits(t):
            rows.append({**_section_fields(t), **_arm_fields(run), "bits": b, "storage_mib": m["storage_mib"],
                         "macs": m[f"macs_b{b}"], "bitops": m[f"bitops_b{b}"], "fp_macs": m[f"fp_macs_b{b}"]})
    return pd.DataFrame(rows)


@dataclass
class Collected:
    """Everything the report reads from one tracking store."""

    runs: pd.DataFrame
    costs: pd.DataFrame
    children: pd.DataFrame
    invocations: pd.DataFrame
    histories: pd.DataFrame = field(default_factory=pd.DataFrame)


def collect(results_dir: Path) -> Collected:
    """Read the store once: finished runs, costs, every child run, newest invocations, and the histories of the
    runs the report shows (the finished ones, and the newest unfinished run of a job that never finished)."""
    runs, children = load_runs(results_dir), load_children(results_dir)
    shown = children[children["run_id"].isin(runs["run_id"]) |
                     ((children["kind"] == "arm-run") & (children["status"] != "FINISHED"))]
    shown = shown.drop_duplicates(["manifest", "profile", "arm", "seed", "status"])  # newest first
    return Collected(runs=runs, costs=load_costs(results_dir), children=children,
                     invocations=load_invocations(results_dir), histories=load_histories(results_dir, shown))
