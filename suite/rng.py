"""The random streams of a run: seeding, one stream per process, and their state as checkpointable data.

Process 0 of a run draws exactly what a single process draws; every other process of a torchrun world draws
from a stream of its own (``rank_seed``), so the j-th image of every rank gets its own crop and flip. States
are saved as CPU tensors and restored onto the device the run resumes on, whatever device or device count the
checkpoint was written on.
"""
from __future__ import annotations

import random
from typing import Any

import numpy as np
import torch


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def rank_seed(value: int, rank: int) -> int:
    """``value`` on rank 0 (one process's stream); on other ranks a seed mixed from (value, rank)."""
    if rank == 0:
        return value
    return int(np.random.SeedSequence([value % 2**63, rank]).generate_state(1, np.uint64)[0] >> 1)


def capture(device: torch.device) -> dict[str, Any]:
    """Every RNG the training step or the data pipeline of this process may draw from, as CPU data: the CPU
    generators, and the CUDA generator of the run's device (not all devices': another machine may have fewer)."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state = {"torch": torch.get_rng_state(), "python": random.getstate(),
             "numpy": [torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, cached]}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def restore(state: dict[str, Any], device: torch.device) -> None:
    """Put back what ``capture`` saved, from tensors on any device. A CUDA state is restored on a CUDA device only
    (a run moved to the CPU has no CUDA stream to continue)."""
    torch.set_rng_state(state["torch"].cpu())
    random.setstate(state["python"])
    keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state(("MT19937", keys.cpu().numpy().astype(np.uint32), pos, has_gauss, cached))
    cuda = state.get("cuda")
    if isinstance(cuda, (list, tuple)):  # older checkpoints: every visible device's state
        index = device.index or 0
        cuda = cuda[index] if index < len(cuda) else None
    if cuda is not None and device.type == "cuda":
        torch.cuda.set_rng_state(cuda.cpu(), device)


def of_rank(saved: dict | list[dict] | None, rank: int, world_size: int) -> dict | None:
    """This rank's state from a checkpoint's per-rank list (or an older checkpoint's one state, which is rank
    0's); None when the checkpoint was written by another number of processes."""
    states = saved if isinstance(saved, list) else [saved]
    return states[rank] if len(states) == world_size else None
