"""The task registry: ``task`` in a manifest -> its ``Task`` (suite.tasks.base), each imported on first use.

A new task is one module defining ``TASK`` and its line in ``BUILT_IN`` (or ``register`` at run time, from a
plugin); suite.runner runs every task the same way.
"""
from __future__ import annotations

from suite.registry import Registry
from suite.tasks.base import Task

BUILT_IN = {"train": "suite.tasks.train:TASK", "costs": "suite.tasks.costs:TASK",
            "evaluate": "suite.tasks.evaluate:TASK"}


def _is_task(name: str, task: object) -> None:
    if not isinstance(task, Task):
        raise ValueError(f"task {name!r}: expected a suite.tasks.base.Task, got {type(task).__name__}")


TASKS = Registry("task", BUILT_IN, _is_task)


def register(name: str, task: Task) -> Task:
    """Add ``task`` under ``name``; a different task under a taken name is an error."""
    return TASKS.register(name, task)


def task(name: str) -> Task:
    """The registered task ``name``; a ValueError naming the known ones otherwise."""
    return TASKS[TASKS.known(name)]
