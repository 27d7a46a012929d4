"""Tracked runs read back as tables: what the report (or a notebook) consumes. Reading only; the runner writes."""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from suite.records import QERR_KINDS, RUN_COLUMNS
from suite.tracking import TAG_KIND, tracking_uri


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
