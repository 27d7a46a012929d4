"""Where a manifest's (arm, seed) jobs run when launched: the manifest's ``cluster`` block, which the command line's
launcher options override, and what the launchers read (pydantic only: no torch)."""
from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class ClusterSpec(BaseModel):
    """Where the submitit launcher runs each (arm, seed) job on SLURM; the command line overrides any of it."""

    model_config = ConfigDict(extra="forbid", strict=True)  # as every manifest section: no "90" for 90

    partition: str | None = None
    time_minutes: int = Field(24 * 60, ge=10, description="wall-clock limit per job; a job requeues itself")
    gpus_per_job: int = Field(1, ge=1, le=64)
    cpus_per_task: int = Field(8, ge=1, le=512)
    account: str | None = None
    jobs_per_gpu: int = Field(1, ge=1, le=64, description="gpus launcher: jobs sharing each GPU slot at once (a "
                                                           "small model leaves most of a GPU idle; `suite doctor` "
                                                           "suggests a value)")
