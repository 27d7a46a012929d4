"""The numbers the report shows, computed from the runs table without drawing anything: the per-cell summary
(mean, SD, n seeds, paper value, difference, cell verdict), paired differences between arms with their 95 %
intervals, and the verdict of a whole (manifest, profile) on the front page.

A cell is judged as an equivalence test would judge it: "reproduced" when the 95 % interval of the reproduced mean
(Student t over the seeds) lies within the manifest's tolerance of the paper's value, "not reproduced" when it lies
wholly outside, "inconclusive" otherwise -- and always with a single seed, which has no interval.

Published numbers come only from the ``reference`` frame; a missing one reads "not transcribed" and no number
is ever estimated. A difference to the paper is only computed for the paper profile.
"""
from __future__ import annotations

import numpy as np
import pandas as pd
from scipy import stats

from suite.records import PAPER_PROFILE, RUN_COLUMNS, scale_label

NOT_TRANSCRIBED = "not transcribed"
DASH = "–"
REQUIRED_COLUMNS = RUN_COLUMNS[:RUN_COLUMNS.index("run_id") + 1]  # what a runs table must have to be reported
REFERENCE_COLUMNS = ("manifest", "arm", "bits", "top1", "source")
KEYS = ["manifest", "profile", "arm", "bits"]
CONFIDENCE = 0.95

# Front-page verdicts of one (manifest, profile).
REPRODUCED, NOT_REPRODUCED, INCONCLUSIVE = "reproduced", "not reproduced", "inconclusive"
NO_PAPER_NUMBER = "no paper number"
SMOKE_ONLY, PIPELINE_CHECK, NO_TOLERANCE, INCOMPLETE = "smoke only", "pipeline check", "no tolerance set", "incomplete"
EXACT = "exact"  # costs: computed from each model's tensors, the same at every profile


# ---------------------------------------------------------------------------------------------- input checks

def check_runs(runs: pd.DataFrame | None, source: str | None = None) -> None:
    """Fail before anything is written: empty input, missing columns, or one seed counted twice."""
    if runs is None or runs.empty:
        raise ValueError(f"no finished runs found in {source or 'the runs table'}; nothing to report")
    missing = [c for c in REQUIRED_COLUMNS if c not in runs.columns]
    if missing:
        raise ValueError(f"runs table lacks columns {missing}")
    # Two finished runs of the same seed would be double-counted in the mean and the SD; the caller must pick one.
    dup = runs.duplicated(KEYS + ["seed"], keep=False)
    if dup.any():
        rows = runs.loc[dup, KEYS + ["seed", "run_id"]].to_string(index=False)
        raise ValueError(f"several runs for the same (manifest, profile, arm, bits, seed); keep one each:\n{rows}")


def reference_frame(reference: pd.DataFrame | None) -> pd.DataFrame:
    """Published numbers keyed by (manifest, arm, bits) as paper_top1 / paper_source; empty when none."""
    if reference is None or reference.empty:
        return pd.DataFrame(columns=["manifest", "arm", "bits", "paper_top1", "paper_source"])
    missing = [c for c in REFERENCE_COLUMNS if c not in reference.columns]
    if missing:
        raise ValueError(f"reference table lacks columns {missing}")
    ref = reference.loc[:, list(REFERENCE_COLUMNS)].rename(columns={"top1": "paper_top1", "source": "paper_source"})
    ref["bits"] = ref["bits"].astype(int)  # a CSV may hand bits back as floats
    ref["paper_top1"] = ref["paper_top1"].astype(float)
    dup = ref.duplicated(["manifest", "arm", "bits"], keep=False)
    if dup.any():
        raise ValueError(f"reference lists some (manifest, arm, bits) twice:\n{ref[dup].to_string(index=False)}")
    return ref


# ------------------------------------------------------------------------------------------------- the table

def summary_table(runs: pd.DataFrame, reference: pd.DataFrame | None = None) -> pd.DataFrame:
    """Per (manifest, profile, arm, bits): n seeds, mean and SD of top-1, mean top-5, and the paper's top-1.

    Numbers stay numeric (NaN where undefined: SD of one seed, no paper value); ``format_summary`` turns them
    into the strings shown in the report. ``paper_source`` is the reference's source or "not transcribed".
    ``diff_top1`` (ours minus paper) is only filled for the paper profile: a smoke-scale difference means nothing.
    """
    table = (
        runs.groupby(KEYS, sort=True)
        .agg(
            n_seeds=("seed", "nunique"),
            top1_mean=("top1", "mean"),
            top1_std=("top1", "std"),  # ddof=1
            top5_mean=("top5", "mean"),
        )
        .reset_index()
    )
    table["top1_half"] = half_interval(table["top1_std"], table["n_seeds"])
    # Rows of one architecture together (a section may hold several), arms alphabetical within it.
    table = table.merge(runs.groupby(["manifest", "arm"], as_index=False)["model"].first(), on=["manifest", "arm"])
    table = table.sort_values(["manifest", "profile", "model", "arm", "bits"], ignore_index=True)
    table = table.merge(reference_frame(reference), on=["manifest", "arm", "bits"], how="left")
    table["paper_top1"] = table["paper_top1"].astype(float)
    table["paper_source"] = table["paper_source"].where(table["paper_top1"].notna(), NOT_TRANSCRIBED)
    is_paper = table["profile"] == PAPER_PROFILE
    table["diff_top1"] = (table["top1_mean"] - table["paper_top1"]).where(is_paper)
    # Verdict against the manifest's tolerance (top-1 points), only where a paper-protocol run meets a paper value.
    tolerance = runs.groupby(["manifest", "profile"])["tolerance"].first() if "tolerance" in runs else None
    table["verdict"] = [
        DASH if pd.isna(r.diff_top1) else
        "no tolerance" if tolerance is None or pd.isna(tolerance[r.manifest, r.profile]) else
        cell_verdict(r.diff_top1, r.top1_half, tolerance[r.manifest, r.profile])
        for r in table.itertuples()
    ]
    return table


def half_interval(std: pd.Series, n: pd.Series) -> pd.Series:
    """Half-width of the 95 % confidence interval of a mean over ``n`` seeds (NaN for one seed)."""
    n = n.astype(float)
    t = pd.Series(stats.t.ppf((1 + CONFIDENCE) / 2, (n - 1).where(n > 1)), index=n.index)
    return t * std / np.sqrt(n)


def cell_verdict(diff: float, half: float, tolerance: float) -> str:
    """Reproduced mean minus paper value ``diff`` with its interval's half-width, against the tolerance."""
    if pd.isna(half):
        return INCONCLUSIVE  # one seed: no interval to weigh
    if abs(diff) + half <= tolerance:
        return REPRODUCED
    if abs(diff) - half > tolerance:
        return NOT_REPRODUCED
    return INCONCLUSIVE


def fmt(value: float, spec: str = ".2f") -> str:
    return DASH if pd.isna(value) else format(value, spec)


def format_summary(table: pd.DataFrame) -> pd.DataFrame:
    """Display strings for rows of ``summary_table``: "–" for an undefined SD, "not transcribed" for no paper value."""
    def diff(row) -> str:
        if pd.isna(row.paper_top1):
            return DASH
        if row.profile != PAPER_PROFILE:
            return f"n/a ({scale_label(row.profile)})"
        return fmt(row.diff_top1, "+.2f")

    return pd.DataFrame({
        "arm": table["arm"].astype(str),
        "bits": table["bits"].astype(str),
        "n seeds": table["n_seeds"].astype(str),
        "top-1 mean (%)": table["top1_mean"].map(fmt),
        "top-1 SD": table["top1_std"].map(fmt),
        "top-5 mean (%)": table["top5_mean"].map(fmt),
        "paper top-1 (%)": [NOT_TRANSCRIBED if pd.isna(v) else fmt(v) for v in table["paper_top1"]],
        "ours − paper": [diff(r) for r in table.itertuples()],
        "verdict": table["verdict"].astype(str),
    }).reset_index(drop=True)


# ------------------------------------------------------------------------------------- differences between arms

def reference_arm(arm_methods: dict[str, str]) -> str:
    """The arm the others are compared with: the first MBQuant arm (in the manifest's order), else the first arm.
    In an ablation every arm is MBQuant, and the first is the paper's full method."""
    return next((a for a, m in arm_methods.items() if m == "mbquant"), next(iter(arm_methods)))


def paired_differences(runs: pd.DataFrame, reference: str, others: list[str]) -> pd.DataFrame:
    """Per (other arm, bits): top-1 of ``reference`` minus the other arm, paired by seed over their common seeds.

    Columns: arm, bits, n (common seeds), mean, low, high. The interval is the 95 % confidence interval of the mean
    paired difference (Student t with n - 1 degrees of freedom); NaN where n = 1 (no interval can be drawn).
    """
    wide = runs.pivot_table(index=["bits", "seed"], columns="arm", values="top1")
    rows = []
    for arm in others:
        if arm not in wide or reference not in wide:
            continue
        d = (wide[reference] - wide[arm]).dropna()
        for b, values in d.groupby(level="bits"):
            n, mean = len(values), float(values.mean())
            half = (stats.t.ppf((1 + CONFIDENCE) / 2, n - 1) * values.std(ddof=1) / np.sqrt(n)) if n > 1 else np.nan
            rows.append({"arm": arm, "bits": int(b), "n": n, "mean": mean, "low": mean - half, "high": mean + half})
    return pd.DataFrame(rows, columns=["arm", "bits", "n", "mean", "low", "high"])


# --------------------------------------------------------------------------------------- runs: finished or not

JOB_EXTRAS = ("epochs", "steps_per_epoch", "reused_from")  # carried from a job's run when the store has them
STATUS_NAMES = {"FINISHED": "finished", "FAILED": "failed", "KILLED": "killed", "RUNNING": "running",
                "SCHEDULED": "running"}


def job_status(planned: list[tuple[str, int]], recorded: pd.DataFrame,
               specs: dict[str, tuple[str, str]] | None = None) -> pd.DataFrame:
    """One row per (arm, seed): the planned jobs in their order, then finished runs outside the plan.

    ``recorded`` has one row per tracked run (arm, seed, status, run_id, method, model), newest first. A job is
    "finished" when any of its runs finished, else its newest run's status ("failed", "killed", "running"),
    else "missing" (planned, never started). ``specs`` (arm -> (method, model), from the resolved manifest)
    names the method and model of an arm none of whose runs started.
    """
    recorded = recorded.assign(status=recorded["status"].map(STATUS_NAMES).fillna(recorded["status"].str.lower()))
    finished = recorded[recorded["status"] == "finished"]
    best = pd.concat([finished, recorded]).drop_duplicates(["arm", "seed"])  # a finished run first, else the newest
    jobs = list(dict.fromkeys([(a, int(s)) for a, s in planned]))
    extra = [(a, int(s)) for a, s in finished[["arm", "seed"]].itertuples(index=False) if (a, int(s)) not in jobs]
    arm_info = pd.DataFrame.from_dict(specs or {}, orient="index", columns=["method", "model"])
    arm_info = pd.concat([recorded.drop_duplicates("arm").set_index("arm")[["method", "model"]], arm_info])
    arm_info = arm_info[~arm_info.index.duplicated()]
    extras = [c for c in JOB_EXTRAS if c in recorded]
    rows = []
    for arm, seed in jobs + list(dict.fromkeys(extra)):
        hit = best[(best["arm"] == arm) & (best["seed"] == seed)]
        run = hit.iloc[0].to_dict() if len(hit) else {"status": "missing", "run_id": ""}
        rows.append({"arm": arm, "seed": seed, "planned": (arm, seed) in jobs, "status": run["status"],
                     "run_id": run["run_id"], "method": arm_info["method"].get(arm, DASH),
                     "model": arm_info["model"].get(arm, DASH), **{c: run.get(c) for c in extras}})
    return pd.DataFrame(rows, columns=["arm", "seed", "planned", "status", "run_id", "method", "model", *extras])


def status_counts(jobs: pd.DataFrame) -> dict[str, str]:
    """Front-page strings: finished (of planned), failed or unfinished (saying which), missing."""
    planned = jobs[jobs["planned"]]
    counts = jobs["status"].value_counts()
    finished = f"{int((planned['status'] == 'finished').sum())} of {len(planned)}"
    extra = int((~jobs["planned"]).sum())
    if extra:
        finished += f" (+{extra} outside the newest plan)"
    broken = {s: int(counts.get(s, 0)) for s in ("failed", "killed", "running")}
    failed = ", ".join(f"{n} {s}" for s, n in broken.items() if n) or "0"
    return {"finished": finished, "failed": failed, "missing": str(int(counts.get("missing", 0)))}


# ---------------------------------------------------------------------------------------------------- verdicts

def section_verdict(profile: str, kind: str, tolerance: float, cells: pd.DataFrame,
                    paper_profile_ran: bool) -> tuple[str, str]:
    """The front-page verdict of one (manifest, profile) and its largest |ours − paper| (a display string).

    ``cells`` holds the manifest's transcribed paper cells (arm, bits, paper_top1) with this profile's
    reproduced mean ``top1_mean`` and its interval's half-width ``top1_half`` (NaN where no run finished).
    "not reproduced": some cell's interval wholly outside the tolerance; "incomplete": none, but some cell has no
    finished run; "inconclusive": some cell's interval straddles the tolerance (or one seed only); "reproduced":
    every cell's interval within it. "no paper number": nothing transcribed; "no tolerance set": the manifest gives
    none; "smoke only" for another profile ("see the paper row" when the paper profile ran too), "pipeline check"
    for runs too short to learn (``kind`` "pipeline"), "exact" for costs (``kind`` "costs"), which no profile
    shortens.
    """
    if kind == "pipeline":
        return PIPELINE_CHECK, DASH
    if kind == "costs":
        return EXACT, DASH
    if profile != PAPER_PROFILE:
        return ("see the paper row" if paper_profile_ran else SMOKE_ONLY), DASH
    if cells.empty:
        return NO_PAPER_NUMBER, DASH
    diff = cells["top1_mean"] - cells["paper_top1"]
    measured = diff.dropna()
    largest = DASH
    if not measured.empty:
        worst = cells.loc[measured.abs().idxmax()]
        largest = f"{measured.loc[worst.name]:+.2f} ({worst['arm']}, {int(worst['bits'])}-bit)"
    if pd.isna(tolerance):
        return NO_TOLERANCE, largest
    verdicts = {cell_verdict(d, cells.loc[i, "top1_half"], tolerance) for i, d in measured.items()}
    if NOT_REPRODUCED in verdicts:
        return NOT_REPRODUCED, largest
    if len(measured) < len(cells):
        return f"{INCOMPLETE} ({len(measured)} of {len(cells)} paper cells measured)", largest
    return (INCONCLUSIVE if INCONCLUSIVE in verdicts else REPRODUCED), largest
