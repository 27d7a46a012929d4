"""Small tracking stores written the way suite.runner writes them (parent invocation, (arm, seed) children of any
status, per-epoch histories, reuse records, resolved manifest artifact), without training anything: seconds."""
from __future__ import annotations

import json
from dataclasses import dataclass, field

from suite.records import scale_label
from suite.tracking import TAG_KIND, Tracker, environment_tags

ENV = environment_tags()


@dataclass
class Arm:
    name: str
    method: str
    model: str = "resnet20"
    storage_mib: float = 1.0
    offset: float = 0.0  # added to every top-1 of this arm
    qerr: dict = field(default_factory=dict)  # {kind: {bits: value}}: logged as qerr_{kind}_b{bits} (quant_error)


@dataclass
class Invocation:
    """One ``suite run`` of a manifest at a profile; ``status`` maps (arm, seed) to a run status, or None for a
    planned job that never started (default FINISHED)."""

    manifest: str
    profile: str
    arms: list[Arm]
    seeds: list[int]
    bits: tuple[int, ...] = (2, 4, 6, 8)
    tolerance: str = "1.0"
    pipeline_check: bool = False
    claim: str = "the claim under test"
    status: dict = field(default_factory=dict)
    epochs: int = 2
    manifest_yaml: str = ""  # more of the resolved manifest (e.g. headline, claims)

    def tags(self) -> dict[str, str]:
        return {**ENV, "git.commit": "0123456789abcdef", "git.dirty": "false", "suite.device": "cpu",
                "suite.profile": self.profile, "suite.scale": scale_label(self.profile) or "paper-protocol",
                "suite.manifest": self.manifest, "suite.manifest_version": "1", "suite.manifest_hash": "abc",
                "suite.manifest_file": f"experiments/{self.manifest}.yaml", "suite.title": f"Title of {self.manifest}",
                "suite.paper_ref": "Table 9", "suite.paper_verified": "false", "suite.claim": self.claim,
                "suite.pipeline_check": str(self.pipeline_check).lower(), "suite.tolerance": self.tolerance,
                "suite.command": f"python -m suite run experiments/{self.manifest}.yaml --profile {self.profile}"}


def top1(arm: Arm, seed: int, bits: int, epoch: int | None = None) -> float:
    """Final top-1 (or at ``epoch``): 60 + bits + the arm's offset + 0.5 per seed; one point less per epoch left."""
    return 60.0 + bits + arm.offset + 0.5 * seed - (0.0 if epoch is None else 1.0 * (1 - epoch))


def write(tracker: Tracker, inv: Invocation, reuse: dict | None = None) -> dict[tuple[str, int], str]:
    """Log ``inv`` like the runner; ``reuse`` maps (arm, seed) to a run id to record as reused. Returns run ids."""
    exp = tracker.experiment_id(inv.manifest)
    tags = inv.tags()
    jobs = [[a.name, s] for a in inv.arms for s in inv.seeds]
    parent = tracker.client.create_run(exp, run_name=f"{inv.manifest} [{inv.profile}]", tags=tags | {
        "suite.jobs": json.dumps(jobs), TAG_KIND: "invocation"}).info.run_id  # as Tracker.invocation opens it
    tracker.log_params(parent, {"task": "train", "name": inv.manifest})
    with tracker.artifact_dir(parent) as tmp:
        (tmp / f"{inv.manifest}.{inv.profile}.resolved.yaml").write_text(
            f"name: {inv.manifest}\nseeds: {inv.seeds}\narms:\n" + "".join(f"- name: {a.name}\n" for a in inv.arms)
            + inv.manifest_yaml)
    ids = {}
    for arm in inv.arms:
        for seed in inv.seeds:
            status = inv.status.get((arm.name, seed), "FINISHED")
            if status is None:
                continue
            child_tags = tags | {"suite.arm": arm.name, "suite.seed": str(seed), "suite.method": arm.method,
                                 "suite.bits": ",".join(map(str, inv.bits)), "suite.dataset": "digits",
                                 "suite.model": arm.model, "suite.setup": "fake setup"}
            final = {f"final_top1_b{b}": top1(arm, seed, b) for b in inv.bits}
            final |= {f"final_top5_b{b}": 90.0 + b for b in inv.bits} | {"storage_mib": arm.storage_mib}
            final |= {f"bitops_b{b}": b * b * 1e6 for b in inv.bits}
            final |= {f"qerr_{k}_b{b}": v for k, per_bit in arm.qerr.items() for b, v in per_bit.items()}
            source = (reuse or {}).get((arm.name, seed))
            if source is not None:
                previous = tracker.client.get_run(source)
                ids[arm.name, seed] = tracker.record_reuse(previous, exp, parent, f"{arm.name} seed {seed}", child_tags,
                                                           previous.data.metrics)
                continue
            run_id, _ = tracker.start_child(exp, parent, f"{arm.name} seed {seed}", f"{inv.manifest}-{inv.profile}-"
                                            f"{arm.name}-{seed}", child_tags, {"recipe.epochs": inv.epochs,
                                                                               "recipe.steps_per_epoch": 3})
            epochs = inv.epochs if status == "FINISHED" else 1
            for epoch in range(epochs):
                tracker.log_series(run_id, {f"val_top1_b{b}": top1(arm, seed, b, epoch) for b in inv.bits} |
                                   {f"train_loss_b{b}": 2.0 - 0.5 * epoch for b in inv.bits}, epoch)
            if status == "FINISHED":
                tracker.log_metrics(run_id, final, inv.epochs - 1)
            if status != "RUNNING":
                tracker.finish(run_id, status)
            ids[arm.name, seed] = run_id
    tracker.finish(parent, "FINISHED" if all(inv.status.get((a, s), "FINISHED") == "FINISHED" for a, s in jobs)
                   else "FAILED")
    return ids
