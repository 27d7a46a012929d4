"""The one lifecycle of a tracked run, whatever its task: take its lock, find a FINISHED run with its key, run it
(or stand on the one found) and record what stands for it in this invocation.

A run is identified by its configuration (its key): an identical run that finished is not run again, and of two
processes on the same run the second skips it.
"""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

from filelock import FileLock, Timeout

from suite.analyses import metric_prefixes
from suite.invocation import Invocation, tag_key
from suite.manifest import ResolvedArm
from suite.tasks.base import Task


@contextmanager
def exclusive(path: Path) -> Iterator[bool]:
    """Hold the OS file lock ``path`` for the block if no other process does (True), else do nothing (False).
    The kernel releases it when its holder dies, so a killed run never blocks the next."""
    path.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(path)
    try:
        lock.acquire(timeout=0)
    except Timeout:
        yield False
        return
    try:
        yield True
    finally:
        lock.release()


@dataclass
class ClaimedRun:
    """Where one run stands in ``claimed_run``: ``busy`` (another process holds it: skipped here), else
    ``record`` is the run that stands for it here, with its results ``metrics``: the finished run found, or the
    one the block runs (the block sets both)."""

    busy: bool = False
    record: str | None = None
    metrics: dict = field(default_factory=dict)

    @property
    def to_run(self) -> bool:
        return not self.busy and self.record is None


@contextmanager
def claimed_run(inv: Invocation, task: Task, arm: ResolvedArm, seed: int, key: str,
                lock: Path | None = None) -> Iterator[ClaimedRun]:
    """The run ``key`` of (``arm``, ``seed``), held under ``lock`` (default: the store's lock of ``key``) for the
    block: the block runs it where ``claim.to_run`` and records it in ``claim``. Under torchrun, for a task all ranks run, rank 0 tells the
    others whether it runs."""
    name = f"{arm.name} seed {seed}" if task.seeded else arm.name
    lock = lock or inv.tracker.locks / f"{key}.lock"
    with exclusive(lock) as mine:
        previous = _finished(inv, task, key) if mine else None
        if task.all_ranks:
            inv.dist.from_main(mine and previous is None)
        if not mine:
            inv.echo(f"  {name}: " + task.busy_note.format(lock=lock))
            yield ClaimedRun(busy=True)
            return
        yield ClaimedRun() if previous is None else _reused(inv, task, previous, arm, seed, name)


def _finished(inv: Invocation, task: Task, key: str):
    """The FINISHED run with ``key`` in this experiment, else (a task that records reuse) in any."""
    found = inv.tracker.find(key, inv.experiment, status="FINISHED")
    if found is None and task.records_reuse:
        found = inv.tracker.find(key, status="FINISHED")
    return found


def _reused(inv: Invocation, task: Task, previous, arm: ResolvedArm, seed: int, name: str) -> ClaimedRun:
    """``previous`` standing for the run here: named on the parent run when it is this experiment's, else recorded
    in this experiment as a reuse of the run that trained (a task that records reuse)."""
    if previous.info.experiment_id == inv.experiment:
        inv.echo(f"  {name}: " + task.found_note.format(run=previous.info.run_id))
        if task.records_reuse:
            inv.tracker.set_tags(inv.parent, {tag_key(f"suite.reused.{arm.name}.seed{seed}"): previous.info.run_id})
        return ClaimedRun(record=previous.info.run_id, metrics=previous.data.metrics)
    previous = inv.tracker.original(previous)
    # Analysis results belong to the manifest that asked for them: the record carries training results only.
    metrics = {k: v for k, v in previous.data.metrics.items() if not k.startswith(metric_prefixes())}
    record = inv.tracker.record_reuse(previous, inv.experiment, inv.parent, name, inv.arm_tags(arm, seed), metrics)
    inv.echo(f"  {name}: identical to a run of {previous.data.tags.get('suite.manifest')} "
             f"that finished earlier (run {previous.info.run_id}): its results are reused")
    return ClaimedRun(record=record, metrics=metrics)
