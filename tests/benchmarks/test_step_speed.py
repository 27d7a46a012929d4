"""Speed of the trainer's joint step for every method (pytest-benchmark; skipped in the normal test run).

Run: tox -e bench   (or: pytest tests/benchmarks --benchmark-only; add --benchmark-compare to set the run beside
the last saved record). SUITE_BENCH_DEVICE=cuda times on a GPU (ImageNet ResNet-18 too, with peak memory);
SUITE_BENCH_COMPILE=1 adds MBQuant's step through torch.compile (minutes of compilation on a CPU).

What is timed is ``suite.bench.make_train_step``: exactly the step ``fit`` takes. Goal: the 2-4-6-8 joint step
should approach the equal-FLOP limit of ten single-width full-precision passes (1 + 2 + 3 + 4 branch passes);
the FP32 single-width step of the same network (a dedicated model at 32 bits: plain convs) is its unit. Every
method's joint step is set against that same limit; the session ends with the table (``conftest.py``).
CIFAR ResNet-20 at batch 128 runs on every device (2 threads on a CPU); ImageNet ResNet-18 at 224x224 only on a GPU.
"""
import os
import statistics
import time

import pytest
import torch

from suite.bench import equal_flop_passes, make_train_step
from suite.recipe import Recipe

DEVICE = torch.device(os.environ.get("SUITE_BENCH_DEVICE", "cpu"))
# (batch, side, dataset, classes): the paper's CIFAR batch; ImageNet at half the paper's batch
SHAPES = {"resnet20": (128, 32, "cifar100", 100), "resnet18": (128, 224, "imagenet", 1000)}
ARCHS = ["resnet20", "resnet18"] if DEVICE.type == "cuda" else ["resnet20"]
BITS = [2, 4, 6, 8]
# joint steps: label -> (method, options), the options the Table 1 / 3 manifests use
JOINT = {
    "mbquant": ("mbquant", {}),
    "mbquant (dense convs)": ("mbquant", {"conv_impl": "dense"}),
    "dedicated": ("dedicated", {}),
    "anyprecision": ("anyprecision", {"distillation": "recursive"}),
    "adabits": ("adabits", {"grid": "centered"}),
    "bitmixer": ("bitmixer", {}),
}


def batch_for(arch):
    batch, side, _, classes = SHAPES[arch]
    gen = torch.Generator().manual_seed(0)
    return torch.randn(batch, 3, side, side, generator=gen), torch.randint(0, classes, (batch,), generator=gen)


def fp32_step(arch):
    """The FP32 single-width step (a dedicated model at 32 bits: plain convs), the equal-FLOP limit's unit."""
    batch, side, dataset, _ = SHAPES[arch]
    return make_train_step(arch, dataset, [32], batch_for(arch), "dedicated", None, DEVICE)


def time_step(benchmark, arch, method, *, label, bits=BITS, options=None, compile=False, with_unit=True):
    """Time ``method``'s step. ``with_unit``: an FP32 step runs before every round (untimed by the benchmark) and
    its median goes into ``unit_seconds``, the limit measured alongside, under the same load on a shared machine."""
    batch, side, dataset, _ = SHAPES[arch]
    step = make_train_step(arch, dataset, bits, batch_for(arch), method, options, DEVICE, Recipe(compile=compile))
    name = torch.cuda.get_device_name(DEVICE) if DEVICE.type == "cuda" else f"cpu x{torch.get_num_threads()}"
    benchmark.extra_info.update(
        arch=arch, step=label, bits=bits, batch=batch, size=side, device=name, torch=torch.__version__,
        role="unit" if bits == [32] else "joint", equal_flop_passes=equal_flop_passes(bits),
        omp_wait_policy=os.environ.get("OMP_WAIT_POLICY", "unset"), loadavg=round(os.getloadavg()[0], 2),
    )
    if DEVICE.type == "cuda":  # the peak of one step, before the FP32 unit's model exists beside it
        step()
        torch.cuda.reset_peak_memory_stats(DEVICE)
        step()
        benchmark.extra_info["peak_memory_gib"] = round(torch.cuda.max_memory_allocated(DEVICE) / 2**30, 2)
    unit, unit_times = (fp32_step(arch) if with_unit else None), []

    def run_unit():
        start = time.perf_counter()
        unit()
        unit_times.append(time.perf_counter() - start)

    benchmark.pedantic(step, setup=run_unit if unit else None, rounds=5, warmup_rounds=1)
    if unit:
        benchmark.extra_info["unit_seconds"] = statistics.median(unit_times)


@pytest.mark.parametrize("arch", ARCHS)
def test_fp32_single_width_step(step_benchmark, arch):
    """The unit of the equal-FLOP limit: one full-precision single-width step of the same network (x10 for 2-4-6-8)."""
    time_step(step_benchmark, arch, "dedicated", label="fp32 single-width", bits=[32], with_unit=False)


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("label", JOINT)
def test_joint_step(step_benchmark, arch, label):
    """The 2-4-6-8 joint step of each method (MBQuant with grouped and with per-branch dense convs)."""
    method, options = JOINT[label]
    time_step(step_benchmark, arch, method, label=label, options=options)


@pytest.mark.skipif(not os.environ.get("SUITE_BENCH_COMPILE"),
                    reason="opt-in (SUITE_BENCH_COMPILE=1): compiling takes minutes on a CPU")
@pytest.mark.parametrize("arch", ARCHS)
def test_mbquant_joint_step_compiled(step_benchmark, arch):
    """``recipe.compile``: the training forward through torch.compile (compiled during the warm-up round)."""
    time_step(step_benchmark, arch, "mbquant", label="mbquant (torch.compile)", compile=True)
