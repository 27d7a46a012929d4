"""``task: costs``: stored bits and per-image MACs / BitOPs of every arm's untrained model (they do not depend on
the weights' values), one tracked run per arm, and the table of them on the parent run."""
from __future__ import annotations

import pandas as pd

from suite import run_pages
from suite.costs import measure_cost
from suite.data import num_classes
from suite.distributed import Distributed
from suite.invocation import Invocation, metric_key
from suite.lifecycle import claimed_run
from suite.manifest import LoadedManifest, Manifest, ResolvedArm, flatten
from suite.methods import method as registered_method
from suite.tasks.common import configured_trainable
from suite.titles import setup_name


def cost_metrics(cfg: Manifest, model, image_size: int) -> dict[str, float]:
    """Stored bits by component (and MiB in all) and per-image MACs / BitOPs at every bit-width."""
    storage = registered_method(cfg.method.name).storage_bits(model)
    out = {f"storage_bits_{k}": v for k, v in storage.items()}
    out["storage_mib"] = sum(storage.values()) / 8 / 2**20
    for b in cfg.method.bits:
        cost = measure_cost(model, b, (3, image_size, image_size))
        out[f"macs_b{b}"], out[f"bitops_b{b}"] = cost.quantized_macs, cost.quantized_bitops
        out[f"fp_macs_b{b}"] = cost.fp_macs
    return out


class Costs:
    seeded, all_ranks, exact, records_reuse = False, False, True, False
    busy_note = "being measured by another process, skipped here"
    found_note = "measured earlier (run {run}), not measured again"

    def preflight(self, loaded: LoadedManifest, dist: Distributed) -> None:
        return None  # no data: the models are measured untrained

    def run_arm(self, inv: Invocation, arm: ResolvedArm, seed: int, state: None) -> list[dict]:
        key = "costs-" + arm.run_key(seed)
        with claimed_run(inv, self, arm, seed, key) as claim:
            if claim.to_run:
                claim.record, claim.metrics = self._measure(inv, arm, key)
        if claim.busy:
            return []
        cfg, metrics = arm.config, claim.metrics
        return [{"arm": arm.name, "method": cfg.method.name, "bits": b, "storage_mib": metrics["storage_mib"],
                 **{f"{k.removeprefix('storage_bits_')}_mib": v / 8 / 2**20 for k, v in metrics.items()
                    if k.startswith("storage_bits_")},
                 "macs_M": metrics[f"macs_b{b}"] / 1e6, "bitops_G": metrics[f"bitops_b{b}"] / 1e9,
                 "fp_macs_M": metrics[f"fp_macs_b{b}"] / 1e6} for b in cfg.method.bits]

    def _measure(self, inv: Invocation, arm: ResolvedArm, key: str) -> tuple[str, dict]:
        cfg, tracker = arm.config, inv.tracker
        tags = {k: v for k, v in inv.arm_tags(arm, 0).items() if k != "suite.seed"}
        run_id, _ = tracker.start_child(inv.experiment, inv.parent, arm.name, key, tags, flatten(arm.run_spec),
                                        kind="cost-run")
        tracker.set_tags(run_id, {run_pages.NOTE: run_pages.child_note(
            inv.loaded, arm.name, None, cfg, f"{setup_name(cfg)}, untrained: stored bits by component and per-image "
                                             f"MACs / BitOPs at every bit-width (exact; training does not change them)")})
        with tracker.running(run_id):
            model = configured_trainable(cfg, num_classes(cfg.data.dataset)).model
            metrics = cost_metrics(cfg, model, cfg.data.image_size)
            tracker.log_metrics(run_id, metrics, 0)
        return run_id, metrics

    def summarize(self, inv: Invocation, table: pd.DataFrame) -> None:
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


TASK = Costs()
