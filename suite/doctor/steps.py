"""Doctor: every arm's joint step at its per-process batch, in the manifest's precision, eager and compiled; its
peak memory against the device's; the plan's bill from these figures; how many small jobs fill one GPU."""
from __future__ import annotations

import json
import math
import resource
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from suite.bench import make_train_step
from suite.data import num_classes
from suite.doctor.checks import Check, Options
from suite.doctor.environment import GIB, device_memory
from suite.plan import plan
from suite.recipe import Recipe
from suite.rng import seed_everything
from suite.trainer import resolve_device

TIMED_STEPS = 3
LAUNCH_BOUND_S = 0.25  # a step shorter than this leaves a GPU mostly idle: worth sharing it between jobs
SHARED_GPU_JOBS = (2, 4)  # jobs per GPU tried when the step is launch-bound
THROUGHPUT_SECONDS = 8.0  # each sharing job's timed steps
COMPILED_LOSS_RTOL = 1e-3  # a compiled step's losses against the eager step's, from the same state and batch


@dataclass
class StepFigures:
    seconds: float  # one joint step at the per-process batch
    images_per_s: float
    peak_bytes: int
    world: int  # processes per job: the step's time is per process
    compiled_seconds: float | None = None
    compile_seconds: float | None = None
    compiled_agrees: bool | None = None  # the compiled step's losses equal the eager step's (COMPILED_LOSS_RTOL)


@dataclass
class Figures:
    """What the step checks measured, for the data and store checks."""

    steps: dict[str, StepFigures] = field(default_factory=dict)  # by arm name


def processes_per_job(loaded) -> int:
    cluster = loaded.manifest.cluster
    return cluster.gpus_per_job if cluster and resolve_device(loaded.manifest.recipe.device).type == "cuda" else 1


def _probe_batch(cfg, per_process: int, device: torch.device):
    size, classes = cfg.data.image_size, num_classes(cfg.data.dataset)
    gen = torch.Generator().manual_seed(0)
    return torch.randn(per_process, 3, size, size, generator=gen), torch.randint(0, classes, (per_process,), generator=gen)


def _build(cfg, batch, device: torch.device, compiled: bool):
    seed_everything(0)
    r = cfg.recipe
    recipe = Recipe(device=str(device), precision=r.precision, deterministic=r.deterministic, compile=compiled,
                    compile_mode=r.compile_mode if compiled else "default")
    return make_train_step(cfg.model.arch, cfg.data.dataset, cfg.method.bits, batch, cfg.method.name,
                           cfg.method.options, device, recipe)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _time(step, device: torch.device, repeats: int = TIMED_STEPS) -> float:
    _sync(device)
    started = time.perf_counter()
    for _ in range(repeats):
        step()
    _sync(device)
    return (time.perf_counter() - started) / repeats


def peak_memory(device: torch.device) -> int:
    """Bytes: the GPU's allocated peak since the last reset, or this process's peak resident memory (an upper
    bound for the step: everything the process holds counts)."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device)
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def measure(cfg, per_process: int, device: torch.device, compiled: bool) -> StepFigures:
    batch = _probe_batch(cfg, per_process, device)
    step = _build(cfg, batch, device, False)
    step()  # warm-up: allocation, kernel selection, lazy quantizer initialisation
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    seconds = _time(step, device)
    figures = StepFigures(seconds, per_process / seconds, peak_memory(device), 1)
    if compiled:
        eager_losses = _build(cfg, batch, device, False)()
        graph = _build(cfg, batch, device, True)
        started = time.perf_counter()
        graph_losses = graph()
        _sync(device)
        figures.compile_seconds = time.perf_counter() - started
        graph()  # CUDA graphs are recorded on a later call than the first
        figures.compiled_seconds = _time(graph, device)
        figures.compiled_agrees = all(
            math.isclose(graph_losses[b].item(), eager_losses[b].item(), rel_tol=COMPILED_LOSS_RTOL)
            for b in eager_losses)
    return figures


def _which_compiled(loaded, options: Options, device: torch.device) -> set[str]:
    names = [a.name for a in loaded.arms]
    choice = options.compile if options.compile != "auto" else ("first" if device.type == "cuda" else "none")
    return {"none": set(), "first": set(names[:1]), "all": set(names)}[choice]


def checks(loaded, options: Options) -> tuple[Figures, list[Check]]:
    figures, found = Figures(), []
    world = processes_per_job(loaded)
    compiled = _which_compiled(loaded, options, resolve_device(loaded.manifest.recipe.device))
    measured: dict[str, StepFigures] = {}  # one measurement per distinct step configuration
    for arm in loaded.arms:
        cfg = arm.config
        device = resolve_device(cfg.recipe.device)
        per_process = cfg.recipe.batch_size // world
        key = json.dumps([cfg.model.arch, cfg.method.model_dump(mode="json"), cfg.data.image_size,
                          cfg.data.dataset, per_process, cfg.recipe.precision, str(device), arm.name in compiled])
        if key not in measured:
            measured[key] = measure(cfg, per_process, device, arm.name in compiled)
        f = figures.steps[arm.name] = measured[key]
        f.world = world
        budget = options.memory_gib * GIB if options.memory_gib is not None else device_memory(device)
        status = "fail" if f.peak_bytes > budget else "warn" if f.peak_bytes > 0.9 * budget else "pass"
        what = "peak allocated" if device.type == "cuda" else "process peak RSS"
        found.append(Check(
            "step", f"{arm.name}: joint step", status,
            f"{f.seconds:.3f} s at batch {per_process} ({f.images_per_s:,.0f} img/s, {cfg.recipe.precision}, "
            f"{device}); {what} {f.peak_bytes / GIB:.2f} GiB", f"memory <= {budget / GIB:.1f} GiB",
            note="lower recipe.batch_size (more processes per job: cluster.gpus_per_job), or precision bf16"))
        if f.compiled_seconds is not None:
            agrees = f.compiled_agrees
            found.append(Check(
                "step", f"{arm.name}: compiled step ({cfg.recipe.compile_mode})", "pass" if agrees else "fail",
                f"{f.compiled_seconds:.3f} s ({f.seconds / f.compiled_seconds:.2f}x eager), compiled in "
                f"{f.compile_seconds:.0f} s; losses {'equal' if agrees else 'differ from'} eager's",
                f"losses within {COMPILED_LOSS_RTOL:g} of eager",
                note="the compiled step computes something else than the eager one: keep recipe.compile false"))
    # The plan's bill: each arm's measured step, per process, times the processes of a job.
    rows = plan(loaded, options.results, step_seconds={name: f.seconds * f.world for name, f in figures.steps.items()},
                echo=lambda _: None)
    hours = sum(r.hours for r in rows)
    found.append(Check("step", "plan's bill from these steps", "pass",
                       f"{hours:,.1f} device-hours for {sum(r.steps_left > 0 for r in rows)} job(s) to run"))
    found.append(_shared_gpu(loaded, figures, hours))
    return figures, found


def _shared_gpu(loaded, figures: Figures, hours: float) -> Check:
    """On a GPU whose step is launch-bound: the throughput of K jobs sharing it, and the K to use."""
    arm = loaded.arms[0]
    device, f = resolve_device(arm.config.recipe.device), figures.steps[arm.name]
    if device.type != "cuda" or f.seconds >= LAUNCH_BOUND_S:
        why = "a CPU" if device.type != "cuda" else f"the step takes {f.seconds:.2f} s: it fills the GPU"
        return Check("step", "jobs per GPU", "pass", f"1 (not measured: {why})")
    budget = device_memory(device)
    gains = {1: 1.0}
    for k in SHARED_GPU_JOBS:
        if k * f.peak_bytes > 0.9 * budget:
            break
        gains[k] = shared_throughput(arm, k) / (f.images_per_s or 1)
    best = 1
    for k in sorted(gains)[1:]:  # each doubling must pay: at least 10 % more throughput than half as many jobs
        if gains[k] >= 1.1 * gains[best]:
            best = k
    return Check("step", "jobs per GPU", "pass",
                 ", ".join(f"K={k}: {g:.2f}x" for k, g in gains.items()) + f" one job's throughput; suggested K={best}"
                 f" (--jobs-per-gpu {best}; plan --jobs-per-gpu {best} --gain {gains[best]:.2f}): "
                 f"{hours / gains[best]:,.1f} wall hours on one GPU",
                 f"K: >= 10 % more throughput than K/2; memory <= 90 % of {budget / GIB:.0f} GiB")


def shared_throughput(arm, k: int) -> float:
    """Images/s of ``k`` processes running ``arm``'s step at once on this GPU (``suite.doctor.throughput``)."""
    cfg = arm.config
    with tempfile.TemporaryDirectory() as tmp:
        spec = Path(tmp) / "arm.json"
        spec.write_text(json.dumps(cfg.model_dump(mode="json")))
        procs = [subprocess.Popen([sys.executable, "-m", "suite.doctor.throughput", str(spec),
                                   str(THROUGHPUT_SECONDS), str(k), tmp, str(i)]) for i in range(k)]
        for p in procs:
            p.wait(timeout=300)
        rates = [json.loads((Path(tmp) / f"{i}.json").read_text())["images_per_s"] for i in range(k)
                 if (Path(tmp) / f"{i}.json").exists()]
    return sum(rates)
