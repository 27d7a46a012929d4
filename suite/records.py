"""What a tracked run record holds, shared by whoever writes it (runner) and whoever reads it (tracking, report):
the scale label of a profile, the final metrics' names, and the columns of the runs table."""
from __future__ import annotations

PAPER_PROFILE = "paper"
# The runs table: one row per (finished run, evaluated bit-width), as ``collect.load_runs`` returns it; the
# registered analyses' columns follow these (suite.analyses.run_columns).
RUN_COLUMNS = ["manifest", "manifest_version", "title", "paper_ref", "paper_verified", "profile", "arm", "method",
               "seed", "bits", "top1", "top5", "dataset", "model", "run_id", "manifest_hash", "setup",
               "tolerance", "storage_mib", "bitops"]


def scale_label(profile: str) -> str:
    """'' for the paper profile, '<profile>-scale' (e.g. 'smoke-scale') for any other: shortened runs whose
    numbers must never be read as a reproduction of the paper."""
    return "" if profile == PAPER_PROFILE else f"{profile}-scale"


def final_metrics(results: dict[int, tuple[float, float]]) -> dict[str, float]:
    """``final_top1_b{b}``, ``final_top5_b{b}`` per bit-width and their mean top-1, from {bits: (top1, top5)}."""
    out = {}
    for b, (top1, top5) in results.items():
        out[f"final_top1_b{b}"], out[f"final_top5_b{b}"] = top1, top5
    out["final_top1_mean"] = sum(v[0] for v in results.values()) / len(results)
    return out
