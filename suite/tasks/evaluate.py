"""``task: evaluate``: a released checkpoint (the release's format, suite.release) evaluated at every bit-width, one
tracked run per arm. The manifest for one checkpoint and the printed table: suite.evaluate."""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from suite import run_pages
from suite.checkpoints import sha256_file
from suite.data import build_data
from suite.distributed import Distributed
from suite.evaluate import format_results
from suite.invocation import Invocation
from suite.lifecycle import claimed_run
from suite.manifest import LoadedManifest, ResolvedArm, flatten
from suite.records import final_metrics
from suite.release import load_release_checkpoint, mapping_table, setting_of
from suite.tasks.common import check_data, final_rows, summarize_top1, write_final_metrics
from suite.titles import experiment_name
from suite.trainer import evaluate, resolve_device


def read_checkpoint(arm: ResolvedArm):
    """The released checkpoint of an ``evaluate`` arm, loaded into the suite's model and checked (before any run
    is opened): (model, import report)."""
    cfg = arm.config
    path = Path(cfg.checkpoint.path)
    net, report = load_release_checkpoint(path, cfg.model.arch, cfg.data.dataset, setting_of(cfg.method.bits),
                                          return_report=True, trusted=cfg.checkpoint.trusted)
    if sha256_file(path) != cfg.checkpoint.sha256:
        raise ValueError(f"{path}: its SHA-256 is not the manifest's checkpoint.sha256 (the file changed)")
    return net, report


class Evaluate:
    seeded, all_ranks, exact, records_reuse = False, False, False, False
    busy_note = "being evaluated by another process, skipped here"
    found_note = "evaluated earlier (run {run}), not evaluated again"

    def preflight(self, loaded: LoadedManifest, dist: Distributed) -> dict:
        """Every arm's checkpoint, read and checked, by arm name; the data checked."""
        checkpoints = {arm.name: read_checkpoint(arm) for arm in loaded.arms}
        check_data(loaded)
        return checkpoints

    def run_arm(self, inv: Invocation, arm: ResolvedArm, seed: int, checkpoints: dict) -> list[dict]:
        key = arm.run_key(seed)
        with claimed_run(inv, self, arm, seed, key) as claim:
            if claim.to_run:
                claim.record, claim.metrics = self._evaluate(inv, arm, key, *checkpoints[arm.name])
        return final_rows(arm, seed, claim.metrics)

    def _evaluate(self, inv: Invocation, arm: ResolvedArm, key: str, net, report) -> tuple[str, dict]:
        cfg, tracker = arm.config, inv.tracker
        meta, path = report.metadata, Path(cfg.checkpoint.path)
        data = build_data(cfg.data, cfg.recipe.batch_size, 0, cfg.recipe.eval_batch_size)
        setup = (f"{data.description}; model {cfg.model.arch}; released checkpoint {path.name}, epoch "
                 f"{meta.get('epoch', '?')}, evaluated only")
        note = lambda *top1: run_pages.child_note(inv.loaded, arm.name, None, cfg, setup, *top1)  # noqa: E731
        tags = inv.arm_tags(arm, 0) | {"suite.checkpoint_path": str(path),
                                       "suite.checkpoint_sha256": cfg.checkpoint.sha256, "suite.setup": setup,
                                       run_pages.NOTE: note()}
        params = {**flatten(arm.run_spec), "seed": 0, "checkpoint.epoch": meta.get("epoch"),
                  "checkpoint.arch": meta.get("arch"), "checkpoint.acc1": _plain(meta.get("acc1")),
                  "checkpoint.best_acc1": _plain(meta.get("best_acc1")), "checkpoint.ddp_prefix": bool(report.prefix),
                  "mapping.loaded": len(report.loaded), "mapping.ignored": len(report.ignored)}
        run_id, _ = tracker.start_child(inv.experiment, inv.parent, arm.name, key, tags, params)
        inv.echo(f"{path} (sha256 {cfg.checkpoint.sha256[:12]}, epoch {meta.get('epoch', '?')}): "
                 f"{len(report.loaded)} tensors loaded, {len(report.ignored)} ignored; evaluating {cfg.model.arch} on "
                 f"{data.description}")
        stored = _stored_acc1(meta.get("acc1"), cfg.method.bits)
        with tracker.running(run_id):
            device = resolve_device(cfg.recipe.device)
            results = evaluate(net.to(device), cfg.method.bits, data.val, device)
            metrics = final_metrics(results) | {f"release_acc1_b{b}": v for b, v in stored.items()}
            tracker.log_metrics(run_id, metrics, 0)
            tracker.set_tags(run_id, {run_pages.NOTE: note({b: t1 for b, (t1, _) in results.items()})})
            with tracker.artifact_dir(run_id) as tmp:
                write_final_metrics(tmp, results)
                pd.DataFrame(mapping_table(net)).to_csv(tmp / "key_mapping.csv", index=False)
        inv.echo(format_results(results, stored))
        inv.echo(f"MLflow run {run_id} in experiment {experiment_name(inv.loaded)!r} ({tracker.uri})")
        return run_id, metrics

    summarize = staticmethod(summarize_top1)


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


TASK = Evaluate()
