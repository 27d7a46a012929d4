"""Helpers the tests share: run stores each test owns, copied from stores filled once per session or module."""
from __future__ import annotations

import os
import shutil
import socket
import sqlite3
from contextlib import contextmanager
from pathlib import Path

SHIPPED = Path(__file__).resolve().parents[1]
EXPERIMENTS = SHIPPED / "experiments"


def tiny_manifest(name: str, title: str, *, epochs: int, steps_per_epoch: int) -> dict:
    """A manifest that trains in seconds: ResNet-8 on 8×8 digits, MBQuant at 2 and 4 bits, one seed."""
    return {
        "name": name, "version": 1, "title": title, "paper": {"ref": "none"},
        "data": {"dataset": "digits", "image_size": 8, "train_limit": 192, "val_limit": 96},
        "model": {"arch": "resnet8"}, "method": {"name": "mbquant", "bits": [2, 4]},
        "recipe": {"epochs": epochs, "batch_size": 32, "steps_per_epoch": steps_per_epoch, "eval_batch_size": 96},
        "seeds": [0], "profiles": {"paper": {}},
    }


def copy_store(source: Path, target: Path) -> Path:
    """A full, independent copy of a run store (MLflow SQLite database, artifacts, checkpoints): the experiments'
    and runs' artifact locations are rewritten to point into the copy."""
    shutil.copytree(source, target)
    old, new = Path(source).resolve().as_uri(), Path(target).resolve().as_uri()
    db = sqlite3.connect(target / "mlflow.db")
    try:
        with db:
            db.execute("UPDATE experiments SET artifact_location = replace(artifact_location, ?, ?)", (old, new))
            db.execute("UPDATE runs SET artifact_uri = replace(artifact_uri, ?, ?)", (old, new))
    finally:
        db.close()
    return target


def stop_after_epoch(epoch: int, error: type[BaseException] = KeyboardInterrupt):
    """A ``fit(log=...)`` callback that raises ``error`` once epoch ``epoch`` is logged: a run stopped there."""
    def log(metrics, logged_epoch):
        if logged_epoch == epoch:
            raise error
    return log


def free_port() -> int:
    """A port of 127.0.0.1 that nothing listens on now: two test runs on one machine never meet on a fixed port."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def joined_world(rank: int, world: int, port: int):
    """This spawned process as rank ``rank`` of a gloo world of ``world`` processes on 127.0.0.1:``port``, left
    on the way out: a process that exits with gloo's threads still running can abort after its work is done
    ("terminate called without an active exception", SIGABRT)."""
    import torch

    from suite.distributed import from_environment
    torch.set_num_threads(1)
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    dist = from_environment()
    try:
        yield dist
    finally:
        torch.distributed.destroy_process_group()


def dorefa_model(arch: str, num_classes: int, bits):
    """A single-branch ``arch`` with DoReFa convs and per-bit BNs: what the test plugin methods train."""
    from functools import partial

    from suite.layers.dorefa import DoReFaConv
    from suite.layers.norms import PerBitBatchNorm
    from suite.models import create_model
    return create_model(arch, num_classes=num_classes, bits=bits, conv=DoReFaConv,
                        norm=partial(PerBitBatchNorm, bits=bits))


def dorefa_trainable(arch: str, num_classes: int, bits, **hooks):
    """``dorefa_model`` as a Trainable (labels-only loss, one weight group), with ``hooks`` such as
    ``on_epoch_start``."""
    from functools import partial

    from suite.contract import Trainable
    from suite.losses import labels_only
    from suite.methods.common import weight_groups
    model = dorefa_model(arch, num_classes, bits)
    return Trainable(model, list(bits), labels_only, partial(weight_groups, model), **hooks)
