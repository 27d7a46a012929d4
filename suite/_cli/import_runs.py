"""``suite import-runs``: merge the run bundles that ``run --offline`` wrote into the store."""
from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

from suite._cli import options as common
from suite._cli.options import Options, arg


@dataclass(frozen=True, kw_only=True)
class ImportRunsOptions(Options):
    command = "import-runs"
    summary = "merge the run bundles under DIR (run --offline) into the store"

    bundles: Path = arg(type=Path, metavar="DIR", help="the folder given to run --offline")
    results: Path = common.results()


def main(options: ImportRunsOptions) -> int:
    from suite.bundles import BundleError, import_bundles, verify_bundles
    from suite.tracking import Tracker

    try:
        bundles = verify_bundles(options.bundles)  # all proven intact before the store is opened
        if not bundles:
            print(f"nothing to import from {options.bundles} yet")
            return 0
        tracker = Tracker(options.results)
        imported, present = import_bundles(bundles, tracker)
    except BundleError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"imported {imported} run(s) into {tracker.uri}; {present} were there already")
    return 0
