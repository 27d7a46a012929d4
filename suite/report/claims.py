"""A section's claims checked against its own results (``suite.claims`` declares them): holds, fails or
inconclusive, each with the comparison that decided it.

Costs are exact at any profile, and a switching error is a measurement of the trained models at hand: both get
real verdicts from any profile (the latter names the profile its models were trained at). An accuracy claim on a
shortened profile is a check at that scale, and says so; on a pipeline-check profile it is not checked at all.
"""
from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

from suite.claims import FAILS, HOLDS, INCONCLUSIVE, SHORT, Claim
from suite.report.sections import Section
from suite.report.stats import paired_differences


@dataclass
class ClaimResult:
    check: str  # what is checked, in a word or two
    text: str  # the claim in words
    verdict: str  # holds, fails, inconclusive
    detail: str  # the comparison that decided it
    scale: str = ""  # a shortened profile's label, for accuracy claims
    arm: str = ""  # the arm that makes the claim, where the manifest names one (e.g. one variant of a method)

    @property
    def label(self) -> str:
        who = f" ({self.arm})" if self.arm else ""
        return f"{self.check}{who}: {self.verdict}" + (f" ({self.scale} check)" if self.scale else "")


def declared(section: Section) -> list[Claim]:
    """The claims of the section's newest invocation (its resolved manifest)."""
    try:
        return [Claim(**c) for c in section.manifest_doc.get("claims") or []]
    except (TypeError, ValueError):  # an older or hand-made record: nothing to check
        return []


def _compared(section: Section, model: str, claim: Claim) -> tuple[str, list[str]]:
    """The headline arm of ``model`` and the arms it is compared with (``against`` names arms or methods)."""
    arms = section.arms_of(model)
    head = claim.arm if claim.arm in arms else section.headline_of(model)
    others = [a for a, m in arms.items() if a != head and (not claim.against or a in claim.against or
                                                             m in claim.against)]
    return head, others


def _join(results: list[tuple[str, str]]) -> tuple[str, str]:
    """Per-comparison (verdict, detail) -> one: fails if any fails, holds if all hold, else inconclusive."""
    if not results:
        return INCONCLUSIVE, "nothing to compare: no measured arm"
    verdicts = [v for v, _ in results]
    worst = FAILS if FAILS in verdicts else INCONCLUSIVE if INCONCLUSIVE in verdicts else HOLDS
    return worst, "; ".join(d for v, d in results if v == worst)


def _costs(section: Section, claim: Claim) -> list[tuple[str, str]]:
    table = section.costs if not section.costs.empty else section.runs
    out = []
    for model in section.models:
        head, others = _compared(section, model, claim)
        rows = table[table["arm"].isin([head, *others])]
        if head not in set(rows["arm"]):
            continue
        by_arm = rows.groupby(["arm", "bits"])[["storage_mib", "bitops"]].mean()
        for other in others:
            if other not in by_arm.index.get_level_values("arm"):
                continue
            if claim.check == "storage_at_most":
                mine, theirs = by_arm.loc[head, "storage_mib"].max(), by_arm.loc[other, "storage_mib"].max()
                ok = mine <= theirs * (1 + claim.tolerance)
                out.append((HOLDS if ok else FAILS, f"{model}: {mine:.2f} vs {theirs:.2f} MiB ({other})"))
            else:
                mine, theirs = by_arm.loc[head, "bitops"], by_arm.loc[other, "bitops"]
                ratio = (mine / theirs).dropna()
                ok = not ratio.empty and ((ratio - 1).abs() <= claim.tolerance).all()
                out.append((HOLDS if ok else FAILS, f"{model}: BitOPs ratio to {other} "
                            + ", ".join(f"{r:.3g} at {b}-bit" for b, r in ratio.items())))
    return out


def _switching_error(section: Section, claim: Claim) -> list[tuple[str, str]]:
    column, out = f"qerr_{claim.measure}", []
    runs = section.runs
    if column not in runs or runs[column].isna().all():
        return []
    for model in section.models:
        head, others = _compared(section, model, claim)
        means = runs[runs["model"] == model].groupby(["arm", "bits"])[column].mean()
        largest = max(runs["bits"])
        for other in others:
            for b in sorted(b for b in set(runs["bits"]) if b < largest):
                mine, theirs = means.get((head, b)), means.get((other, b))
                if mine is None or theirs is None or pd.isna(mine) or pd.isna(theirs):
                    continue
                ok = mine < theirs + claim.tolerance
                out.append((HOLDS if ok else FAILS, f"{b}-bit: {mine:.3f} vs {theirs:.3f} ({other})"))
    return out


def _accuracy(section: Section, claim: Claim) -> list[tuple[str, str]]:
    out = []
    for model in section.models:
        head, others = _compared(section, model, claim)
        diffs = paired_differences(section.runs[section.runs["model"] == model], head, others)
        for d in diffs[diffs["bits"].isin(claim.bits or diffs["bits"])].itertuples():
            where = f"{d.bits}-bit vs {d.arm}: {d.mean:+.2f}"
            if d.n < 2:
                out.append((INCONCLUSIVE, f"{where} (one seed: no interval)"))
            elif d.low > -claim.tolerance:
                out.append((HOLDS, f"{where} [{d.low:+.2f}, {d.high:+.2f}]"))
            elif d.high < -claim.tolerance:
                out.append((FAILS, f"{where} [{d.low:+.2f}, {d.high:+.2f}]"))
            else:
                out.append((INCONCLUSIVE, f"{where} [{d.low:+.2f}, {d.high:+.2f}]"))
    return out


CHECKERS = {"storage_at_most": _costs, "bitops_equal": _costs, "switching_error_below": _switching_error,
            "top1_not_below": _accuracy}


def check_claims(section: Section) -> list[ClaimResult]:
    """Every declared claim of ``section``, checked on its own results."""
    results = []
    for claim in declared(section):
        if claim.check == "top1_not_below" and section.kind == "pipeline":
            continue  # too short to learn: its accuracies are no evidence either way
        verdict, detail = _join(CHECKERS[claim.check](section, claim))
        if claim.check == "switching_error_below" and section.scale:
            detail += f" (models trained at the {section.profile} profile)"
        scale = section.scale if claim.check == "top1_not_below" else ""
        headline = claim.arm or (section.headline_of(section.models[0]) if section.models else "the headline arm")
        results.append(ClaimResult(SHORT[claim.check], claim.describe(headline), verdict, detail, scale,
                                   claim.arm or ""))
    return results
