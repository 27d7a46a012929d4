"""What more than one task does: build the configured model, check the data, shape and summarize top-1 rows."""
from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import pandas as pd
import yaml

from suite import run_pages
from suite.data import build_data
from suite.invocation import Invocation, metric_key
from suite.manifest import LoadedManifest, Manifest, ResolvedArm
from suite.methods import Trainable, build_trainable


def configured_trainable(cfg: Manifest, classes: int) -> Trainable:
    """The configured method on the configured model."""
    return build_trainable(cfg.method.name, cfg.model.arch, classes, cfg.method.bits, cfg.method.options)


def check_data(loaded: LoadedManifest) -> None:
    """Build every distinct dataset of the arms once, so that a missing one fails before any run is opened."""
    for data_cfg in {yaml.safe_dump(asdict(a.config.data)): a.config.data for a in loaded.arms}.values():
        build_data(data_cfg, loaded.manifest.recipe.batch_size, seed=0)


def final_rows(arm: ResolvedArm, seed: int, metrics: dict) -> list[dict]:
    """One result row per bit-width of the run's final top-1 / top-5 (None where it has none)."""
    return [{"arm": arm.name, "seed": seed, "bits": b, "top1": metrics.get(f"final_top1_b{b}"),
             "top5": metrics.get(f"final_top5_b{b}")} for b in arm.config.method.bits]


def write_final_metrics(folder: Path, results: dict[int, tuple[float, float]]) -> None:
    """``final_metrics.csv``: top-1 / top-5 per bit-width, from {bits: (top1, top5)}."""
    pd.DataFrame([{"bits": b, "top1": t1, "top5": t5} for b, (t1, t5) in sorted(results.items())]).to_csv(
        folder / "final_metrics.csv", index=False)


def summarize_top1(inv: Invocation, rows: pd.DataFrame) -> None:
    """Per arm and bit-width, the final top-1 averaged over this invocation's seeds, on the parent run: metrics
    ``<arm>.top1_b<b>`` (and ``.top1_mean``), rounded to two decimals as the description shows them, a table
    ``summary.csv`` at full precision, and the description's table."""
    rows = rows.dropna(subset=["top1"]) if not rows.empty else rows
    if rows.empty:
        return
    table = rows.groupby(["arm", "bits"], sort=False)["top1"].agg(["count", "mean", "std"]).reset_index()
    table.columns = ["arm", "bits", "seeds", "top1_mean", "top1_sd"]
    metrics = {f"{metric_key(r.arm)}.top1_b{r.bits}": r.top1_mean for r in table.itertuples()}
    metrics |= {f"{metric_key(arm)}.top1_mean": v for arm, v in table.groupby("arm", sort=False)["top1_mean"].mean().items()}
    inv.tracker.log_metrics(inv.parent, {k: round(v, 2) for k, v in metrics.items()}, 0)
    with inv.tracker.artifact_dir(inv.parent) as tmp:
        table.to_csv(tmp / "summary.csv", index=False)
    top1 = {arm: dict(zip(g["bits"], g["top1_mean"])) for arm, g in table.groupby("arm", sort=False)}
    inv.tracker.set_tags(inv.parent, {run_pages.NOTE: run_pages.invocation_note(
        inv.loaded, inv.tags.get("suite.scale", ""), top1, int(table["seeds"].max()))})
