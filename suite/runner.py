"""Runs a resolved manifest: every (arm, seed) job as one tracked MLflow run under one parent run per invocation.

Tasks (``task`` in the manifest): ``train`` through the shared trainer, ``costs`` (storage and BitOPs of the
untrained models), ``evaluate`` (a released checkpoint at every bit-width). A run is identified by its
configuration: an identical run that finished, in this manifest or another, is reused, not run again.
"""
from __future__ import annotations

import json
import os
import re
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import pandas as pd
import torch
import yaml
from filelock import FileLock, Timeout

from suite.analyses import analysis, metric_prefixes
from suite.checkpoints import CheckpointSeries, sha256_file
from suite.costs import measure_cost
from suite.data import build_data, num_classes
from suite.distributed import SINGLE, Distributed, from_environment
from suite.evaluate import format_results
from suite.manifest import LoadedManifest, Manifest, ManifestError, ResolvedArm, flatten
from suite.methods import Trainable, build_trainable, method as registered_method
from suite.plots import training_curves_figure
from suite import run_pages
from suite.records import final_metrics, scale_label
from suite.release import load_release_checkpoint, mapping_table, setting_of
from suite.titles import experiment_name, honest_title, invocation_name, setup_name
from suite.tracking import TAG_KIND, Tracker, environment_tags, git_state, series_key
from suite.trainer import Expected, evaluate, fit, resolve_device, seed_everything
from suite.ui_view import VIEW_TAG, runs_view

def configured_trainable(cfg: Manifest, classes: int) -> Trainable:
    """The configured method on the configured model."""
    return build_trainable(cfg.method.name, cfg.model.arch, classes, cfg.method.bits, cfg.method.options)


def tag_key(text: str) -> str:
    """An MLflow tag key from free text (arm names): characters MLflow refuses in keys become '_'."""
    return re.sub(r"[^\w\-. :/]", "_", text)


def metric_key(text: str) -> str:
    """A readable MLflow metric key from an arm name: spaces and other characters become '_'."""
    return re.sub(r"[^\w\-.]+", "_", text).strip("_")


def manifest_tags(loaded: LoadedManifest) -> dict[str, str]:
    """Tags every run of one invocation carries: code, environment, manifest, profile and its scale."""
    m = loaded.manifest
    return {
        **git_state(Path(__file__).parent), **environment_tags(),
        "suite.device": str(resolve_device(m.recipe.device)), "suite.profile": loaded.profile,
        "suite.scale": "exact" if m.task == "costs" else scale_label(loaded.profile) or "paper-protocol",
        "suite.manifest": m.name,
        "suite.manifest_version": str(m.version), "suite.manifest_file": str(loaded.path),
        "suite.manifest_hash": loaded.hash, "suite.title": honest_title(loaded), "suite.paper_ref": m.paper.ref,
        "suite.paper_verified": str(m.paper.verified).lower(), "suite.claim": m.claim,
        "suite.pipeline_check": str(m.pipeline_check).lower(),
        "suite.tolerance": "" if m.tolerance is None else str(m.tolerance), "suite.command": loaded.command,
    }


@dataclass
class Invocation:
    """One ``run`` of a manifest: where its runs go and how it reports. Under torchrun, only rank 0 has a tracker;
    the other ranks follow its decisions (``dist.from_main``) and train with it."""

    loaded: LoadedManifest
    results_dir: Path
    progress: bool
    echo: Callable[[str], None]
    dist: Distributed = SINGLE
    tracker: Tracker | None = None
    experiment: str = ""
    parent: str = ""
    tags: dict[str, str] = field(default_factory=dict)

    def arm_tags(self, arm: ResolvedArm, seed: int) -> dict[str, str]:
        cfg = arm.config
        return {**self.tags, "suite.arm": arm.name, "suite.seed": str(seed), "suite.method": cfg.method.name,
                "suite.bits": ",".join(map(str, cfg.method.bits)), "suite.dataset": cfg.data.dataset,
                "suite.model": cfg.model.arch, "suite.device": str(resolve_device(cfg.recipe.device)),
                "suite.precision": cfg.recipe.precision, "suite.deterministic": str(cfg.recipe.deterministic).lower()}



def preflight(loaded: LoadedManifest, dist: Distributed = SINGLE) -> dict:
    """Everything that can be checked without the tracking store, so that a missing device, dataset or checkpoint
    fails before any run is opened or any file written. Returns the checkpoints an ``evaluate`` task reads."""
    m = loaded.manifest
    for arm in loaded.arms:
        recipe = arm.config.recipe
        if recipe.device != "auto" and torch.device(recipe.device).type == "cuda":
            index, count = torch.device(recipe.device).index or 0, torch.cuda.device_count() if torch.cuda.is_available() else 0
            if index >= count:
                raise ManifestError(f"{loaded.path}: field `recipe.device`: {recipe.device} is not present on this "
                                    f"machine ({count} CUDA device(s)); use auto or cpu")
        if recipe.batch_size % dist.world_size:
            raise ManifestError(f"{loaded.path}: field `recipe.batch_size`: the global batch {recipe.batch_size} does "
                                f"not divide into {dist.world_size} processes (arm {arm.name})")
    checkpoints = {arm.name: _read_checkpoint(arm) for arm in loaded.arms} if m.task == "evaluate" else {}
    if m.task != "costs":
        for data_cfg in {yaml.safe_dump(asdict(a.config.data)): a.config.data for a in loaded.arms}.values():
            build_data(data_cfg, m.recipe.batch_size, seed=0)
    return checkpoints


def run_manifest(loaded: LoadedManifest, results_dir: Path, *, progress: bool = True,
                 echo: Callable[[str], None] = print, tracking: str | None = None) -> pd.DataFrame:
    """Run every (arm, seed) not already finished; returns one row per (arm, seed, bit-width). ``tracking``: the
    tracking URI (default: ``MLFLOW_TRACKING_URI``, else the SQLite store in ``results_dir``).

    Under torchrun (``WORLD_SIZE`` > 1) every process calls this: training runs are shared by all of them, the
    other tasks run on rank 0 alone.
    """
    m = loaded.manifest
    dist = from_environment()
    checkpoints = preflight(loaded, dist)
    if not dist.main:
        inv = Invocation(loaded, Path(results_dir), progress, echo, dist)
        for arm in loaded.arms if m.task == "train" else []:
            for seed in m.seeds:
                _train_run(inv, arm, seed)
        return pd.DataFrame()
    tracker = Tracker(results_dir, tracking)
    for run_id in tracker.close_orphans():
        echo(f"closed run {run_id} as KILLED: the process running it is gone")
    experiment = tracker.experiment_id(experiment_name(loaded))
    tags = manifest_tags(loaded) | {"suite.world_size": str(dist.world_size)}
    params = flatten(m.model_dump(mode="json", exclude={"profiles", "arms"}))
    rows: list[dict] = []
    with tracker.invocation(experiment, invocation_name(loaded),
                            tags | {"suite.jobs": json.dumps(loaded.jobs)}, params) as parent:
        inv = Invocation(loaded, Path(results_dir), progress, echo, dist, tracker, experiment, parent, tags)
        _describe_experiment(inv)
        runs = f"{len(loaded.arms)} arm(s)" + (f" x {len(m.seeds)} seed(s)" if m.task == "train" else "")
        where = f" on {dist.world_size} processes" if dist.active else ""
        echo(f"{m.name} ({m.paper.ref}, profile {loaded.profile}): {runs}{where}; MLflow {tracker.uri}")
        with tracker.artifact_dir(parent) as tmp:
            (tmp / f"{m.name}.{loaded.profile}.resolved.yaml").write_text(loaded.resolved_yaml())
        for arm in loaded.arms:
            if m.task == "costs":
                rows += _cost_run(inv, arm)
            elif m.task == "evaluate":
                rows += _evaluate_run(inv, arm, *checkpoints[arm.name])
            else:
                for seed in m.seeds:
                    rows += _train_run(inv, arm, seed)
        if m.task == "costs":
            _report_costs(inv, pd.DataFrame(rows))
        else:
            _summarize(inv, pd.DataFrame(rows))
    return pd.DataFrame(rows)


def _describe_experiment(inv: Invocation) -> None:
    """The experiment's description (what ran, the claim, each profile's reproducing command) and the runs-table
    view it opens on (the final results as columns, every invocation's runs expanded)."""
    parents = inv.tracker.client.search_runs([inv.experiment], f"tags.`{TAG_KIND}` = 'invocation'",
                                             order_by=["attributes.start_time DESC"], max_results=1000)
    newest = {}
    for run in parents:
        newest.setdefault(run.data.tags.get("suite.profile"), run.data.tags)
    inv.tracker.set_experiment_tags(inv.experiment, {
        run_pages.NOTE: run_pages.experiment_note(inv.loaded, list(newest.values())),
        VIEW_TAG: runs_view(run_pages.view_columns(inv.loaded), [r.info.run_id for r in parents])})


def _summarize(inv: Invocation, rows: pd.DataFrame) -> None:
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


@contextmanager
def exclusive(path: Path) -> Iterator[bool]:
    """Hold the OS file lock ``path`` for the block if no other process does (True), else do nothing (False).
    The kernel releases it when its holder dies, so a killed run never blocks the next."""
    path.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(path)
    try:
        lock.acquire(timeout=0)
    except Timeout:
        yield False
        return
    try:
        yield True
    finally:
        lock.release()


# ---------------------------------------------------------------------------------------------------- train


def _train_run(inv: Invocation, arm: ResolvedArm, seed: int) -> list[dict]:
    """One (arm, seed) under its run directory's lock: a second process on the same run skips it. Under torchrun
    rank 0 decides whether it trains, and the other ranks join it."""
    run_dir = arm.run_dir(inv.results_dir, seed)
    if not inv.dist.main:
        if inv.dist.from_main(None):
            _fit(inv, arm, seed, run_dir)
        return []
    with exclusive(run_dir / "run.lock") as mine:
        if mine:
            return _train_locked(inv, arm, seed, run_dir)
    inv.dist.from_main(False)
    inv.echo(f"  {arm.name} seed {seed}: being trained by another process ({run_dir / 'run.lock'}), skipped here")
    return _final_rows(arm, seed, {})


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


def _train_locked(inv: Invocation, arm: ResolvedArm, seed: int, run_dir: Path) -> list[dict]:
    cfg, key, name = arm.config, arm.run_key(seed), f"{arm.name} seed {seed}"
    tracker, echo = inv.tracker, inv.echo
    # An identical configuration that finished here or in another manifest is not trained again.
    previous = tracker.find(key, inv.experiment, status="FINISHED") or tracker.find(key, status="FINISHED")
    inv.dist.from_main(previous is None)
    if previous is not None:
        record, metrics = previous.info.run_id, previous.data.metrics
        if previous.info.experiment_id == inv.experiment:
            echo(f"  {name}: finished earlier (run {record}), not run again")
            tracker.set_tags(inv.parent, {tag_key(f"suite.reused.{arm.name}.seed{seed}"): record})
        else:
            previous = tracker.original(previous)
            # Analysis results belong to the manifest that asked for them: the record carries training results only.
            metrics = {k: v for k, v in previous.data.metrics.items() if not k.startswith(metric_prefixes())}
            record = tracker.record_reuse(previous, inv.experiment, inv.parent, name, inv.arm_tags(arm, seed), metrics)
            echo(f"  {name}: identical to a run of {previous.data.tags.get('suite.manifest')} "
                 f"that finished earlier (run {previous.info.run_id}): its results are reused")
        _run_analyses(inv, record, metrics, arm, seed, run_dir)
        return _final_rows(arm, seed, metrics)

    world = inv.dist.world_size
    run_id, reopened = tracker.start_child(
        inv.experiment, inv.parent, name, key, inv.arm_tags(arm, seed),
        {**flatten(arm.run_spec), "seed": seed, "distributed.world_size": world,
         "distributed.batch_per_process": cfg.recipe.batch_size // world})
    echo(f"  {name}: {'resuming' if reopened else 'training'} (run {run_id})")
    recipe = run_pages.recipe_text(cfg, world)
    note = lambda what, *final: run_pages.child_note(inv.loaded, arm.name, seed, cfg, what, *final)  # noqa: E731
    with tracker.running(run_id):
        tracker.set_tags(run_id, {run_pages.NOTE: note(f"{setup_name(cfg)}; {recipe}")})
        result, trainable, data = _fit(inv, arm, seed, run_dir,
                                       log=lambda metrics, step: tracker.log_series(run_id, metrics, step))
        _log_missing_epochs(tracker, run_id, result.history)
        setup = f"{data.description}; model {cfg.model.arch}; {recipe}"
        final = final_metrics(result.final) | {"best_epoch": result.best_epoch}
        final |= _cost_metrics(cfg, trainable.model, data.image_size)
        tracker.log_metrics(run_id, final, max(result.best_epoch, 0))
        tracker.set_tags(run_id, {"suite.world_size": str(world), "suite.setup": setup, run_pages.NOTE: note(
            setup, {b: t1 for b, (t1, _) in result.final.items()}, max(result.best_epoch, 0))})
        with tracker.artifact_dir(run_id) as tmp:
            _write_run_artifacts(tmp, arm, seed, result)
    echo("    " + "  ".join(f"{b}-bit {t1:.2f}%" for b, (t1, _) in sorted(result.final.items())))
    _run_analyses(inv, run_id, final, arm, seed, run_dir)
    return _final_rows(arm, seed, final)


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
    pd.DataFrame([{"bits": b, "top1": t1, "top5": t5} for b, (t1, t5) in sorted(result.final.items())]).to_csv(
        folder / "final_metrics.csv", index=False)
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


def _final_rows(arm: ResolvedArm, seed: int, metrics: dict) -> list[dict]:
    return [{"arm": arm.name, "seed": seed, "bits": b, "top1": metrics.get(f"final_top1_b{b}"),
             "top5": metrics.get(f"final_top5_b{b}")} for b in arm.config.method.bits]


# ---------------------------------------------------------------------------------------------------- costs


def _cost_metrics(cfg: Manifest, model, image_size: int) -> dict[str, float]:
    """Stored bits by component (and MiB in all) and per-image MACs / BitOPs at every bit-width."""
    storage = registered_method(cfg.method.name).storage_bits(model)
    out = {f"storage_bits_{k}": v for k, v in storage.items()}
    out["storage_mib"] = sum(storage.values()) / 8 / 2**20
    for b in cfg.method.bits:
        cost = measure_cost(model, b, (3, image_size, image_size))
        out[f"macs_b{b}"], out[f"bitops_b{b}"] = cost.quantized_macs, cost.quantized_bitops
        out[f"fp_macs_b{b}"] = cost.fp_macs
    return out


def _cost_run(inv: Invocation, arm: ResolvedArm) -> list[dict]:
    """One tracked run per arm: stored bits and per-image MACs / BitOPs of the untrained model (they do not
    depend on the weights' values)."""
    cfg, key, tracker = arm.config, "costs-" + arm.run_key(0), inv.tracker
    with exclusive(tracker.locks / f"{key}.lock") as mine:
        if not mine:
            inv.echo(f"  {arm.name}: being measured by another process, skipped here")
            return []
        return _cost_locked(inv, arm, cfg, key)


def _cost_locked(inv: Invocation, arm: ResolvedArm, cfg: Manifest, key: str) -> list[dict]:
    tracker = inv.tracker
    previous = tracker.find(key, inv.experiment, status="FINISHED")
    if previous is not None:
        inv.echo(f"  {arm.name}: measured earlier (run {previous.info.run_id}), not measured again")
        metrics = previous.data.metrics
    else:
        tags = {k: v for k, v in inv.arm_tags(arm, 0).items() if k != "suite.seed"}
        run_id, _ = tracker.start_child(inv.experiment, inv.parent, arm.name, key, tags, flatten(arm.run_spec),
                                        kind="cost-run")
        tracker.set_tags(run_id, {run_pages.NOTE: run_pages.child_note(
            inv.loaded, arm.name, None, cfg, f"{setup_name(cfg)}, untrained: stored bits by component and per-image "
                                             f"MACs / BitOPs at every bit-width (exact; training does not change them)")})
        with tracker.running(run_id):
            model = configured_trainable(cfg, num_classes(cfg.data.dataset)).model
            metrics = _cost_metrics(cfg, model, cfg.data.image_size)
            tracker.log_metrics(run_id, metrics, 0)
    return [{"arm": arm.name, "method": cfg.method.name, "bits": b, "storage_mib": metrics["storage_mib"],
             **{f"{k.removeprefix('storage_bits_')}_mib": v / 8 / 2**20 for k, v in metrics.items()
                if k.startswith("storage_bits_")},
             "macs_M": metrics[f"macs_b{b}"] / 1e6, "bitops_G": metrics[f"bitops_b{b}"] / 1e9,
             "fp_macs_M": metrics[f"fp_macs_b{b}"] / 1e6} for b in cfg.method.bits]


def _report_costs(inv: Invocation, table: pd.DataFrame) -> None:
    """The costs on the parent run: a CSV at full precision, per-arm metrics ``<arm>.storage_mib`` and
    ``<arm>.gbitops_b<b>`` (rounded to three decimals) and the description's table; and printed."""
    if table.empty:
        return
    with inv.tracker.artifact_dir(inv.parent) as tmp:
        table.to_csv(tmp / f"{inv.loaded.manifest.name}.costs.csv", index=False)
    arms = table.drop_duplicates("arm").set_index("arm")
    gbitops = {arm: dict(zip(g["bits"], g["bitops_G"])) for arm, g in table.groupby("arm", sort=False)}
    metrics = {f"{metric_key(arm)}.storage_mib": mib for arm, mib in arms["storage_mib"].items()}
    metrics |= {f"{metric_key(arm)}.gbitops_b{b}": v for arm, row in gbitops.items() for b, v in row.items()}
    inv.tracker.log_metrics(inv.parent, {k: round(v, 3) for k, v in metrics.items()}, 0)
    inv.tracker.set_tags(inv.parent, {run_pages.NOTE: run_pages.costs_note(
        inv.loaded, arms["storage_mib"].to_dict(), gbitops)})
    storage = arms.filter(like="_mib").round(3)
    bitops = table.pivot(index="arm", columns="bits", values="bitops_G").round(3)
    bitops.columns = [f"{b}-bit GBitOPs" for b in bitops.columns]
    inv.echo("storage (MiB, all bit-widths served) and BitOPs per image (G; quantized layers, FP layers apart):\n"
             + storage.join(bitops).to_string())


# ------------------------------------------------------------------------------------------------- evaluate


def _read_checkpoint(arm: ResolvedArm):
    """The released checkpoint of an ``evaluate`` arm, loaded into the suite's model and checked (before any run
    is opened): (model, import report)."""
    cfg = arm.config
    path = Path(cfg.checkpoint.path)
    net, report = load_release_checkpoint(path, cfg.model.arch, cfg.data.dataset, setting_of(cfg.method.bits),
                                          return_report=True, trusted=cfg.checkpoint.trusted)
    if sha256_file(path) != cfg.checkpoint.sha256:
        raise ValueError(f"{path}: its SHA-256 is not the manifest's checkpoint.sha256 (the file changed)")
    return net, report


def _evaluate_run(inv: Invocation, arm: ResolvedArm, net, report) -> list[dict]:
    with exclusive(inv.tracker.locks / f"{arm.run_key(0)}.lock") as mine:
        if mine:
            return _evaluate_locked(inv, arm, net, report)
    inv.echo(f"  {arm.name}: being evaluated by another process, skipped here")
    return _final_rows(arm, 0, {})


def _evaluate_locked(inv: Invocation, arm: ResolvedArm, net, report) -> list[dict]:
    cfg, key, tracker = arm.config, arm.run_key(0), inv.tracker
    previous = tracker.find(key, inv.experiment, status="FINISHED")
    if previous is not None:
        inv.echo(f"  {arm.name}: evaluated earlier (run {previous.info.run_id}), not evaluated again")
        return _final_rows(arm, 0, previous.data.metrics)
    meta, path = report.metadata, Path(cfg.checkpoint.path)
    data = build_data(cfg.data, cfg.recipe.batch_size, 0, cfg.recipe.eval_batch_size)
    setup = (f"{data.description}; model {cfg.model.arch}; released checkpoint {path.name}, epoch "
             f"{meta.get('epoch', '?')}, evaluated only")
    note = lambda *top1: run_pages.child_note(inv.loaded, arm.name, None, cfg, setup, *top1)  # noqa: E731
    tags = inv.arm_tags(arm, 0) | {"suite.checkpoint_path": str(path), "suite.checkpoint_sha256": cfg.checkpoint.sha256,
                                   "suite.setup": setup, run_pages.NOTE: note()}
    params = {**flatten(arm.run_spec), "seed": 0, "checkpoint.epoch": meta.get("epoch"),
              "checkpoint.arch": meta.get("arch"), "checkpoint.acc1": _plain(meta.get("acc1")),
              "checkpoint.best_acc1": _plain(meta.get("best_acc1")), "checkpoint.ddp_prefix": bool(report.prefix),
              "mapping.loaded": len(report.loaded), "mapping.ignored": len(report.ignored)}
    run_id, _ = tracker.start_child(inv.experiment, inv.parent, arm.name, key, tags, params)
    inv.echo(f"{path} (sha256 {cfg.checkpoint.sha256[:12]}, epoch {meta.get('epoch', '?')}): {len(report.loaded)} "
             f"tensors loaded, {len(report.ignored)} ignored; evaluating {cfg.model.arch} on {data.description}")
    with tracker.running(run_id):
        device = resolve_device(cfg.recipe.device)
        results = evaluate(net.to(device), cfg.method.bits, data.val, device)
        metrics = final_metrics(results) | {f"release_acc1_b{b}": v for b, v in
                                            _stored_acc1(meta.get("acc1"), cfg.method.bits).items()}
        tracker.log_metrics(run_id, metrics, 0)
        tracker.set_tags(run_id, {run_pages.NOTE: note({b: t1 for b, (t1, _) in results.items()})})
        with tracker.artifact_dir(run_id) as tmp:
            pd.DataFrame([{"bits": b, "top1": t1, "top5": t5} for b, (t1, t5) in sorted(results.items())]).to_csv(
                tmp / "final_metrics.csv", index=False)
            pd.DataFrame(mapping_table(net)).to_csv(tmp / "key_mapping.csv", index=False)
    inv.echo(format_results(results, _stored_acc1(meta.get("acc1"), cfg.method.bits)))
    inv.echo(f"MLflow run {run_id} in experiment {experiment_name(inv.loaded)!r} ({tracker.uri})")
    return _final_rows(arm, 0, metrics)


def _plain(value):
    """A checkpoint's numpy / tensor metadata as plain Python numbers for MLflow params."""
    if hasattr(value, "reshape") and getattr(value, "ndim", 0) > 0:
        return [round(float(v), 4) for v in value.reshape(-1)]
    if hasattr(value, "item"):
        return float(value)
    return value


def _stored_acc1(acc1, bits: list[int]) -> dict[int, float]:
    """The checkpoint's own per-bit top-1, when it has one per bit-width and is not the all-zero placeholder."""
    if acc1 is None:
        return {}
    values = [float(v) for v in (acc1.reshape(-1) if hasattr(acc1, "reshape") else acc1)]
    return {b: v for b, v in zip(bits, values)} if len(values) == len(bits) and any(values) else {}
