"""A test plugin (``--plugin gated_method``): a method whose runs wait at the start of one epoch (earlier ones
checkpointed and logged by then) until the file ``<gate>/open`` exists, each after writing ``<gate>/<pid>.waiting``.
The test changes the world meanwhile (it stops the tracking server), then opens the gate: what happens next lands
at the same point of every run, however fast the machine."""
import os
import time
from dataclasses import dataclass
from pathlib import Path

from held_method import waiting_method

WAIT_S = 300  # a gate that never opens fails the run instead of hanging the test


@dataclass
class GatedOptions:
    __pydantic_config__ = {"extra": "forbid"}
    gate: str = ""
    epoch: int = 1


def wait_at_the_gate(options: GatedOptions, epoch: int, epochs: int) -> None:
    gate = Path(options.gate)
    if epoch != options.epoch or (gate / "open").exists():
        return
    (gate / f"{os.getpid()}.waiting").touch()
    deadline = time.monotonic() + WAIT_S
    while not (gate / "open").exists():
        if time.monotonic() > deadline:
            raise RuntimeError(f"the gate {gate} did not open within {WAIT_S} s")
        time.sleep(0.1)


METHOD = waiting_method("gated", GatedOptions, wait_at_the_gate)
