"""Doctor: each dataset a manifest reads is where it is expected, and its training loader keeps up with the step."""
from __future__ import annotations

import json
import math
import os
import time
from dataclasses import asdict

from suite.data import DataError, DatasetNotFound, build_data
from suite.doctor.checks import Check

LOADER_SECONDS = 3.0  # timed loading, after the first batch (worker start-up)
LOADER_BATCHES = 20


def loader_images_per_s(loader) -> float:
    batches = iter(loader)
    next(batches)
    started, images = time.perf_counter(), 0
    for i, (x, _) in enumerate(batches):
        images += len(x)
        if i + 1 >= LOADER_BATCHES or time.perf_counter() - started > LOADER_SECONDS:
            break
    return images / max(time.perf_counter() - started, 1e-9)


def checks(loaded, figures) -> list[Check]:
    found = []
    configs: dict[str, list] = {}  # one check per distinct data configuration, with the arms that read it
    for arm in loaded.arms:
        configs.setdefault(json.dumps(asdict(arm.config.data), sort_keys=True), []).append(arm)
    for arms in configs.values():
        cfg, recipe = arms[0].config.data, arms[0].config.recipe
        per_process = figures.steps[arms[0].name]
        batch = recipe.batch_size // per_process.world
        try:
            data = build_data(cfg, batch, seed=0)
        except (DatasetNotFound, DataError) as err:
            found.append(Check("data", f"{cfg.dataset}", "fail", str(err), "found",
                               note="put the dataset where the message says, or set data.root / SUITE_DATA_ROOT"))
            continue
        found.append(Check("data", f"{cfg.dataset}", "pass", data.description))
        loading = loader_images_per_s(data.train)
        needed = max(figures.steps[a.name].images_per_s for a in arms)
        status, note = "pass", ""
        if loading < needed:
            per_worker = loading / max(cfg.workers, 1)
            workers = min(math.ceil(1.2 * needed / per_worker), os.cpu_count() or 1)
            status, note = "warn", f"the loader is the bottleneck: data.workers={workers} would keep up"
        found.append(Check("data", f"{cfg.dataset} loader ({cfg.workers} workers)", status,
                           f"{loading:,.0f} img/s vs the step's {needed:,.0f} img/s", ">= the step's img/s", note))
    return found
