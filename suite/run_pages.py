"""What MLflow's pages say about the suite's runs: the descriptions (MLflow's ``mlflow.note.content``) of an
experiment, of an invocation's parent run and of each child run, and the runs table an experiment opens on.

Every description names what actually ran first (``suite.titles``), then what it shows, then the command that
reproduces it; numbers in descriptions are rounded to two decimals. ``view_columns``: the metrics the runs table
opens on (``suite.ui_view``).
"""
from __future__ import annotations

import math
from typing import Iterable

from suite.manifest import LoadedManifest, Manifest
from suite.titles import honest_title

NOTE = "mlflow.note.content"
PIPELINE_CHECK = ("**Pipeline check, not results**: these runs are too short to learn; they only show that every arm "
                  "runs end to end, and their accuracies compare with nothing.")
COSTS_EXACT = ("Costs are properties of the untrained models: exact at every profile, comparable with the paper's "
               "as they are.")


def number(value) -> str:
    return "–" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.2f}"


def table(header: list[str], rows: Iterable[list]) -> list[str]:
    """A Markdown table, numbers rounded to two decimals."""
    cell = lambda v: number(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else str(v)  # noqa: E731
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header),
            *("| " + " | ".join(map(cell, row)) + " |" for row in rows)]


def bits_header(bits: Iterable[int]) -> list[str]:
    return [f"{b}-bit" for b in bits]


def recipe_text(cfg: Manifest, world_size: int = 1) -> str:
    """The training recipe in one line: "3 epochs x 4 steps, batch 32, lr 0.1, lr_quant 0.01"."""
    r = cfg.recipe
    steps = f"{r.steps_per_epoch} steps" if r.steps_per_epoch else "full epochs"
    processes = f" on {world_size} processes" if world_size > 1 else ""
    return f"{r.epochs} epochs x {steps}, batch {r.batch_size}{processes}, lr {r.lr}, lr_quant {r.lr_quant}"


def experiment_note(loaded: LoadedManifest, invocations: list[dict[str, str]]) -> str:
    """The experiment's description: what ran, the claim it checks, and per profile that ran here (the newest
    invocation of each, from their tags) its scale and the exact command that reproduces it."""
    m = loaded.manifest
    lines = [honest_title(loaded), ""]  # plain: MLflow's experiments list shows the first line unrendered
    if m.claim:
        lines += [f"Claim ({m.paper.ref or 'this manifest'}): {m.claim}", ""]
    if m.pipeline_check:
        lines += [PIPELINE_CHECK, ""]
    if m.task == "costs":
        lines += [COSTS_EXACT, ""]
    lines += ["Runs here, newest invocation per profile:", ""]
    lines += table(["profile", "scale", "reproduce"], [[t.get("suite.profile", "?"), t.get("suite.scale", "?"),
                                                       f"`{t.get('suite.command', '?')}`"] for t in invocations])
    shown = "storage (MiB) and BitOPs per image" if m.task == "costs" else "final top-1 (%) per bit-width"
    lines += ["", f"The runs table shows each arm's {shown}; each invocation's parent run summarizes its arms."]
    return "\n".join(lines)


def invocation_note(loaded: LoadedManifest, scale: str, top1: dict[str, dict[int, float]], seeds: int) -> str:
    """A training invocation's parent description: per arm, final top-1 per bit-width (mean over its seeds)."""
    bits = sorted({b for row in top1.values() for b in row})
    lines = [f"**{honest_title(loaded)}**", ""]
    if loaded.manifest.pipeline_check:
        lines += [PIPELINE_CHECK, ""]
    lines += [f"Final top-1 (%) per arm, mean over {seeds} seed(s), profile {loaded.profile} ({scale}):", ""]
    lines += table(["arm", *bits_header(bits)], [[arm, *(row.get(b) for b in bits)] for arm, row in top1.items()])
    lines += ["", f"Reproduce: `{loaded.command}`"]
    return "\n".join(lines)


def costs_note(loaded: LoadedManifest, storage: dict[str, float], gbitops: dict[str, dict[int, float]]) -> str:
    """A costs invocation's parent description: per arm, storage and BitOPs per image at every bit-width."""
    bits = sorted({b for row in gbitops.values() for b in row})
    lines = [f"**{honest_title(loaded)}**", "", COSTS_EXACT, "",
             "Storage to serve every bit-width (MiB) and BitOPs per image (G; quantized layers):", ""]
    lines += table(["arm", "storage (MiB)", *(f"{b}-bit GBitOPs" for b in bits)],
                   [[arm, storage[arm], *(gbitops[arm].get(b) for b in bits)] for arm in storage])
    lines += ["", "Each arm's child run holds the exact counts (bits by component, MACs, BitOPs).", "",
              f"Reproduce: `{loaded.command}`"]
    return "\n".join(lines)


def child_note(loaded: LoadedManifest, arm: str, seed: int | None, cfg: Manifest, what: str,
               top1: dict[int, float] | None = None, best_step: int | None = None) -> str:
    """A child run's description: what ran (the honest title, the arm, its method and the recipe ``what``), its
    final top-1 once known, where its curves are, and the command that reproduces it alone."""
    run = f"arm **{arm}**" + (f", seed {seed}" if seed is not None else "")
    lines = [f"**{honest_title(loaded)}**", "",
             f"{run}: method {cfg.method.name}, bits {', '.join(map(str, cfg.method.bits))}; {what}.", ""]
    if loaded.manifest.pipeline_check:
        lines += [PIPELINE_CHECK, ""]
    if top1:
        when = f" (best epoch: step {best_step} of the curves)" if best_step is not None else ""
        lines += [f"Final top-1 (%){when}:", "", *table(bits_header(sorted(top1)), [[top1[b] for b in sorted(top1)]]),
                  ""]
    if loaded.manifest.task == "train":
        lines += ["Per-epoch curves: the Model metrics tab (sections accuracy and loss).", ""]
    alone = f" --arm {arm}" + (f" --seed {seed}" if seed is not None else "")
    lines += [f"Reproduce: `{loaded.command}{alone}`"]
    return "\n".join(lines)


def view_columns(loaded: LoadedManifest) -> list[str]:
    """The metrics the runs table shows: final top-1 per bit-width, or for costs storage and BitOPs."""
    bits = sorted({b for arm in loaded.arms for b in arm.config.method.bits})
    if loaded.manifest.task == "costs":
        return ["storage_mib", *(f"bitops_b{b}" for b in bits)]
    return [f"final_top1_b{b}" for b in bits]
