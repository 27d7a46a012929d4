"""Speed of the trainer's joint step for every method (pytest-benchmark; skipped in the normal test run).

Run: tox -e bench   (or: pytest tests/benchmarks --benchmark-only; SUITE_BENCH_DEVICE=cuda on a GPU)
What is timed is ``suite.bench.make_train_step``: exactly the step ``fit`` takes. Goal: the 2-4-6-8 joint step
should approach the equal-FLOP limit of ten single-width full-precision passes (1 + 2 + 3 + 4 branch passes);
the FP32 single-width step of the same network (a dedicated model at 32 bits: plain convs) is its unit.
CIFAR ResNet-20 runs on every device; ImageNet ResNet-18 at 224x224 only on a GPU.
"""
import os

import pytest
import torch

from suite.bench import make_train_step
from suite.recipe import Recipe

DEVICE = torch.device(os.environ.get("SUITE_BENCH_DEVICE", "cpu"))
# (arch, batch, side, dataset): CIFAR at the batch that fits the CPU budget, ImageNet at half the paper's batch.
SHAPES = {"resnet20": (64, 32, "cifar100"), "resnet18": (128, 224, "imagenet")}
ARCHS = ["resnet20", "resnet18"] if DEVICE.type == "cuda" else ["resnet20"]
BITS = [2, 4, 6, 8]


def batch_for(arch):
    batch, side, dataset = SHAPES[arch]
    classes = 1000 if dataset == "imagenet" else 100
    gen = torch.Generator().manual_seed(0)
    return torch.randn(batch, 3, side, side, generator=gen), torch.randint(0, classes, (batch,), generator=gen)


def time_step(benchmark, arch, method, bits=BITS, options=None, compile=False):
    batch, side, dataset = SHAPES[arch]
    step = make_train_step(arch, dataset, bits, batch_for(arch), method, options, DEVICE, Recipe(compile=compile))
    name = torch.cuda.get_device_name(DEVICE) if DEVICE.type == "cuda" else f"cpu x{torch.get_num_threads()}"
    benchmark.extra_info.update(arch=arch, batch=batch, size=side, device=name, torch=torch.__version__)
    if DEVICE.type == "cuda":
        torch.cuda.reset_peak_memory_stats(DEVICE)
    benchmark.pedantic(step, rounds=5, warmup_rounds=1)
    if DEVICE.type == "cuda":
        benchmark.extra_info["peak_memory_gib"] = round(torch.cuda.max_memory_allocated(DEVICE) / 2**30, 2)


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("conv_impl", ["grouped", "dense"])
def test_mbquant_joint_step(benchmark, arch, conv_impl):
    time_step(benchmark, arch, "mbquant", options={"conv_impl": conv_impl})


@pytest.mark.parametrize("arch", ARCHS)
def test_mbquant_joint_step_compiled(benchmark, arch):
    """``recipe.compile``: the training forward through torch.compile (compiled during the warm-up round)."""
    time_step(benchmark, arch, "mbquant", compile=True)


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("name, options", [
    ("dedicated", {}), ("anyprecision", {"distillation": "recursive"}), ("adabits", {"grid": "centered"}),
    ("bitmixer", {}),
])
def test_baseline_joint_step(benchmark, arch, name, options):
    """The same 2-4-6-8 joint step for each baseline, with the options the Table 1 / 3 manifests use."""
    time_step(benchmark, arch, name, options=options)


@pytest.mark.parametrize("arch", ARCHS)
def test_fp32_single_width_step(benchmark, arch):
    """The unit of the equal-FLOP limit: one full-precision single-width step of the same network (x10 for 2-4-6-8)."""
    time_step(benchmark, arch, "dedicated", bits=[32])
