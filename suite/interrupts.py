"""SIGINT, SIGTERM (``kill``, a scheduler's preemption) and SIGUSR2 (SLURM's warning before a time limit) stop a
run cleanly: inside the training loop the
current step finishes and a checkpoint is written first; anywhere else the stop is immediate. A second Ctrl-C
stops at once; the same SIGTERM or SIGUSR2 again changes nothing (it is the same stop). The runs are then closed
as KILLED and the process exits non-zero; the same command resumes.

``installed()`` is entered by the command line only: a library user keeps Python's own signal behaviour.
"""
from __future__ import annotations

import signal
import threading
from contextlib import contextmanager
from typing import Iterator

SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGUSR2)


class Interrupted(KeyboardInterrupt):
    """Raised where a stop signal took effect; ``signum`` says which."""

    def __init__(self, signum: int, where: str = ""):
        super().__init__(f"stopped by {signal.Signals(signum).name}" + (f" {where}" if where else ""))
        self.signum = signum


class _State:
    requested: int | None = None  # the signal received, if any
    deferring = 0  # > 0 inside ``deferred()``: the training loop will stop at its next step boundary


def _handler(signum, frame):
    if _State.requested is not None and signum == signal.SIGINT:
        raise KeyboardInterrupt  # a second Ctrl-C: stop now
    if _State.requested == signum:
        return  # the same stop again (SLURM signals every process of a job, and a launcher passes it on too)
    _State.requested = signum
    if not _State.deferring:
        raise Interrupted(signum)


@contextmanager
def installed() -> Iterator[None]:
    """Route the stop signals through this module for the block (main thread only: Python delivers signals
    there); afterwards the handlers that were there before (Python's, or a job runner's such as submitit's) are
    back and no stop is pending."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {s: signal.getsignal(s) for s in SIGNALS}
    for s in SIGNALS:
        signal.signal(s, _handler)
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        reset()


def requested() -> int | None:
    """The stop signal received so far, if any."""
    return _State.requested


def reset() -> None:
    _State.requested = None


@contextmanager
def deferred() -> Iterator[None]:
    """Within this block a stop signal only sets ``requested()``; the caller checks it at safe points."""
    _State.deferring += 1
    try:
        yield
    finally:
        _State.deferring -= 1
