"""The report's text and table pages: the front page (one row per experiment and profile with its verdict), each
section's tables (top-1 per cell, runs per arm, costs), the pipeline checks, and the appendix (environment,
resolved manifests and the commands that reproduce them).

Pages are planned before any is drawn (``PageSpec``: what to draw and under which scale banner), so every footer
can say "page i of N"; tables longer than a page continue on the next with their header repeated.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from datetime import datetime, timezone

import pandas as pd
import yaml
from matplotlib.figure import Figure

from suite.records import PAPER_PROFILE
from suite.report.layout import (MARGIN, PAGE_SIZE, Block, Table, bands, draw_columns, flow_columns, new_page,
                                 text_block)
from suite.claims import FAILS, HOLDS
from suite.report.claims import check_claims
from suite.report.sections import Section
from suite.report.stats import (DASH, EXACT, INCOMPLETE, INCONCLUSIVE, NO_PAPER_NUMBER, NO_TOLERANCE, NOT_REPRODUCED,
                                NOT_TRANSCRIBED, PIPELINE_CHECK, REPRODUCED, SMOKE_ONLY, fmt, format_summary)

PAPER_CITATION = "MBQuant, Zhong et al., arXiv:2305.08117"
REPORT_TITLE = "MBQuant reproducibility suite: report of the tracked runs"
TITLE_SIZE, GAP = 9.5, 0.22  # a table's title line; space after a table, inches
WIDTH = PAGE_SIZE[0] - 2 * MARGIN


@dataclass
class PageSpec:
    """One page to draw: ``draw`` makes its Figure; ``scale`` ("smoke-scale", or "") selects the banner; ``png``
    names the figure's PNG copy (None: not saved)."""

    draw: Callable[[], Figure]
    scale: str = ""
    png: str | None = None


# --------------------------------------------------------------------------------------- tables over pages

def _flow(tables: list[tuple[str, Table]], room: float) -> list[list[tuple[str, Table, range]]]:
    """Place titled tables one below the other, splitting a table where a page ends."""
    title_h = TITLE_SIZE * 1.3 / 72 + 0.05
    pages, left = [[]], room
    for title, table in tables:
        first = table.row_height(table.header, WIDTH, "bold") + (table.row_height(table.rows[0], WIDTH)
                                                                   if table.rows else 0)
        if pages[-1] and left < title_h + first:  # not even its header and first row fit: start a new page
            pages.append([])
            left = room
        chunks = table.split(WIDTH, left - title_h, room - title_h)
        for k, rows in enumerate(chunks):
            if k:
                pages.append([])
                left = room
            pages[-1].append((title + (" (continued)" if k else ""), table, rows))
            left -= title_h + table.height(WIDTH, rows) + GAP
    return pages


BodyDrawer = Callable[[Figure, float, Any], None]  # (figure, top of the body in inches, what to draw)


def _continued(heading: str, subheading: str, caption: str, bodies: list, draw_body: BodyDrawer,
               scale: str = "") -> list[PageSpec]:
    """One page per body under one heading ("continued" from the second on); ``draw_body(fig, top, body)``."""
    def draw(i: int, body) -> Figure:
        page = new_page(heading + (" (continued)" if i else ""), subheading, caption)
        draw_body(page.fig, page.body_top, body)
        return page.fig

    return [PageSpec(lambda i=i, body=body: draw(i, body), scale) for i, body in enumerate(bodies)]


def _draw_tables(fig: Figure, y: float, placed: list[tuple[str, Table, range]]) -> None:
    for title, table, rows in placed:
        if title:
            y = text_block(fig, MARGIN, y, [title], TITLE_SIZE, weight="bold") + 0.05
        y = table.draw(fig, y, WIDTH, rows) + GAP


def table_pages(heading: str, subheading: str, caption: str, tables: list[tuple[str, Table]],
                scale: str = "") -> list[PageSpec]:
    """Pages holding ``tables`` under one heading, split where a page ends."""
    plan = _flow(tables, bands(heading, subheading, caption).room)
    return _continued(heading, subheading, caption, plan, _draw_tables, scale)


# ----------------------------------------------------------------------------------------------- front page

VERDICTS = (f"Verdicts, paper profile, per transcribed paper cell against the tolerance (top-1 points), weighing the "
            f"seeds: \"{REPRODUCED}\": every cell's 95 % interval within it; \"{NOT_REPRODUCED}\": some interval wholly "
            f"outside; \"{INCONCLUSIVE}\": some straddles it, or one seed; \"{INCOMPLETE}\": some cell not run; "
            f"\"{NO_PAPER_NUMBER}\": none transcribed (never estimated); \"{NO_TOLERANCE}\": none in the manifest; "
            f"\"{SMOKE_ONLY}\": shortened profiles only, NOT comparable to the paper; \"{PIPELINE_CHECK}\": too short "
            f"to learn, only shows every arm runs; \"{EXACT}\": costs, the same at every profile. Claim checks: the "
            f"manifest's claims asserted on its own results ({HOLDS}, {FAILS}, {INCONCLUSIVE}); accuracy checks on a "
            f"shortened profile are labelled with its scale. Runs: the (arm, seed) jobs of the newest invocation.")


VERDICT_COLORS = {REPRODUCED: "#1a7f37", EXACT: "#1a7f37", HOLDS: "#1a7f37", NOT_REPRODUCED: "#c62828",
                  FAILS: "#c62828"}


def _experiment_cell(s: Section) -> str:
    verified = "" if s.info["paper_verified"] else " (mapping unverified)"
    return f"{s.manifest} {s.info['versions']}\n{s.info['paper_ref']}{verified}"


def overview_table(sections: list[Section]) -> Table:
    """One row per (manifest, profile); the experiment and its claim only on the first row of a manifest."""
    rows, groups, previous = [], [], None
    for s in sections:
        first = s.manifest != previous
        previous = s.manifest
        tolerance = DASH if s.kind != "train" else ("not set" if pd.isna(s.info["tolerance"])
                                                    else f"±{s.info['tolerance']:g}")
        overrides = len(s.info["overrides"])  # a paper profile run with --set is not quite the paper's protocol
        profile = (s.scale or s.profile) + (f"\nwith {overrides} --set" if overrides else "")
        claims = "".join(f"\n{r.label}" for r in check_claims(s))  # under the verdict: keeps the row short
        rows.append([_experiment_cell(s) if first else "", profile,
                     (s.info["claim"] or "(no claim recorded)") if first else "", s.counts["finished"],
                     s.counts["failed"], s.counts["missing"], tolerance, s.largest_diff, s.verdict + claims])
        groups.append(first)
    header = ["experiment", "profile", "claim it checks", "finished", "failed / unfinished", "missing",
              "tolerance", "largest ours − paper", "verdict; claim checks"]
    return Table(header, rows, [0.19, 0.085, 0.26, 0.065, 0.085, 0.055, 0.06, 0.09, 0.11], size=7,
                 groups=groups, colors=VERDICT_COLORS)


def front_pages(sections: list[Section], header: dict[str, str]) -> list[PageSpec]:
    generated = datetime.now(timezone.utc).isoformat(timespec="seconds")
    profiles = sorted({s.profile for s in sections}, key=lambda p: (p != PAPER_PROFILE, p))
    subheading = " · ".join([f"Generated {generated}", *(f"{k}: {v}" for k, v in header.items()),
                             "Profiles present: " + ", ".join(profiles)])
    caption = VERDICTS + (" Every page of a profile other than \"paper\" is labelled \"<profile>-scale\": its "
                          "accuracies say nothing about the paper's numbers.")
    return table_pages(f"{REPORT_TITLE} — {PAPER_CITATION}", subheading, caption,
                       [("Overview: one row per experiment and profile", overview_table(sections))])



# ------------------------------------------------------------------------------------------- section tables

def summary_rows(section: Section) -> Table:
    cells = format_summary(section.summary)
    return Table(list(cells.columns), cells.values.tolist(), [0.2] + [0.1] * 8, size=8, colors=VERDICT_COLORS)


def _seeds(jobs: pd.DataFrame) -> str:
    return ("seed " if len(jobs) == 1 else "seeds ") + ", ".join(str(s) for s in jobs["seed"]) if len(jobs) else DASH


def runs_table(section: Section) -> Table:
    """Per arm: which seeds finished, which failed / were killed / are running, which are missing."""
    rows = []
    for arm, jobs in section.jobs.groupby("arm", sort=False):
        broken = jobs[jobs["status"].isin(["failed", "killed", "running"])]
        rows.append([arm, jobs["method"].iloc[0], jobs["model"].iloc[0],
                     _seeds(jobs[jobs["status"] == "finished"]),
                     "; ".join(f"seed {r.seed}: {r.status}" for r in broken.itertuples()) or DASH,
                     _seeds(jobs[jobs["status"] == "missing"])])
    return Table(["arm", "method", "model", "finished", "failed / unfinished", "missing (never started)"],
                 rows, [0.24, 0.11, 0.12, 0.15, 0.22, 0.16], size=8)


def _table_note(section: Section) -> str:
    note = "SD over seeds (ddof=1); \"–\" where undefined."
    sources = sorted(set(section.summary.get("paper_source", [])) - {NOT_TRANSCRIBED})
    if sources:
        note += " Paper values from: " + "; ".join(map(str, sources)) + "."
    if "setup" in section.runs and section.runs["setup"].notna().any():
        note += " Setup: " + "; ".join(sorted(section.runs["setup"].dropna().unique())) + "."
    return note


def _with_runs(section: Section, tables: list[tuple[str, Table]], note: str) -> list[PageSpec]:
    """The section's tables, then its runs table where some job did not finish (or ran outside the newest
    plan); when every planned job finished, one sentence says so instead."""
    jobs = section.jobs
    if (jobs["status"] != "finished").any() or not jobs["planned"].all():
        tables = tables + [("Runs: (arm, seed) jobs of the newest invocation", runs_table(section))]
    else:
        note = f"All {len(jobs)} planned (arm, seed) runs finished. " + note
    return table_pages(section.heading, section.subheading, note, tables, section.scale)


def claims_table(section: Section) -> list[tuple[str, Table]]:
    """The section's claim checks with the comparisons that decided them (none when it declares no claim)."""
    results = check_claims(section)
    if not results:
        return []
    rows = [[r.text, r.label.split(": ", 1)[1], r.detail] for r in results]
    return [("Claims, checked on this profile's own results",
             Table(["claim", "verdict", "deciding comparison (headline vs arm)"], rows, [0.36, 0.14, 0.5], size=8,
                   colors=VERDICT_COLORS))]


def section_table_pages(section: Section) -> list[PageSpec]:
    if section.summary.empty:
        return _with_runs(section, claims_table(section),
                          "No run of this experiment and profile finished: there is nothing to compare.")
    return _with_runs(section, [("Top-1 per arm and bit-width", summary_rows(section)), *claims_table(section)],
                      _table_note(section))


def cost_table(section: Section) -> Table:
    costs = section.costs
    storage = costs.drop_duplicates("arm").set_index("arm")[["method", "model", "storage_mib"]]
    bitops = costs.pivot(index="arm", columns="bits", values="bitops") / 1e9
    order = [a for a in section.arms if a in storage.index]
    rows = [[arm, storage.at[arm, "method"], storage.at[arm, "model"], fmt(storage.at[arm, "storage_mib"], ".3f"),
             *(fmt(v, ".3f") for v in bitops.loc[arm])] for arm in order]
    n = len(bitops.columns)
    return Table(["arm", "method", "model", "storage (MiB)", *(f"{b}-bit GBitOPs" for b in bitops.columns)], rows,
                 [0.22, 0.11, 0.12, 0.11] + [0.44 / n] * n, size=8)


COST_NOTE = ("Storage: every tensor needed to serve all listed bit-widths at its stored precision. BitOPs per image: "
             "w_bits × a_bits × MACs over quantized layers; full-precision stem and classifier are excluded here "
             "(32 × 32 per MAC, the same for every method). Measured from the models, not trained.")


def cost_pages(section: Section) -> list[PageSpec]:
    tables = [("Storage and BitOPs per arm", cost_table(section))] if not section.costs.empty else []
    return _with_runs(section, tables + claims_table(section), COST_NOTE)


# ------------------------------------------------------------------------------------------ pipeline checks

def _steps(job, epochs_run: int) -> str:
    per_epoch = getattr(job, "steps_per_epoch", None)  # a param (a string), when the store recorded it
    if not epochs_run:
        return DASH
    if isinstance(per_epoch, str) and per_epoch.isdigit():
        return f"{epochs_run} × {per_epoch} = {epochs_run * int(per_epoch)} steps"
    return f"{epochs_run} full epoch(s)"


def _loss_trend(losses: pd.Series) -> str:
    """Mean training loss over bit-widths, first epoch -> last epoch."""
    if losses.empty:
        return DASH
    if len(losses) == 1:
        return f"{losses.iloc[0]:.3f}"
    return f"{losses.iloc[0]:.3f} → {losses.iloc[-1]:.3f}"


def pipeline_table(section: Section) -> Table:
    hist = section.histories
    rows = []
    for job in section.jobs.itertuples():
        h = hist[hist["run_id"] == job.run_id] if not hist.empty and job.run_id else pd.DataFrame()
        losses = h.groupby("epoch")["train_loss"].mean().dropna() if not h.empty else pd.Series(dtype=float)
        rows.append([job.arm, job.method, job.model, str(job.seed), job.status, _steps(job, len(losses)),
                     _loss_trend(losses)])
    return Table(["arm", "method", "model", "seed", "status", "epochs × steps per epoch",
                  "train loss, first → last epoch (mean over bit-widths)"], rows,
                 [0.22, 0.1, 0.11, 0.05, 0.08, 0.18, 0.26], size=8)


def pipeline_pages(sections: list[Section]) -> list[PageSpec]:
    if not sections:
        return []
    tables = [(f"{s.heading} — {s.manifest} {s.info['versions']}, {s.profile} profile, {s.info['paper_ref']}",
               pipeline_table(s)) for s in sections]
    scales = sorted({s.scale for s in sections if s.scale})
    caption = ("These runs are too short to learn (e.g. the full ImageNet architectures on 32 × 32 digits for a few "
               "steps): their accuracies stay at chance and are not compared with anything. They show that every "
               "arm builds, trains, evaluates and is recorded; the training loss is the mean over bit-widths of the "
               "per-epoch training loss the run logged (a single value: the run had one epoch, so no trend).")
    return table_pages("Pipeline checks: every arm runs end to end (no accuracy comparison)",
                       "Manifests whose profile is marked pipeline_check", caption, tables, ", ".join(scales))


# ------------------------------------------------------------------------------------------------- appendix

def environment_pages(sections: list[Section]) -> list[PageSpec]:
    if all(s.invocation is None for s in sections):
        return []  # runs tables handed in without their invocations: no environment recorded
    rows = []
    for s in sections:
        inv = s.invocation
        if inv is None:
            rows.append([f"{s.manifest} ({s.profile})", *[DASH] * 6])
            continue
        started = datetime.fromtimestamp(inv["start"] / 1000, timezone.utc).strftime("%Y-%m-%d %H:%M")
        dirty = " (dirty)" if inv["git_dirty"] == "true" else ""
        rows.append([f"{s.manifest} ({s.profile})", f"{started} UTC, {inv['status'].lower()}",
                     f"{inv['git_commit'][:12]}{dirty}", f"torch {inv['torch']}, CUDA {inv['cuda']}",
                     f"{inv['gpu']} × {inv['gpu_count']}" if inv["gpu_count"] not in ("0", "unknown") else "none",
                     f"{inv['cpu']} ({inv['cpu_threads']} threads)", f"{inv['python']}, device {inv['device']}"])
    table = Table(["experiment (profile)", "newest invocation", "git commit", "torch, CUDA", "GPU × count", "CPU",
                   "python, device"], rows, [0.22, 0.14, 0.11, 0.15, 0.12, 0.15, 0.11], size=7.5)
    return table_pages("Appendix A — environment", "Where each experiment's newest invocation ran (its parent "
                       "run's tags; every (arm, seed) run of it carries the same).", "",
                       [("", table)])


def _compact_yaml(text: str) -> str:
    """The same YAML with lists of scalars on one line ([2, 4, 6, 8]); the text as it is if it does not parse."""
    try:
        return yaml.safe_dump(yaml.safe_load(text), sort_keys=False, default_flow_style=None, width=200)
    except yaml.YAMLError:
        return text


def manifest_pages(sections: list[Section]) -> list[PageSpec]:
    """Each newest invocation's command and resolved manifest, flowed into two columns."""
    blocks = [Block(f"{s.manifest} — {s.profile} profile",
                    ["# reproduce with:", f"{s.info['command'] or '(no command recorded)'}", "",
                     f"# resolved manifest, from {s.invocation['resolved_from']}:",
                     *_compact_yaml(s.invocation["resolved_yaml"]).rstrip().splitlines()])
              for s in sections if s.invocation is not None]
    if not blocks:
        return []
    heading = "Appendix B — resolved manifests and the commands that reproduce them"
    subheading = ("From each (manifest, profile)'s newest invocation: its suite.command tag and its resolved YAML "
                  "artifact.")
    return _continued(heading, subheading, "", flow_columns(blocks, 2, bands(heading, subheading).room), draw_columns)

