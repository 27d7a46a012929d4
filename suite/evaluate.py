"""The evaluate task's front: a released checkpoint as a ``task: evaluate`` manifest, and its printed result.

The runner runs the manifest like any other (CLI ``python -m suite import-checkpoint``); the checkpoint itself is
read through ``suite.release``.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping

from suite.checkpoints import sha256_file
from suite.data import NUM_CLASSES
from suite.paths import to_identifier
from suite.release.names import RELEASE_DATASETS, RELEASE_MODELS, RELEASE_SLOTS, SETTINGS, InteropError, lookup

EXPERIMENT = "release-checkpoints"  # MLflow experiment of imported-checkpoint evaluations


def checkpoint_manifest(path: str | os.PathLike, *, model: str = "resnet20", dataset: str = "cifar100",
                        setting: str = "2468", data_root: str | None = None,
                        data_overrides: Mapping[str, Any] | None = None, eval_batch_size: int = 256,
                        device: str = "auto", trusted: bool = False) -> tuple[dict, str]:
    """A ``task: evaluate`` manifest for one released checkpoint, and the profile to run it at.

    The runs go to the MLflow experiment ``release-checkpoints`` as manifest ``release_<dataset>_<model>_<setting>``,
    arm ``<file name> (<sha256[:8]>)``, seed 0; profile ``paper`` on a release dataset's full validation split,
    ``smoke`` otherwise (digits demo, val_limit). ``suite.collect.load_runs`` and the report pick them up like
    any trained run.
    """
    lookup(RELEASE_MODELS, model, "model")
    lookup(NUM_CLASSES, dataset, "dataset")
    bits, selection = lookup(SETTINGS, setting, "setting")
    path = Path(path).resolve()
    if not path.is_file():
        raise InteropError(f"checkpoint not found: {path}")
    data: dict[str, Any] = {"dataset": dataset} | ({"root": str(data_root)} if data_root is not None else {})
    for dotted, value in (data_overrides or {}).items():
        if not dotted.startswith("data.") or dotted.count(".") != 1:
            raise InteropError(f"--set {dotted}: import-checkpoint only takes data.* overrides "
                               f"(e.g. data.val_limit=500)")
        if dotted == "data.dataset":
            raise InteropError("set the dataset with --dataset, not --set data.dataset")
        data[dotted.split(".", 1)[1]] = value
    digest = sha256_file(path)
    doc = {
        "name": f"release_{dataset}_{model}_{setting}", "version": 1, "task": "evaluate", "experiment": EXPERIMENT,
        "title": f"Released MBQuant checkpoint: {dataset} {model}, {'-'.join(map(str, bits))} bits",
        "paper": {"ref": "release checkpoint", "verified": False},
        "data": data, "model": {"arch": model},
        "method": {"name": "mbquant", "bits": bits,
                   "options": {"selection": selection, "variant": "release", "branches": RELEASE_SLOTS}},
        "recipe": {"batch_size": eval_batch_size, "eval_batch_size": eval_batch_size, "device": device},
        "checkpoint": {"path": str(path), "sha256": digest, "trusted": trusted},
        "seeds": [0], "arms": [{"name": f"{to_identifier(path.name, 48)}-{digest[:8]}"}],
        "profiles": {"paper": {}, "smoke": {}},
    }
    full = dataset in RELEASE_DATASETS and data.get("val_limit") is None
    return doc, "paper" if full else "smoke"


def format_results(results: dict[int, tuple[float, float]], stored: Mapping[int, float] | None = None) -> str:
    """The printed table: one line per bit-width (and the checkpoint's own stored acc1 where it has one)."""
    stored = stored or {}
    lines = [f"{'bits':>4}  {'top-1 %':>8}  {'top-5 %':>8}" + ("  checkpoint acc1 %" if stored else "")]
    for b, (t1, t5) in sorted(results.items()):
        lines.append(f"{b:>4}  {t1:>8.2f}  {t5:>8.2f}" + (f"  {stored[b]:>17.2f}" if stored else ""))
    return "\n".join(lines)


