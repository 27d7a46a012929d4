"""The doctor's run: every check in order, printed as it finishes, and the table they make."""
from __future__ import annotations

import json
import time
from dataclasses import asdict
from pathlib import Path
from typing import Callable

from suite.doctor import data, distributed, environment, steps, store
from suite.doctor.checks import STATUSES, Check, Options

def run_doctor(loaded, options: Options, echo: Callable[[str], None] = print) -> list[Check]:
    """Every check for ``loaded`` (a LoadedManifest, or None for the machine alone), printed as they finish."""
    checks: list[Check] = []

    def add(found: list[Check]) -> None:
        for c in found:
            echo(f"  {c.status:4}  {c.area}: {c.name}: {c.measured}" + (f"  [{c.threshold}]" if c.threshold else ""))
        checks.extend(found)

    started = time.perf_counter()
    add(environment.checks(loaded))
    figures = None
    if loaded is not None:
        figures, found = steps.checks(loaded, options)
        add(found)
        add(data.checks(loaded, figures))
    if options.distributed:
        add(distributed.checks(loaded))
    add(store.checks(loaded, options.results, figures))
    echo(f"doctor: {len(checks)} checks in {time.perf_counter() - started:.0f} s")
    return checks


def render(checks: list[Check]) -> str:
    """The checks as one aligned table, with a closing line of counts."""
    header = ("status", "area", "check", "measured", "threshold")
    rows = [(c.status.upper() if c.status != "pass" else c.status, c.area, c.name, c.measured, c.threshold)
            for c in checks]
    widths = [min(max(len(r[i]) for r in [header, *rows]), 60) for i in range(len(header))]
    lines = ["  ".join(h.ljust(w) for h, w in zip(header, widths)), "  ".join("-" * w for w in widths)]
    lines += ["  ".join(v.ljust(w) for v, w in zip(r, widths)).rstrip() for r in rows]
    notes = [f"  {c.area}: {c.name}: {c.note}" for c in checks if c.note and c.status != "pass"]
    counts = {s: sum(c.status == s for c in checks) for s in STATUSES}
    lines += (["", "what to do:", *notes] if notes else [])
    lines.append(f"\n{counts['pass']} pass, {counts['warn']} warn, {counts['fail']} fail")
    return "\n".join(lines)


def save(checks: list[Check], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps([asdict(c) for c in checks], indent=1))


def failed(checks: list[Check]) -> bool:
    return any(c.status == "fail" for c in checks)
