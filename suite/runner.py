"""Runs a resolved manifest: every (arm, seed) through the shared trainer, each tracked as an MLflow run."""
from __future__ import annotations

import platform
import re
from dataclasses import asdict
import tempfile
from pathlib import Path
from typing import Callable

import pandas as pd
import torch
import yaml

from suite.costs import measure_cost
from suite.data import build_data, num_classes
from suite.manifest import LoadedManifest, ResolvedArm, flatten
from suite.methods import METHODS
from suite.report import scale_label, training_curves_figure
from suite.tracking import Tracker, git_state
from suite.trainer import fit, resolve_device, seed_everything

ANALYSIS_METRIC_PREFIXES = ("qerr_",)  # metrics an ``analyses`` entry logs (suite.quant_error)


def tag_key(text: str) -> str:
    """An MLflow tag key from free text (arm names): characters MLflow refuses in keys become '_'."""
    return re.sub(r"[^\w\-. :/]", "_", text)


def _common_tags(loaded: LoadedManifest) -> dict[str, str]:
    m = loaded.manifest
    return {
        **git_state(Path(__file__).parent),
        "torch.version": torch.__version__, "python.version": platform.python_version(),
        "suite.device": str(resolve_device(m.recipe.device)), "suite.profile": loaded.profile,
        "suite.scale": scale_label(loaded.profile) or "paper-protocol", "suite.manifest": m.name,
        "suite.manifest_version": str(m.version), "suite.manifest_file": str(loaded.path),
        "suite.manifest_hash": loaded.hash, "suite.title": m.title, "suite.paper_ref": m.paper.ref,
        "suite.paper_verified": str(m.paper.verified).lower(),
        "suite.tolerance": "" if m.tolerance is None else str(m.tolerance),
    }


def run_manifest(loaded: LoadedManifest, results_dir: Path, *, progress: bool = True,
                 echo: Callable[[str], None] = print) -> pd.DataFrame:
    """Run every (arm, seed) not already finished; returns one row per (arm, seed, bit-width).

    A ``task: costs`` manifest instead measures each arm's storage and BitOPs (no data, no training).
    """
    results_dir = Path(results_dir)
    costs_only = loaded.manifest.task == "costs"
    # Pre-flight: a missing dataset fails here, before any run is opened or anything is written.
    for data_cfg in {yaml.safe_dump(asdict(a.config.data)): a.config.data for a in loaded.arms}.values():
        if not costs_only:
            build_data(data_cfg, loaded.manifest.recipe.batch_size, seed=0)
    tracker = Tracker(results_dir)
    m = loaded.manifest
    experiment = tracker.experiment_id(m.name)
    tags = _common_tags(loaded)
    parent = tracker.start_parent(experiment, f"{m.name} [{loaded.profile}]", tags,
                                  flatten(m.model_dump(mode="json", exclude={"profiles", "arms"})))
    runs = f"{len(loaded.arms)} arm(s)" + ("" if costs_only else f" x {len(m.seeds)} seed(s)")
    echo(f"{m.name} ({m.paper.ref}, profile {loaded.profile}): {runs}; MLflow {tracker.uri}")
    rows, status = [], "FAILED"
    try:
        with tempfile.TemporaryDirectory() as tmp:
            resolved = Path(tmp) / f"{m.name}.{loaded.profile}.resolved.yaml"
            resolved.write_text(loaded.resolved_yaml())
            tracker.log_artifact(parent, resolved)
        for arm in loaded.arms:
            if costs_only:
                rows += _measure_costs(tracker, experiment, parent, arm, tags, echo)
                continue
            for seed in m.seeds:
                rows += _run_one(tracker, experiment, parent, loaded, arm, seed, tags, results_dir, progress, echo)
        if costs_only:
            _report_costs(tracker, parent, pd.DataFrame(rows), m.name, echo)
        status = "FINISHED"
    except KeyboardInterrupt:
        status = "KILLED"
        raise
    finally:
        tracker.finish(parent, status)
    return pd.DataFrame(rows)


def _run_one(tracker: Tracker, experiment: str, parent: str, loaded: LoadedManifest, arm: ResolvedArm, seed: int,
             tags: dict, results_dir: Path, progress: bool, echo) -> list[dict]:
    cfg, key, name = arm.config, arm.run_key(seed), f"{arm.name} seed {seed}"
    run_tags = {**tags, "suite.arm": arm.name, "suite.seed": str(seed), "suite.method": cfg.method.name,
                "suite.bits": ",".join(map(str, cfg.method.bits)), "suite.dataset": cfg.data.dataset,
                "suite.model": cfg.model.arch}
    # Checkpoints are keyed by configuration, so a killed run resumes whichever manifest started it.
    run_dir = results_dir / "runs" / f"{cfg.model.arch}-{cfg.method.name}" / f"{key}-seed{seed}"
    # An identical configuration that finished here or in another manifest is not trained again.
    previous = tracker.find(key, experiment, status="FINISHED") or tracker.find(key, status="FINISHED")
    if previous is not None:
        record, metrics = previous.info.run_id, previous.data.metrics
        if previous.info.experiment_id == experiment:
            echo(f"  {arm.name} seed {seed}: finished earlier (run {record}), not run again")
            tracker.set_tags(parent, {tag_key(f"suite.reused.{arm.name}.seed{seed}"): record})
        else:
            previous = tracker.original(previous)
            # Analysis results belong to the manifest that asked for them: the record carries training results only.
            metrics = {k: v for k, v in previous.data.metrics.items() if not k.startswith(ANALYSIS_METRIC_PREFIXES)}
            record = tracker.record_reuse(previous, experiment, parent, name, run_tags, metrics)
            echo(f"  {arm.name} seed {seed}: identical to a run of {previous.data.tags.get('suite.manifest')} "
                 f"that finished earlier (run {previous.info.run_id}): its results are reused")
        _run_analyses(tracker, record, metrics, arm, seed, run_dir, echo)
        return _final_rows(arm, seed, metrics)

    run_id, reopened = tracker.start_child(experiment, parent, name, key, run_tags,
                                           {**flatten(arm.run_spec), "seed": seed})
    echo(f"  {arm.name} seed {seed}: {'resuming' if reopened else 'training'} (run {run_id})")
    try:
        seed_everything(seed)
        data = build_data(cfg.data, cfg.recipe.batch_size, seed, cfg.recipe.eval_batch_size)
        method = METHODS[cfg.method.name]
        trainable = method.build(cfg.model.arch, data.num_classes, cfg.method.bits, method.Options(**cfg.method.options))
        r = cfg.recipe
        steps = f"{r.steps_per_epoch} steps" if r.steps_per_epoch else "full epochs"
        tracker.set_tags(run_id, {"suite.setup": f"{data.description}; model {cfg.model.arch}; {r.epochs} epochs x "
                                                 f"{steps}, batch {r.batch_size}, lr {r.lr}, lr_quant {r.lr_quant}"})
        result = fit(trainable, data.train, data.val, cfg.recipe, seed=seed, run_dir=run_dir, progress=progress,
                     log=lambda metrics, step: tracker.log_metrics(run_id, metrics, step))
        final = {}
        for b, (top1, top5) in result.final.items():
            final[f"final_top1_b{b}"], final[f"final_top5_b{b}"] = top1, top5
        final["final_top1_mean"] = sum(v[0] for v in result.final.values()) / len(result.final)
        final["best_epoch"] = result.best_epoch
        final.update(_cost_metrics(method, trainable.model, cfg.method.bits, data.image_size))
        tracker.log_metrics(run_id, final, max(result.best_epoch, 0))
        _log_run_artifacts(tracker, run_id, arm, seed, result)
        tracker.finish(run_id)
    except BaseException as err:
        tracker.finish(run_id, "KILLED" if isinstance(err, KeyboardInterrupt) else "FAILED")
        raise
    echo("    " + "  ".join(f"{b}-bit {t1:.2f}%" for b, (t1, _) in sorted(result.final.items())))
    _run_analyses(tracker, run_id, final, arm, seed, run_dir, echo)
    return _final_rows(arm, seed, final)


def _run_analyses(tracker: Tracker, run_id: str, metrics: dict, arm: ResolvedArm, seed: int, run_dir: Path,
                  echo) -> None:
    """The manifest's ``analyses`` on the run's best checkpoint, logged to the run (once)."""
    cfg = arm.config
    if "quant_error" not in cfg.analyses or any(k.startswith(ANALYSIS_METRIC_PREFIXES) for k in metrics):
        return
    from suite.quant_error import measure_switching_error, summarize

    checkpoint = next((p for p in (run_dir / "best.pt", run_dir / "last.pt") if p.exists()), None)
    if checkpoint is None:
        echo(f"    quant_error: no checkpoint under {run_dir}; analysis not run")
        return
    data = build_data(cfg.data, cfg.recipe.batch_size, seed, cfg.recipe.eval_batch_size)
    method = METHODS[cfg.method.name]
    model = method.build(cfg.model.arch, data.num_classes, cfg.method.bits, method.Options(**cfg.method.options)).model
    model.load_state_dict(torch.load(checkpoint, map_location="cpu", weights_only=False)["model"])
    x, _ = next(iter(data.val))  # the first validation batch: deterministic, no augmentation
    table = measure_switching_error(model, cfg.method.bits, x)
    tracker.log_metrics(run_id, summarize(table), 0)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "quant_error.csv"
        table.to_csv(path, index=False)
        tracker.log_artifact(run_id, path)
    echo(f"    quant_error: {len(table)} rows logged ({checkpoint.name})")


def _measure_costs(tracker: Tracker, experiment: str, parent: str, arm: ResolvedArm, tags: dict, echo) -> list[dict]:
    """One tracked run per arm: stored bits and per-image MACs / BitOPs of the untrained model (they do not
    depend on the weights' values)."""
    cfg, key = arm.config, "costs-" + arm.run_key(0)
    previous = tracker.find(key, experiment)
    if previous is not None and previous.info.status == "FINISHED":
        echo(f"  {arm.name}: measured earlier (run {previous.info.run_id}), not measured again")
        metrics = previous.data.metrics
    else:
        run_tags = {**tags, "suite.arm": arm.name, "suite.method": cfg.method.name, "suite.model": cfg.model.arch,
                    "suite.bits": ",".join(map(str, cfg.method.bits)), "suite.dataset": cfg.data.dataset}
        run_id, _ = tracker.start_child(experiment, parent, arm.name, key, run_tags, flatten(arm.run_spec),
                                        kind="cost-run")
        try:
            method = METHODS[cfg.method.name]
            trainable = method.build(cfg.model.arch, num_classes(cfg.data.dataset), cfg.method.bits,
                                     method.Options(**cfg.method.options))
            metrics = _cost_metrics(method, trainable.model, cfg.method.bits, cfg.data.image_size)
            tracker.log_metrics(run_id, metrics, 0)
            tracker.finish(run_id)
        except BaseException as err:
            tracker.finish(run_id, "KILLED" if isinstance(err, KeyboardInterrupt) else "FAILED")
            raise
    return [{"arm": arm.name, "method": cfg.method.name, "bits": b, "storage_mib": metrics["storage_mib"],
             **{f"{k.removeprefix('storage_bits_')}_mib": v / 8 / 2**20 for k, v in metrics.items()
                if k.startswith("storage_bits_")},
             "macs_M": metrics[f"macs_b{b}"] / 1e6, "bitops_G": metrics[f"bitops_b{b}"] / 1e9,
             "fp_macs_M": metrics[f"fp_macs_b{b}"] / 1e6} for b in cfg.method.bits]


def _report_costs(tracker: Tracker, parent: str, table: pd.DataFrame, name: str, echo) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"{name}.costs.csv"
        table.to_csv(path, index=False)
        tracker.log_artifact(parent, path)
    storage = table.drop_duplicates("arm").set_index("arm").filter(like="_mib").round(3)
    bitops = table.pivot(index="arm", columns="bits", values="bitops_G").round(3)
    bitops.columns = [f"{b}-bit GBitOPs" for b in bitops.columns]
    echo("storage (MiB, all bit-widths served) and BitOPs per image (G; quantized layers, FP layers apart):\n"
         + storage.join(bitops).to_string())


def _cost_metrics(method, model, bits: list[int], image_size: int) -> dict[str, float]:
    """Stored bits by component (and MiB in all) and per-image MACs / BitOPs at every bit-width."""
    storage = method.storage_bits(model)
    out = {f"storage_bits_{k}": v for k, v in storage.items()}
    out["storage_mib"] = sum(storage.values()) / 8 / 2**20
    for b in bits:
        cost = measure_cost(model, b, (3, image_size, image_size))
        out[f"macs_b{b}"], out[f"bitops_b{b}"], out[f"fp_macs_b{b}"] = cost.quantized_macs, cost.quantized_bitops, cost.fp_macs
    return out


def _final_rows(arm: ResolvedArm, seed: int, metrics: dict) -> list[dict]:
    return [{"arm": arm.name, "seed": seed, "bits": b, "top1": metrics.get(f"final_top1_b{b}"),
             "top5": metrics.get(f"final_top5_b{b}")} for b in arm.config.method.bits]


def _log_run_artifacts(tracker: Tracker, run_id: str, arm: ResolvedArm, seed: int, result) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        (tmp / "resolved_manifest.yaml").write_text(yaml.safe_dump(arm.config.model_dump(mode="json"), sort_keys=False))
        pd.DataFrame([{"bits": b, "top1": t1, "top5": t5} for b, (t1, t5) in sorted(result.final.items())]).to_csv(
            tmp / "final_metrics.csv", index=False)
        pd.DataFrame(result.history).to_csv(tmp / "history.csv", index=False)
        fig = training_curves_figure(pd.DataFrame(result.history), arm.config.method.bits,
                                     title=f"{arm.config.name} / {arm.name} / seed {seed}")
        fig.savefig(tmp / "training_curves.png", dpi=120)
        for path in sorted(tmp.iterdir()):
            tracker.log_artifact(run_id, path)
