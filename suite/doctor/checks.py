"""What every doctor check reports, and the doctor's options."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

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
