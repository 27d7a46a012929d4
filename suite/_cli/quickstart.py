"""``suite quickstart``: the manifests marked ``quickstart: true`` at their smoke profile, then the report."""
from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from pathlib import Path

from suite._cli import options as common
from suite._cli.options import EXPERIMENTS, Options, arg

# MLflow's runs table (its "Model training" view; the UI otherwise opens on its GenAI traces view)
UI_URL = "http://127.0.0.1:5000/#/experiments?workflowType=machine_learning"


@dataclass(frozen=True, kw_only=True)
class QuickstartOptions(Options):
    command = "quickstart"
    summary = ("the manifests marked `quickstart: true` (every method, the costs, the ImageNet pipeline checks) at "
               "the smoke profile, then the report")

    experiments: Path = arg("--experiments", type=Path, default=EXPERIMENTS,
                            help=f"folder of manifests (default: {EXPERIMENTS})")
    all: bool = arg("--all", action="store_true", help="every manifest, the ablations included (longer)")
    profile: str = arg("--profile", default="smoke",
                       help="the manifests' profile to run (default: smoke, minutes on a CPU; paper: the published "
                            "protocol)")
    no_progress: bool = common.no_progress()
    results: Path = common.results()
    out: Path = common.report_out()
    references: Path | None = common.report_references()
    plugin: list[str] = common.plugins()


def main(options: QuickstartOptions) -> int:
    from suite.manifest import load_manifest
    from suite.manifest_file import manifests_in
    from suite.report import build_report
    from suite.runner import run_manifest

    started = time.perf_counter()
    # Validate every manifest before running any, so a typo fails in seconds, not after an hour of training.
    loaded = [m for m in (load_manifest(p, options.profile) for p in manifests_in(options.experiments))
              if options.all or m.manifest.quickstart]
    for manifest in loaded:
        run_manifest(manifest, options.results, progress=not options.no_progress)
    pages = build_report(options.results, options.out, options.references)
    print(f"quickstart: {len(loaded)} manifest(s) at profile {options.profile!r} in "
          f"{time.perf_counter() - started:.0f} s; report {options.out.resolve()} ({pages} pages)\n"
          f"browse the runs: {Path(sys.executable).with_name('mlflow')} ui --backend-store-uri "
          f"sqlite:///{(options.results / 'mlflow.db').resolve()} --port 5000\n"
          f"  then open {UI_URL}")
    return 0
