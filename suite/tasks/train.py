"""``task: train``: every (arm, seed) through the shared trainer, one tracked run each, then the manifest's
``analyses`` on its best checkpoint. Under torchrun every rank trains: rank 0 tracks, the others join it.

An identical run that finished in another manifest is reused, not trained again: recorded in this experiment
(suite.lifecycle), with the analyses this manifest asks for run on its checkpoint.
"""
from __future__ import annotations

import os
from pathlib import Path

import pandas as pd
import yaml

from suite import run_pages
from suite.analyses import analysis
from suite.checkpoints import CheckpointSeries
from suite.data import build_data
from suite.distributed import Distributed
from suite.invocation import Invocation
from suite.lifecycle import claimed_run
from suite.manifest import LoadedManifest, ResolvedArm, flatten
from suite.plots import training_curves_figure
from suite.records import final_metrics
from suite.tasks.common import check_data, configured_trainable, final_rows, summarize_top1, write_final_metrics
from suite.tasks.costs import cost_metrics
from suite.titles import setup_name
from suite.tracking import Tracker, series_key
from suite.trainer import Expected, fit, seed_everything


class Train:
    seeded, all_ranks, exact, records_reuse = True, True, False, True
    busy_note = "being trained by another process ({lock}), skipped here"
    found_note = "finished earlier (run {run}), not run again"

    def preflight(self, loaded: LoadedManifest, dist: Distributed) -> None:
        check_data(loaded)

    def run_arm(self, inv: Invocation, arm: ResolvedArm, seed: int, state: None) -> list[dict]:
        """One (arm, seed) under its run directory's lock. Under torchrun rank 0 decides whether it trains, and
        the other ranks join it."""
        run_dir = arm.run_dir(inv.results_dir, seed)
        if not inv.dist.main:
            if inv.dist.from_main(None):  # rank 0's answer, sent from its claimed_run
                _fit(inv, arm, seed, run_dir)
            return []
        with claimed_run(inv, self, arm, seed, arm.run_key(seed), run_dir / "run.lock") as claim:
            if claim.to_run:
                claim.record, claim.metrics = _train(inv, arm, seed, run_dir)
            if claim.record is not None:
                _run_analyses(inv, claim.record, claim.metrics, arm, seed, run_dir)
        return final_rows(arm, seed, claim.metrics)

    summarize = staticmethod(summarize_top1)


def _fit(inv: Invocation, arm: ResolvedArm, seed: int, run_dir: Path, log=None):
    """What every rank runs for one training run: its share of the data, the method, the trainer."""
    cfg = arm.config
    if cfg.recipe.compile:  # compiled graphs cached beside the runs: a resumed run does not compile from scratch
        os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(inv.results_dir.resolve() / "compile-cache"))
    seed_everything(seed)
    data = build_data(cfg.data, cfg.recipe.batch_size, seed, cfg.recipe.eval_batch_size, rank=inv.dist.rank,
                      world_size=inv.dist.world_size)
    trainable = configured_trainable(cfg, data.num_classes)
    result = fit(trainable, data.train, data.val, cfg.recipe, seed=seed, run_dir=run_dir, log=log, warn=inv.echo,
                 progress=inv.progress, dist=inv.dist, calibration_loader=data.calibration)
    return result, trainable, data


def _train(inv: Invocation, arm: ResolvedArm, seed: int, run_dir: Path) -> tuple[str, dict]:
    """Rank 0's tracked run (resumed where one of its key stopped): its id and final metrics."""
    cfg, name, tracker, world = arm.config, f"{arm.name} seed {seed}", inv.tracker, inv.dist.world_size
    run_id, reopened = tracker.start_child(
        inv.experiment, inv.parent, name, arm.run_key(seed), inv.arm_tags(arm, seed),
        {**flatten(arm.run_spec), "seed": seed, "distributed.world_size": world,
         "distributed.batch_per_process": cfg.recipe.batch_size // world})
    inv.echo(f"  {name}: {'resuming' if reopened else 'training'} (run {run_id})")
    recipe = run_pages.recipe_text(cfg, world)
    note = lambda what, *final: run_pages.child_note(inv.loaded, arm.name, seed, cfg, what, *final)  # noqa: E731
    with tracker.running(run_id):
        tracker.set_tags(run_id, {run_pages.NOTE: note(f"{setup_name(cfg)}; {recipe}")})
        result, trainable, data = _fit(inv, arm, seed, run_dir,
                                       log=lambda metrics, step: tracker.log_series(run_id, metrics, step))
        _log_missing_epochs(tracker, run_id, result.history)
        setup = f"{data.description}; model {cfg.model.arch}; {recipe}"
        final = final_metrics(result.final) | {"best_epoch": result.best_epoch}
        final |= cost_metrics(cfg, trainable.model, data.image_size)
        tracker.log_metrics(run_id, final, max(result.best_epoch, 0))
        tracker.set_tags(run_id, {"suite.world_size": str(world), "suite.setup": setup, run_pages.NOTE: note(
            setup, {b: t1 for b, (t1, _) in result.final.items()}, max(result.best_epoch, 0))})
        with tracker.artifact_dir(run_id) as tmp:
            _write_run_artifacts(tmp, arm, seed, result)
    inv.echo("    " + "  ".join(f"{b}-bit {t1:.2f}%" for b, (t1, _) in sorted(result.final.items())))
    return run_id, final


def _log_missing_epochs(tracker: Tracker, run_id: str, history: list[dict]) -> None:
    """Log again, at their own steps, the epochs of the run's history that MLflow lacks (a process killed between
    an epoch's checkpoint and its logging), with the running best the trainer logs beside them: MLflow's curves
    then hold every epoch of history.csv."""
    logged, best = tracker.logged_steps(run_id, series_key("val_top1_mean")), 0.0
    for row in history:
        best = max(best, row["val_top1_mean"])
        if row["epoch"] not in logged:
            metrics = {k: v for k, v in row.items() if k != "epoch"}
            tracker.log_series(run_id, metrics | {"best_val_top1_mean": best}, row["epoch"])


def _write_run_artifacts(folder: Path, arm: ResolvedArm, seed: int, result) -> None:
    (folder / "resolved_manifest.yaml").write_text(yaml.safe_dump(arm.config.model_dump(mode="json"), sort_keys=False))
    write_final_metrics(folder, result.final)
    pd.DataFrame(result.history).to_csv(folder / "history.csv", index=False)
    fig = training_curves_figure(pd.DataFrame(result.history), arm.config.method.bits,
                                 title=f"{arm.config.name} / {arm.name} / seed {seed}")
    fig.savefig(folder / "training_curves.png", dpi=120)


def _run_analyses(inv: Invocation, run_id: str, metrics: dict, arm: ResolvedArm, seed: int, run_dir: Path) -> None:
    """The manifest's ``analyses`` (suite.analyses) on the run's best checkpoint, logged to the run once (again
    where an older version logged fewer kinds than it measures now)."""
    cfg = arm.config
    pending = [spec for spec in map(analysis, cfg.analyses) if not spec.measured(metrics)]
    if not pending:
        return
    data = build_data(cfg.data, cfg.recipe.batch_size, seed, cfg.recipe.eval_batch_size)
    model = configured_trainable(cfg, data.num_classes).model
    fits = Expected(cfg.recipe, cfg.method.bits, None, model).model_state
    found = next(filter(None, (CheckpointSeries(run_dir, name, warn=inv.echo).latest(check=fits)
                               for name in ("best", "last"))), None)
    if found is None:
        inv.echo(f"    {', '.join(spec.name for spec in pending)}: no readable checkpoint under {run_dir}; "
                 f"analysis not run")
        return
    saved, checkpoint = found
    model.load_state_dict(saved["model"])
    x, _ = next(iter(data.val))  # the first validation batch: deterministic, no augmentation
    for spec in pending:
        measured, table = spec.measure(model, cfg.method.bits, x)
        inv.tracker.log_metrics(run_id, measured, 0)
        with inv.tracker.artifact_dir(run_id) as tmp:
            table.to_csv(tmp / f"{spec.name}.csv", index=False)
        inv.echo(f"    {spec.name}: {len(table)} rows logged ({checkpoint.name})")


TASK = Train()
