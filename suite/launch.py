"""Launchers: a manifest's (arm, seed) jobs on every GPU of this machine, or as a SLURM job array.

Every job is the same command a user could type, restricted to one run (``--arm A --seed K``): ``python -m suite``
with the command line that the ``run`` options write for it (``job_argv``), so every option reaches the job. A job
that fails or is stopped is simply run again and resumes from its checkpoints; a finished one is not run twice.

- ``gpus``: jobs run concurrently, one per GPU (or ``gpus_per_job`` GPUs each, through torchrun), or in plain CPU
  slots. A failed job does not stop the others; it is reported, and the next invocation resumes it.
- ``submitit``: a SLURM job array through submitit, one task per (arm, seed), each on ``gpus_per_job`` GPUs of one
  node. On preemption or timeout (SIGUSR2) the job finishes its step, checkpoints and requeues itself.
"""
from __future__ import annotations

import os
import shlex
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Protocol

from suite.cluster import ClusterSpec

PREEMPTION = signal.SIGUSR2  # what SLURM sends ahead of the time limit (submitit's --signal)
SIGNAL_DELAY_S = 180  # SIGUSR2 this long before the time limit: time to finish a step and checkpoint
MAX_REQUEUES = 10  # a job stopped this often by its time limit fails instead of requeueing


@dataclass(frozen=True)
class Job:
    """One (arm, seed) of a manifest, and the ``suite`` command line that runs exactly it."""

    arm: str
    seed: int
    argv: tuple[str, ...]

    @property
    def name(self) -> str:
        return f"{self.arm} seed {self.seed}"

    @property
    def slug(self) -> str:
        return "".join(c if c.isalnum() or c in "-_." else "_" for c in f"{self.arm}-seed{self.seed}")


class JobOptions(Protocol):
    """The ``run`` options (``suite._cli.run.RunOptions``), as far as a launcher reads them."""

    def job_argv(self, arm: str, seed: int) -> list[str]: ...


def jobs_for(planned: list[tuple[str, int]], options: JobOptions) -> list[Job]:
    """One job per planned (arm, seed), its command line written by ``options``."""
    return [Job(arm, seed, tuple(options.job_argv(arm, seed))) for arm, seed in planned]


def torchrun_prefix(processes: int) -> list[str]:
    """The interpreter command of a job: plain, or torchrun on this node with ``processes`` processes."""
    if processes <= 1:
        return [sys.executable, "-m", "suite"]
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={processes}",
            "-m", "suite"]


# ------------------------------------------------------------------------------------------------- local GPUs


def visible_gpus() -> list[str]:
    """The GPU ids this process may use (``CUDA_VISIBLE_DEVICES``, else every device torch sees)."""
    listed = os.environ.get("CUDA_VISIBLE_DEVICES")
    if listed is not None:
        return [g for g in listed.split(",") if g.strip()]
    import torch

    return [str(i) for i in range(torch.cuda.device_count())] if torch.cuda.is_available() else []


def run_on_gpus(jobs: list[Job], logs: Path, *, gpus_per_job: int = 1, jobs_per_gpu: int = 1,
                cpu_slots: int | None = None, echo: Callable[[str], None] = print) -> int:
    """Run ``jobs`` concurrently: ``jobs_per_gpu`` at a time on each slot of ``gpus_per_job`` GPUs, or on each of
    ``cpu_slots`` CPU slots when given (no GPU). Each job's output goes to ``logs/<arm>-seed<k>.log``. Returns the
    number of failed jobs."""
    if cpu_slots is not None:
        threads = max(1, (os.cpu_count() or 1) // (cpu_slots * jobs_per_gpu))
        devices = [{"CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": str(threads)} for _ in range(cpu_slots)]
        processes = 1
    else:
        gpus = visible_gpus()
        if len(gpus) < gpus_per_job:
            raise RuntimeError(f"the gpus launcher needs {gpus_per_job} GPU(s) per job and sees {len(gpus)} "
                               "(CUDA_VISIBLE_DEVICES); use --cpu-slots N to run on CPUs")
        devices = [{"CUDA_VISIBLE_DEVICES": ",".join(gpus[i:i + gpus_per_job])}
                   for i in range(0, len(gpus) - gpus_per_job + 1, gpus_per_job)]
        processes = gpus_per_job
    slots = [env for env in devices for _ in range(jobs_per_gpu)]  # K jobs share each device at once
    logs.mkdir(parents=True, exist_ok=True)
    waiting, running, failed = list(jobs), {}, []
    echo(f"{len(jobs)} job(s) on {len(devices)} slot(s) x {jobs_per_gpu} job(s) each; logs in {logs}")
    while waiting or running:
        for slot, env in enumerate(slots):
            if slot not in running and waiting:
                job = waiting.pop(0)
                log = (logs / f"{job.slug}.log").open("a")
                proc = subprocess.Popen([*torchrun_prefix(processes), *job.argv], stdout=log,
                                        stderr=subprocess.STDOUT, env={**os.environ, **env, "PYTHONUNBUFFERED": "1"})
                running[slot] = (job, proc, log)
                echo(f"  started {job.name} (slot {slot}, {env['CUDA_VISIBLE_DEVICES'] or 'CPU'})")
        time.sleep(0.2)
        for slot, (job, proc, log) in list(running.items()):
            if proc.poll() is not None:
                log.close()
                del running[slot]
                if proc.returncode:
                    failed.append(job)
                echo(f"  {'FAILED' if proc.returncode else 'done'} {job.name} (exit {proc.returncode}; "
                     f"{logs / (job.slug + '.log')})")
    if failed:
        echo(f"{len(failed)} of {len(jobs)} job(s) failed: {', '.join(j.name for j in failed)}. Their logs say why; "
             "run the same command again to resume them (finished runs are not run again).")
    return len(failed)


# ----------------------------------------------------------------------------------------------------- SLURM


def run_suite(argv: tuple[str, ...]) -> int:
    """``python -m suite argv`` as a child process with this one's environment and output; returns its exit code.

    The preemption signal is passed on to it: the suite there finishes its step and checkpoints, and this process
    requeues once it has ended. (SLURM signals every process of the job, so the child may get it twice: the suite
    takes a repeated stop signal as the same stop.)"""
    child: subprocess.Popen | None = None
    early: list[int] = []  # arrived before the child existed

    def forward(signum, frame):
        if child is None:
            early.append(signum)
        else:
            child.send_signal(signum)

    previous = signal.signal(PREEMPTION, forward)
    sys.stdout.flush(), sys.stderr.flush()  # what this process said comes before what the child says
    try:
        child = subprocess.Popen([*torchrun_prefix(1), *argv])
        for signum in early:
            child.send_signal(signum)
        return child.wait()
    finally:
        signal.signal(PREEMPTION, previous)
        if child is not None and child.poll() is None:  # this process is failing: leave no suite running behind it
            child.terminate()
            child.wait()


@dataclass
class SuiteJob:
    """What one SLURM task runs: the suite's command line for one (arm, seed), under submitit.

    With several tasks (GPUs) per job it joins them as one torch.distributed group (through the environment the
    child inherits). On SIGUSR2 the suite in the child finishes its step, checkpoints and exits; then submitit's own
    handler here requeues the job, which resumes from that checkpoint.
    """

    argv: tuple[str, ...]

    def __call__(self) -> int:
        import submitit

        env = submitit.JobEnvironment()
        if env.num_tasks > 1:
            submitit.helpers.TorchDistributedEnvironment().export(set_cuda_visible_devices=False)
            os.environ["LOCAL_RANK"] = str(env.local_rank)
        requeue = signal.getsignal(PREEMPTION)  # submitit's checkpoint-and-requeue handler
        code = run_suite(self.argv)
        if code in (128 + PREEMPTION, -PREEMPTION):  # -: stopped before the suite could handle it
            if env.global_rank != 0:  # rank 0 checkpointed and requeues the whole job; an error exit here could
                return 0              # make SLURM (KillOnBadExit) kill rank 0 before it does
            if callable(requeue):
                requeue(PREEMPTION, None)  # checkpoint() below, requeue, exit
        if code:
            raise RuntimeError(f"suite {shlex.join(self.argv)} exited with code {code}")
        return code

    def checkpoint(self):
        import submitit

        return submitit.helpers.DelayedSubmission(self)  # the same command: it resumes from its checkpoints


def submit_to_slurm(jobs: list[Job], folder: Path, cluster: ClusterSpec, *, executor: str = "slurm",
                    echo: Callable[[str], None] = print) -> list:
    """Submit ``jobs`` as one array (``executor``: slurm, or submitit's local / debug executors, which run them on
    this machine: for testing). Returns the submitit jobs."""
    import submitit

    tasks = dict(tasks_per_node=cluster.gpus_per_job, timeout_min=cluster.time_minutes)
    if executor == "slurm":
        ex = submitit.AutoExecutor(folder=folder, cluster="slurm", slurm_max_num_timeout=MAX_REQUEUES)
        ex.update_parameters(**tasks, nodes=1, name="suite",
                             gpus_per_node=cluster.gpus_per_job, cpus_per_task=cluster.cpus_per_task,
                             slurm_signal_delay_s=SIGNAL_DELAY_S,
                             **{f"slurm_{k}": v for k, v in (("partition", cluster.partition),
                                                             ("account", cluster.account)) if v})
    elif executor == "local":
        ex = submitit.LocalExecutor(folder=folder, max_num_timeout=MAX_REQUEUES)
        ex.update_parameters(**tasks, signal_delay_s=SIGNAL_DELAY_S)
    else:
        ex = submitit.DebugExecutor(folder=folder)
    with ex.batch():
        submitted = [ex.submit(SuiteJob(job.argv)) for job in jobs]
    for job, handle in zip(jobs, submitted):
        echo(f"  submitted {job.name}: job {handle.job_id}")
    echo(f"{len(jobs)} job(s) submitted; logs and state in {folder}")
    return submitted
