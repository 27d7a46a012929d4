"""``suite plan``: every (arm, seed) job of a manifest, its state and the device-hours left."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from suite._cli import options as common
from suite._cli.options import Options, arg, positive, positive_real


@dataclass(frozen=True, kw_only=True)
class PlanOptions(Options):
    command = "plan"
    summary = ("every (arm, seed) job of a manifest: its state, steps left and estimated device-hours (a short "
               "measured probe of the step on this device)")

    manifest: Path = arg(type=Path, help="the experiment to plan, e.g. experiments/table1_imagenet_2468.yaml")
    step_time: float | None = arg("--step-time", type=positive_real, metavar="SECONDS",
                                  help="seconds per joint step at the manifest's batch, instead of the probe")
    probe_batch: int | None = arg("--probe-batch", type=positive,
                                  help="images in the probe's batch (default: 32, or 8 for images above 64 pixels)")
    jobs_per_gpu: int = arg("--jobs-per-gpu", type=positive, default=1, metavar="K",
                            help="K jobs sharing each GPU (the gpus launcher's --jobs-per-gpu): adds their wall time")
    gain: float | None = arg("--gain", type=positive_real, metavar="G",
                             help="throughput of K jobs sharing a GPU relative to one job's, as `suite doctor` "
                                  "measured it")
    profile: str = common.profile()
    set: list[str] = common.overrides()
    arm: list[str] | None = common.arms()
    seed: list[int] | None = common.seeds()
    results: Path = common.results()


def main(options: PlanOptions) -> int:
    from suite.manifest import load_manifest, parse_set_options
    from suite.plan import plan

    loaded = load_manifest(options.manifest, options.profile, parse_set_options(options.set)).subset(
        options.arm, options.seed)
    plan(loaded, options.results, step_seconds=options.step_time, probe_batch=options.probe_batch,
         jobs_per_gpu=options.jobs_per_gpu, gain=options.gain)
    return 0
