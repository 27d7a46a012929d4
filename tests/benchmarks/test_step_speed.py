"""Speed of MBQuant's joint training step (pytest-benchmark; skipped in the normal test run).

Run: tox -e bench   (or: pytest tests/benchmarks --benchmark-only; SUITE_BENCH_DEVICE=cuda on a GPU)
Goal: the 2-4-6-8 joint step should approach the equal-FLOP limit of ten single-width full-precision passes
(1 + 2 + 3 + 4 branch passes); the FP32 single-width step of the same network is measured beside it for that
ratio, and each baseline's joint step over the same bit-widths (four single-width passes) for comparison.
CIFAR ResNet-20 runs on every device; ImageNet ResNet-18 at 224x224 only on a GPU (minutes per step on a
laptop CPU).
"""
import dataclasses
import os

import pytest
import torch
from torch import nn

from suite.methods import METHODS
from suite.models import create_model
from suite.trainer import LOSS_POLICIES

DEVICE = torch.device(os.environ.get("SUITE_BENCH_DEVICE", "cpu"))
# (arch, batch, side, classes): CIFAR at the batch that fits the CPU budget, ImageNet at half the paper's batch.
SHAPES = {"resnet20": (64, 32, 100), "resnet18": (128, 224, 1000)}
ARCHS = ["resnet20", "resnet18"] if DEVICE.type == "cuda" else ["resnet20"]
BITS = [2, 4, 6, 8]


def synchronized(step):
    """A step that returns only once the device is done (CUDA kernels run asynchronously)."""
    def run(*args):
        step(*args)
        if DEVICE.type == "cuda":
            torch.cuda.synchronize()
    return run


@synchronized
def joint_step(trainable, x, y, opt):
    opt.zero_grad(set_to_none=True)
    earlier = []
    for b in reversed(trainable.bits):
        trainable.model.set_bits(b)
        logits = trainable.model(x)
        LOSS_POLICIES[trainable.loss_policy](logits, y, earlier).backward()
        earlier.append(logits.detach())
    opt.step()


@synchronized
def plain_step(model, x, y, opt):
    opt.zero_grad(set_to_none=True)
    nn.functional.cross_entropy(model(x), y).backward()
    opt.step()


def batch_for(arch):
    batch, side, classes = SHAPES[arch]
    torch.manual_seed(0)
    return torch.randn(batch, 3, side, side, device=DEVICE), torch.randint(0, classes, (batch,), device=DEVICE)


def timed(benchmark, arch, step, *args):
    batch, side, _ = SHAPES[arch]
    name = torch.cuda.get_device_name(DEVICE) if DEVICE.type == "cuda" else f"cpu x{torch.get_num_threads()}"
    benchmark.extra_info.update(arch=arch, batch=batch, size=side, device=name, torch=torch.__version__)
    if DEVICE.type == "cuda":
        torch.cuda.reset_peak_memory_stats(DEVICE)
    benchmark.pedantic(step, args=args, rounds=5, warmup_rounds=1)
    if DEVICE.type == "cuda":
        benchmark.extra_info["peak_memory_gib"] = round(torch.cuda.max_memory_allocated(DEVICE) / 2**30, 2)


def time_joint_step(benchmark, arch, name, options, compiled=False):
    """Build ``name`` on ``arch``, calibrate it on the device, then time its 2-4-6-8 joint step."""
    x, y = batch_for(arch)
    method = METHODS[name]
    t = method.build(arch, SHAPES[arch][2], BITS, method.Options(**options))
    t.model.to(DEVICE)
    if t.initialize:
        t.initialize(t.model, [(x[:32], y[:32])] * len(BITS))
    opt = torch.optim.SGD(t.model.parameters(), lr=0.01, momentum=0.9)
    if compiled:  # as ``recipe.compile``; joint_step calls set_bits on the wrapper, which forwards it to the model
        t = dataclasses.replace(t, model=torch.compile(t.model))
    timed(benchmark, arch, joint_step, t, x, y, opt)


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("conv_impl", ["grouped", "dense"])
def test_mbquant_joint_step(benchmark, arch, conv_impl):
    time_joint_step(benchmark, arch, "mbquant", {"conv_impl": conv_impl})


@pytest.mark.parametrize("arch", ARCHS)
def test_mbquant_joint_step_compiled(benchmark, arch):
    """``recipe.compile``: the training forward through torch.compile (compiled during the warm-up round)."""
    time_joint_step(benchmark, arch, "mbquant", {}, compiled=True)


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("name, options", [
    ("dedicated", {}), ("anyprecision", {"distillation": "recursive"}), ("adabits", {"grid": "centered"}),
    ("bitmixer", {}),
])
def test_baseline_joint_step(benchmark, arch, name, options):
    """The same 2-4-6-8 joint step for each baseline, with the options the Table 1 / 3 manifests use."""
    time_joint_step(benchmark, arch, name, options)


@pytest.mark.parametrize("arch", ARCHS)
def test_fp32_single_width_step(benchmark, arch):
    """The unit of the equal-FLOP limit: one plain full-precision step of the same network (x10 for 2-4-6-8)."""
    x, y = batch_for(arch)
    torch.manual_seed(0)
    model = create_model(arch, num_classes=SHAPES[arch][2], bits=[32], conv=lambda ci, co, k, s, p, groups=1: nn.Conv2d(
        ci, co, k, s, p, groups=groups, bias=False), norm=nn.BatchNorm2d).to(DEVICE)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    timed(benchmark, arch, plain_step, model, x, y, opt)
