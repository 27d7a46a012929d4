"""``python -m suite doctor [MANIFEST]``: a preflight of this machine for a manifest, in minutes.

It finds before a launch what would otherwise fail in hour three: the environment (versions, devices, memory,
disk), the data (found, and fast enough for the step), the step itself (time and peak memory of every arm at its
per-process batch, eager and compiled, in the manifest's precision; the plan's bill from these figures; how many
small jobs fill a GPU), the distributed path (a torchrun world of every GPU, or 2 gloo processes on a CPU: an
all-reduce, DDP steps with SyncBN equal to one process's, sharded evaluation equal to one process's) and the store
(a checkpoint written and read back data-only, the tracking store reachable and writable within its deadline).

Every check ends as one row: pass / warn / fail, the measured figure and the threshold it was held to. Any fail
makes the exit code 1.
"""
from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

STATUSES = ("pass", "warn", "fail")


@dataclass
class Check:
    area: str  # environment, data, step, distributed, store
    name: str
    status: str  # pass / warn / fail
    measured: str
    threshold: str = ""
    note: str = ""  # what to do about a warn or fail, or what a figure means


@dataclass
class Options:
    results: Path = Path("results")
    memory_gib: float | None = None  # per-device budget (default: the device's memory, or the machine's RAM)
    compile: str = "auto"  # none / first / all arms' compiled step; auto: the first arm on a GPU, none on a CPU
    distributed: bool = True


def run_doctor(loaded, options: Options, echo: Callable[[str], None] = print) -> list[Check]:
    """Every check for ``loaded`` (a LoadedManifest, or None for the machine alone), printed as they finish."""
    from suite.doctor import data, distributed, environment, steps, store

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
