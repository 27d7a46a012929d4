"""``suite run``: a manifest's every arm and seed, in this process or launched as one job per (arm, seed)."""
from __future__ import annotations

from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import TYPE_CHECKING

from suite._cli import options as common
from suite._cli.options import Options, arg, positive

if TYPE_CHECKING:
    from suite.cluster import ClusterSpec


@dataclass(frozen=True, kw_only=True)
class RunOptions(Options):
    command = "run"
    summary = "run a manifest (every arm and seed) through the shared trainer"

    manifest: Path = arg(type=Path, help="the experiment to run, e.g. experiments/table3_cifar100_resnet20_2468.yaml")
    launcher: str = arg("--launcher", choices=["local", "gpus", "submitit"], default="local", launcher_only=True,
                        help="local: this process (default; under torchrun, all of its processes); gpus: every (arm, "
                             "seed) as its own process on this machine's GPUs; submitit: a SLURM job array")
    gpus_per_job: int | None = arg("--gpus-per-job", type=positive, metavar="K", launcher_only=True,
                                   help="GPUs per job (gpus, submitit): K > 1 runs each job under torchrun")
    jobs_per_gpu: int | None = arg("--jobs-per-gpu", type=positive, metavar="K", launcher_only=True,
                                   help="gpus launcher: K jobs share each GPU (or CPU slot) at once; `suite doctor` "
                                        "suggests K (default: the profile's cluster block, else 1)")
    cpu_slots: int | None = arg("--cpu-slots", type=positive, metavar="N", launcher_only=True,
                                help="gpus launcher without GPUs: N CPU jobs")
    partition: str | None = arg("--partition", launcher_only=True,
                                help="SLURM partition (submitit; else the profile's cluster block)")
    time_minutes: int | None = arg("--time", type=positive, metavar="MINUTES", launcher_only=True,
                                   help="SLURM time limit per job (submitit)")
    cpus_per_task: int | None = arg("--cpus-per-task", type=positive, launcher_only=True,
                                    help="CPUs per GPU process (submitit)")
    account: str | None = arg("--account", launcher_only=True, help="SLURM account (submitit)")
    submitit_executor: str = arg("--submitit-executor", choices=["slurm", "local", "debug"], default="slurm",
                                 launcher_only=True,
                                 help="submitit's executor: slurm, or its local / debug executors (tests, dry runs)")
    offline: Path | None = arg("--offline", type=Path, metavar="DIR",
                               help="track into a bundle under DIR instead of the store (for nodes that cannot reach "
                                    "it); merge bundles later with import-runs DIR")
    profile: str = common.profile()
    set: list[str] = common.overrides()
    arm: list[str] | None = common.arms()
    seed: list[int] | None = common.seeds()
    no_progress: bool = common.no_progress()
    results: Path = common.results()
    plugin: list[str] = common.plugins()

    def job_argv(self, arm: str, seed: int) -> list[str]:
        """The command line of the launched job that runs exactly (arm, seed) with these options."""
        return replace(self, arm=[arm], seed=[seed], no_progress=True).argv(launcher=False)

    def cluster(self, spec: ClusterSpec | None) -> ClusterSpec:
        """The manifest's cluster block (or the defaults) with the launcher options given here in its place."""
        from suite.cluster import ClusterSpec

        given = {f.name: getattr(self, f.name) for f in fields(self)}
        return (spec or ClusterSpec()).model_copy(update={
            name: given[name] for name in ClusterSpec.model_fields if given.get(name) is not None})


def main(options: RunOptions) -> int:
    from suite.manifest import load_manifest, parse_set_options
    from suite.runner import preflight, run_manifest

    loaded = load_manifest(options.manifest, options.profile, parse_set_options(options.set)).subset(
        options.arm, options.seed)
    if options.launcher == "local" or loaded.manifest.task != "train":
        from suite.bundles import offline_bundle

        with offline_bundle(options.offline) as tracking:  # --offline: this process's bundle, sealed when it ends
            run_manifest(loaded, options.results, progress=not options.no_progress, tracking=tracking)
        return 0
    from suite.launch import jobs_for, run_on_gpus, submit_to_slurm
    from suite.paths import inside

    preflight(loaded)  # a missing dataset fails once, here, not in every job
    chosen = {a.name for a in loaded.arms}
    planned = [(arm, seed) for arm, seed in loaded.jobs if arm in chosen and seed in loaded.manifest.seeds]
    jobs = jobs_for(planned, options)
    folder = inside(options.results, "launch", f"{loaded.manifest.name}.{loaded.profile}")
    cluster = options.cluster(loaded.manifest.cluster)
    if options.launcher == "gpus":
        failed = run_on_gpus(jobs, folder, gpus_per_job=cluster.gpus_per_job, jobs_per_gpu=cluster.jobs_per_gpu,
                             cpu_slots=options.cpu_slots)
        return 1 if failed else 0
    submit_to_slurm(jobs, folder, cluster, executor=options.submitit_executor)
    return 0
