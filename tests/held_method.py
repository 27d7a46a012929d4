"""A test plugin (``--plugin held_method``): a method that, on its first attempt, waits at the start of one epoch
until a stop signal arrives, after writing its process id where the test can read it. The test then sends the
signal itself, so a preemption lands mid-run on every machine, however fast."""
import os
import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path

from helpers import dorefa_trainable
from suite import interrupts
from suite.methods import Method

WAIT_S = 300  # a signal that never comes fails the run instead of hanging the test


@dataclass
class HeldOptions:
    __pydantic_config__ = {"extra": "forbid"}
    pid_file: str = ""  # written once, when the run starts waiting
    epoch: int = 1  # the epoch at whose start it waits (earlier epochs are checkpointed by then)


def wait_for_a_stop(options: HeldOptions, epoch: int, epochs: int) -> None:
    pid_file = Path(options.pid_file)
    if epoch != options.epoch or pid_file.exists():
        return
    pid_file.write_text(str(os.getpid()))
    deadline = time.monotonic() + WAIT_S
    while interrupts.requested() is None:  # inside the loop a signal is deferred to the step boundary
        if time.monotonic() > deadline:
            raise RuntimeError(f"no stop signal within {WAIT_S} s")
        time.sleep(0.05)


def waiting_method(name: str, options_type, wait) -> Method:
    """A DoReFa method named ``name`` whose every epoch starts with ``wait(options, epoch, epochs)``."""
    def build(arch, num_classes, bits, options):
        return dorefa_trainable(arch, num_classes, bits, on_epoch_start=partial(wait, options))
    return Method(name, options_type, build)


METHOD = waiting_method("held", HeldOptions, wait_for_a_stop)
