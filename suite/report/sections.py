"""The report's sections: one per (manifest, profile), assembled from the collected tables.

A section knows what it checks (title, paper reference, claim, tolerance, command: from its newest invocation,
else from its runs), which (arm, seed) jobs were planned and how each ended, its finished runs' numbers, its
per-epoch histories and its costs. Its kind decides its pages: ``train`` (accuracy comparison), ``costs``
(storage and BitOPs only), ``pipeline`` (runs too short to learn: no accuracy comparison).
"""
from __future__ import annotations

import shlex
from dataclasses import dataclass, field
from functools import cached_property
from itertools import pairwise

import pandas as pd
import yaml

from suite.manifest import apply_overrides
from suite.records import PAPER_PROFILE, scale_label
from suite.report.stats import (job_status, reference_arm, reference_frame, section_verdict, status_counts,
                                summary_table)

EMPTY = pd.DataFrame()
RECORD_COLUMNS = ["arm", "seed", "status", "run_id", "method", "model"]  # what a section needs of each tracked run


@dataclass
class Section:
    manifest: str
    profile: str
    kind: str  # "train", "costs" or "pipeline"
    info: dict  # title, paper_ref, paper_verified, claim, tolerance, command, versions
    arms: dict[str, str]  # arm -> method, in the manifest's order
    runs: pd.DataFrame  # finished runs, one row per (run, bits)
    jobs: pd.DataFrame  # one row per (arm, seed): planned, status, run_id, method, model
    summary: pd.DataFrame  # summary_table rows of this section, in arm order
    costs: pd.DataFrame = field(default_factory=pd.DataFrame)
    histories: pd.DataFrame = field(default_factory=pd.DataFrame)  # run_id, bits, epoch, val_top1, train_loss
    invocation: dict | None = None
    verdict: str = ""
    largest_diff: str = ""
    counts: dict = field(default_factory=dict)  # front-page strings: finished, failed, missing

    @property
    def scale(self) -> str:
        """The banner of a shortened profile's pages; none for costs, which no profile shortens."""
        return "" if self.kind == "costs" else scale_label(self.profile)

    @property
    def models(self) -> list[str]:
        """Architectures in the order their first arm appears."""
        return list(dict.fromkeys(self.jobs["model"])) if not self.jobs.empty else []

    def arms_of(self, model: str) -> dict[str, str]:
        models = self.jobs.drop_duplicates("arm").set_index("arm")["model"]
        return {a: m for a, m in self.arms.items() if models.get(a) == model}

    @cached_property
    def manifest_doc(self) -> dict:
        """The newest invocation's resolved manifest, parsed once (empty for an older record)."""
        return resolved_manifest(self.invocation)

    def headline_of(self, model: str) -> str:
        """The arm of ``model`` every other is compared with: the manifest's ``headline``, or the arm of its method
        for another model; without one, the first MBQuant arm, else the first arm."""
        arms = self.arms_of(model)
        headline = self.manifest_doc.get("headline")
        if headline in arms:
            return headline
        same_method = [a for a, m in arms.items() if headline in self.arms and m == self.arms[headline]]
        return same_method[0] if same_method else reference_arm(arms)

    @property
    def heading(self) -> str:
        return self.info["title"]

    @property
    def subheading(self) -> str:
        """Which manifest (version), profile, scale and --set overrides; the paper reference; the claim."""
        scale = f", {self.scale}: not comparable to the paper" if self.scale else ""
        overrides = self.info.get("overrides")
        overrides = f", run with --set {', '.join(overrides)}" if overrides else ""
        verified = "" if self.info["paper_verified"] else " (mapping to the paper not yet verified)"
        claim = f" · Claim checked: {self.info['claim']}" if self.info.get("claim") else ""
        return (f"{self.manifest} {self.info['versions']} — {self.profile} profile{scale}{overrides} · "
                f"Paper: {self.info['paper_ref']}{verified}{claim}")


def _overrides(command: str) -> list[str]:
    """The ``--set KEY=VALUE`` overrides in a reproducing command: what the profile did not fix."""
    try:
        words = shlex.split(command)
    except ValueError:
        return []
    return [value for flag, value in pairwise(words) if flag == "--set"]


def resolved_manifest(invocation: dict | None) -> dict:
    """An invocation's resolved manifest as a mapping; empty for an older or hand-made record without one."""
    if invocation is None or not str(invocation.get("resolved_from", "")).startswith("artifact"):
        return {}
    try:
        doc = yaml.safe_load(invocation["resolved_yaml"])
    except yaml.YAMLError:
        return {}
    return doc if isinstance(doc, dict) else {}


def arm_specs(invocation: dict | None) -> dict[str, tuple[str, str]]:
    """arm -> (method, model) from an invocation's resolved manifest: known even for an arm that never ran."""
    doc = resolved_manifest(invocation)
    try:
        specs = {}
        for arm in doc.get("arms") or []:
            resolved = apply_overrides(doc, arm.get("set") or {})
            specs[arm["name"]] = (resolved["method"]["name"], resolved["model"]["arch"])
        return specs
    except (KeyError, TypeError, AttributeError):  # an older or hand-made record: runs only
        return {}


def _info(invocation: dict | None, rows: pd.DataFrame) -> dict:
    """What a section checks: its newest invocation's tags, else its runs' columns."""
    versions = sorted({int(v) for v in rows["manifest_version"].dropna()}) if "manifest_version" in rows else []
    if invocation is not None:
        versions = sorted(set(versions) | {int(invocation["manifest_version"])})
        source = invocation
    else:
        first = rows.iloc[0]
        source = {k: first.get(k, "") for k in ("title", "paper_ref", "paper_verified", "tolerance")}
        source["tolerance"] = float(first["tolerance"]) if "tolerance" in rows else float("nan")
    return {"title": source["title"], "paper_ref": source["paper_ref"],
            "paper_verified": bool(source["paper_verified"]),
            "claim": source.get("claim", ""), "tolerance": source["tolerance"], "command": source.get("command", ""),
            "overrides": _overrides(source.get("command", "")),
            "versions": ", ".join(f"v{v}" for v in versions) or "v?"}


def _kind(invocation: dict | None, rows: pd.DataFrame, costs: pd.DataFrame, recorded: pd.DataFrame) -> str:
    flags = [invocation["pipeline_check"]] if invocation is not None else []
    flags += [bool(v) for frame in (rows, recorded) if "pipeline_check" in frame for v in frame["pipeline_check"]]
    if any(flags):
        return "pipeline"
    costly = (invocation is not None and invocation["task"] == "costs") or not costs.empty
    return "costs" if costly or ("kind" in recorded and (recorded["kind"] == "cost-run").any()) else "train"


def _recorded(children: pd.DataFrame, rows: pd.DataFrame, costs: pd.DataFrame) -> pd.DataFrame:
    """Every tracked run of a section, newest first; without a children table, its finished runs (none at all for
    an invocation that stopped before its first run)."""
    if not children.empty:
        return children
    finished = pd.concat([f for f in (rows, costs) if not f.empty] or [pd.DataFrame(columns=RECORD_COLUMNS)])
    return finished.drop_duplicates("run_id").assign(status="FINISHED")[RECORD_COLUMNS]


def _arm_order(planned: list, jobs: pd.DataFrame) -> dict[str, str]:
    """arm -> method in the manifest's order (its plan), else grouped by model, then alphabetical."""
    arms = [a for a, _ in planned] or list(jobs.sort_values(["model", "arm"])["arm"])
    methods = jobs.drop_duplicates("arm").set_index("arm")["method"]
    return {a: methods[a] for a in dict.fromkeys(arms + list(jobs["arm"]))}


def _select(frame: pd.DataFrame, manifest: str, profile: str) -> pd.DataFrame:
    if frame is None or frame.empty:
        return EMPTY
    return frame[(frame["manifest"] == manifest) & (frame["profile"] == profile)]


def _histories(histories: pd.DataFrame, jobs: pd.DataFrame) -> pd.DataFrame:
    if histories is None or histories.empty:
        return EMPTY
    keys = jobs[jobs["run_id"] != ""][["run_id", "arm", "seed", "method", "model", "status"]]
    return histories.merge(keys, on="run_id")


def _section(manifest: str, profile: str, tables: dict[str, pd.DataFrame | None], reference) -> Section:
    """One (manifest, profile) from the collected tables (runs, costs, children, invocations, histories)."""
    rows, costs = _select(tables["runs"], manifest, profile), _select(tables["costs"], manifest, profile)
    inv = _select(tables["invocations"], manifest, profile)
    inv = inv.iloc[0].to_dict() if not inv.empty else None
    recorded = _recorded(_select(tables["children"], manifest, profile), rows, costs)
    planned = list(inv["jobs"]) if inv is not None and len(inv["jobs"]) else []
    jobs = job_status(planned or recorded[["arm", "seed"]].drop_duplicates().values.tolist(), recorded,
                      arm_specs(inv))
    arms = _arm_order(planned, jobs)
    info = _info(inv, rows if not rows.empty else (costs if not costs.empty else recorded))
    # Cells are judged against the section's tolerance: its newest invocation's, which may postdate the runs.
    summary = summary_table(rows.assign(tolerance=info["tolerance"]), reference) if not rows.empty else EMPTY
    if not summary.empty:
        rank = {a: i for i, a in enumerate(arms)}
        summary = summary.sort_values("arm", key=lambda col: col.map(rank), kind="stable")
    return Section(manifest, profile, _kind(inv, rows, costs, recorded), info, arms, rows, jobs, summary, costs,
                   _histories(tables["histories"], jobs), inv)


def _judge(section: Section, reference: pd.DataFrame, paper_profile_ran: bool) -> None:
    """The front-page verdict, largest difference to the paper and run counts of a section."""
    columns = ["arm", "bits", "top1_mean", "top1_half"]
    measured = section.summary[columns] if not section.summary.empty else pd.DataFrame(columns=columns)
    cells = reference[reference["manifest"] == section.manifest].merge(measured, on=["arm", "bits"], how="left")
    cells[["top1_mean", "top1_half"]] = cells[["top1_mean", "top1_half"]].astype(float)
    section.verdict, section.largest_diff = section_verdict(
        section.profile, section.kind, section.info["tolerance"], cells, paper_profile_ran)
    section.counts = status_counts(section.jobs)


def build_sections(runs: pd.DataFrame, reference: pd.DataFrame | None = None, *, costs: pd.DataFrame | None = None,
                   children: pd.DataFrame | None = None, invocations: pd.DataFrame | None = None,
                   histories: pd.DataFrame | None = None) -> list[Section]:
    """Sections in report order (by manifest, the paper profile first), each with its front-page verdict."""
    tables = {"runs": runs, "costs": costs, "children": children, "invocations": invocations, "histories": histories}
    frames = [f for f in (runs, costs, children, invocations) if f is not None and not f.empty]
    keys = pd.concat([f[["manifest", "profile"]] for f in frames]).drop_duplicates() if frames else EMPTY
    order = sorted(keys.itertuples(index=False), key=lambda k: (k.manifest, k.profile != PAPER_PROFILE, k.profile))
    sections = [_section(manifest, profile, tables, reference) for manifest, profile in order]
    ref, profiles = reference_frame(reference), {(s.manifest, s.profile) for s in sections}
    for s in sections:
        _judge(s, ref, (s.manifest, PAPER_PROFILE) in profiles)
    return sections
