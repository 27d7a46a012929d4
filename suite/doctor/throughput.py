"""One of JOBS processes sharing a GPU, for ``suite doctor``: ``python -m suite.doctor.throughput SPEC SECONDS
JOBS FOLDER INDEX``. The processes start their timed steps together, run a manifest arm's step (SPEC: a resolved
manifest as JSON) for SECONDS and write their images/s to FOLDER/INDEX.json."""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import torch

from suite.doctor.steps import _build, _probe_batch, _sync
from suite.manifest import Manifest


def throughput(spec: str, seconds: str, jobs: str, folder: str, index: str) -> None:
    cfg = Manifest.model_validate(json.loads(Path(spec).read_text()))
    device = torch.device("cuda")
    step = _build(cfg, _probe_batch(cfg, cfg.recipe.batch_size, device), device, False)
    step()
    step()
    folder = Path(folder)
    (folder / f"ready-{index}").touch()  # start the timed steps together
    while len(list(folder.glob("ready-*"))) < int(jobs):
        time.sleep(0.01)
    _sync(device)
    started, done = time.perf_counter(), 0
    while time.perf_counter() - started < float(seconds):
        step()
        done += 1
    _sync(device)
    rate = done * cfg.recipe.batch_size / (time.perf_counter() - started)
    (folder / f"{index}.json").write_text(json.dumps({"images_per_s": rate}))


if __name__ == "__main__":
    throughput(*sys.argv[1:])
