"""One ``run`` of a manifest (an invocation): where its runs go, the tags they share, the MLflow names it uses and
its experiment's description."""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from suite import run_pages
from suite.distributed import SINGLE, Distributed
from suite.manifest import LoadedManifest, ResolvedArm
from suite.records import scale_label
from suite.tasks import task
from suite.titles import honest_title
from suite.tracking import TAG_KIND, Tracker, environment_tags, git_state
from suite.trainer import resolve_device
from suite.ui_view import VIEW_TAG, runs_view


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
        "suite.scale": "exact" if task(m.task).exact else scale_label(loaded.profile) or "paper-protocol",
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


def describe_experiment(inv: Invocation) -> None:
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
