"""``suite report``: the tracked runs collected into the PDF report."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from suite._cli import options as common
from suite._cli.options import Options


@dataclass(frozen=True, kw_only=True)
class ReportOptions(Options):
    command = "report"
    summary = "collect the tracked runs into the PDF report"

    results: Path = common.results()
    out: Path = common.report_out()
    references: Path | None = common.report_references()


def main(options: ReportOptions) -> int:
    from suite.report import build_report

    pages = build_report(options.results, options.out, options.references)
    print(f"wrote {options.out} ({pages} pages)")
    return 0
