"""What a task is: the work of one manifest's runs (``task`` in a manifest), run by suite.runner, each run under
the one lifecycle of suite.lifecycle (lock, find a finished run, run, record)."""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

if TYPE_CHECKING:  # annotations only: the registry that imports this module loads no torch or MLflow
    import pandas as pd

    from suite.distributed import Distributed
    from suite.invocation import Invocation
    from suite.manifest import LoadedManifest, ResolvedArm


@runtime_checkable
class Task(Protocol):
    seeded: bool  # one run per (arm, seed); else one per arm, as seed 0
    all_ranks: bool  # under torchrun every rank takes part in its runs; else rank 0 runs them alone
    exact: bool  # its numbers do not depend on the profile's scale: the runs' scale tag says 'exact'
    records_reuse: bool  # an identical finished run is recorded as reused, also one of another manifest
    busy_note: str  # echoed for a run another process holds; ``{lock}``: its lock file
    found_note: str  # echoed for a run that finished earlier in this experiment; ``{run}``: its id

    def preflight(self, loaded: LoadedManifest, dist: Distributed) -> Any:
        """What can be checked before any run is opened (data, checkpoints); returns the state ``run_arm`` gets."""

    def run_arm(self, inv: Invocation, arm: ResolvedArm, seed: int, state: Any) -> list[dict]:
        """One run of ``arm`` (at ``seed``); its rows of the invocation's results."""

    def summarize(self, inv: Invocation, rows: pd.DataFrame) -> None:
        """The invocation's results on its parent run."""
