"""Doctor: the run store takes a checkpoint and gives it back data-only, has room for the plan's checkpoints, and the
tracking store answers and takes a run within its deadline."""
from __future__ import annotations

import importlib.util
import shutil
import threading
import time
from pathlib import Path

import torch

from suite.checkpoints import CheckpointSeries, read_checkpoint
from suite.data import num_classes
from suite.doctor.checks import Check
from suite.doctor.environment import GIB
from suite.methods import build_trainable
from suite.tracking import Tracker

TRACKING_DEADLINE_S = 30
DOCTOR_EXPERIMENT = "suite-doctor"  # where the tracking check writes its one run


def _checkpoint_of(loaded) -> dict:
    """A checkpoint the size of the first arm's ``last`` (model state and one momentum buffer per parameter)."""
    if loaded is not None:
        cfg = loaded.arms[0].config
        model = build_trainable(cfg.method.name, cfg.model.arch, num_classes(cfg.data.dataset), cfg.method.bits,
                                cfg.method.options).model
    else:
        model = build_trainable("mbquant", "resnet8", 10, [2, 4], {}).model
    return {"model": model.state_dict(), "optimizers": [{"state": {i: {"momentum_buffer": torch.zeros_like(p)}
                                                                   for i, p in enumerate(model.parameters())}}]}


def checkpoint_checks(loaded, results: Path) -> list[Check]:
    folder = results / f".doctor-{threading.get_native_id()}"
    try:
        saved = _checkpoint_of(loaded)
        started = time.perf_counter()
        path = CheckpointSeries(folder, "last").save(saved, 0)
        wrote = time.perf_counter() - started
        size = path.stat().st_size
        started = time.perf_counter()
        back = read_checkpoint(path)
        read = time.perf_counter() - started
        equal = all(torch.equal(back["model"][k], v) for k, v in saved["model"].items())
    except OSError as err:
        return [Check("store", "checkpoint", "fail", f"cannot write under {results}: {err}",
                      note="give --results a folder this user can write")]
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    found = [Check("store", "checkpoint written, read back data-only", "pass" if equal else "fail",
                   f"{size / 2**20:.1f} MiB: written in {wrote:.2f} s, verified and read in {read:.2f} s",
                   "identical tensors", note="the store gives back other bytes than it was given")]
    jobs = len(loaded.jobs) if loaded is not None else 0
    needed = jobs * 3 * size  # the two newest `last` files and a `best` per run, at most
    free = shutil.disk_usage(results).free
    status = "fail" if free < needed else "warn" if free < 2 * needed else "pass"
    found.append(Check("store", "free disk for the checkpoints", status,
                       f"{free / GIB:.1f} GiB free under {results}; {jobs} run(s) x 3 checkpoints need "
                       f"{needed / GIB:.2f} GiB", ">= twice what the runs need",
                       note="free space, or give --results a larger disk"))
    return found


def tracking_check(results: Path) -> Check:
    """The tracking store answers, and takes and closes one run, within TRACKING_DEADLINE_S."""
    if importlib.util.find_spec("mlflow") is None:  # a bare GPU image: training works, tracking cannot
        return Check("store", "tracking store", "warn", "mlflow is not installed",
                     note="pip install mlflow (the suite's requirements) before running manifests")
    outcome: dict = {}

    def touch() -> None:
        try:
            started = time.perf_counter()
            tracker = Tracker(results)
            client = tracker.client
            run = client.create_run(tracker.experiment_id(DOCTOR_EXPERIMENT), run_name="doctor")
            client.set_terminated(run.info.run_id)
            outcome["ok"] = (tracker.uri, time.perf_counter() - started)
        except Exception as err:  # anything the store raises is this check's finding
            outcome["error"] = f"{type(err).__name__}: {str(err).splitlines()[0][:200] if str(err) else ''}"

    worker = threading.Thread(target=touch, daemon=True)
    worker.start()
    worker.join(TRACKING_DEADLINE_S)
    threshold = f"answers within {TRACKING_DEADLINE_S} s"
    note = "start the tracking server, or check MLFLOW_TRACKING_URI and --results"
    if "ok" in outcome:
        uri, seconds = outcome["ok"]
        return Check("store", "tracking store", "pass", f"{uri}: a run written and closed in {seconds:.1f} s",
                     threshold)
    what = outcome.get("error", f"no answer within {TRACKING_DEADLINE_S} s")
    return Check("store", "tracking store", "fail", what, threshold, note)


def checks(loaded, results: Path, figures=None) -> list[Check]:
    results.mkdir(parents=True, exist_ok=True)
    return [*checkpoint_checks(loaded, results), tracking_check(results)]
