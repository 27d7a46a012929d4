"""Speed of MBQuant's joint training step (pytest-benchmark; skipped in the normal test run).

Run: tox -e bench   (or: pytest tests/benchmarks --benchmark-only)
Goal: the 2-4-6-8 joint step of ResNet-20 should approach the equal-FLOP limit of
ten single-width full-precision passes; the FP32 single-width step is measured beside it for that ratio.
"""
import pytest
import torch
from torch import nn

from suite.methods import mbquant
from suite.models import create_model
from suite.trainer import LOSS_POLICIES

BATCH, SIZE = 64, 32


def joint_step(trainable, x, y, opt):
    opt.zero_grad(set_to_none=True)
    earlier = []
    for b in reversed(trainable.bits):
        trainable.model.set_bits(b)
        logits = trainable.model(x)
        LOSS_POLICIES[trainable.loss_policy](logits, y, earlier).backward()
        earlier.append(logits.detach())
    opt.step()


@pytest.fixture
def batch():
    torch.manual_seed(0)
    return torch.randn(BATCH, 3, SIZE, SIZE), torch.randint(0, 100, (BATCH,))


@pytest.mark.parametrize("conv_impl", ["grouped", "dense"])
def test_mbquant_joint_step(benchmark, batch, conv_impl):
    x, y = batch
    t = mbquant.build("resnet20", 100, [2, 4, 6, 8], mbquant.Options(conv_impl=conv_impl))
    mbquant.calibrate(t.model, t.bits, [batch] * 4)
    opt = torch.optim.SGD(t.model.parameters(), lr=0.01, momentum=0.9)
    benchmark.extra_info.update(batch=BATCH, size=SIZE, threads=torch.get_num_threads())
    benchmark.pedantic(joint_step, args=(t, x, y, opt), rounds=5, warmup_rounds=1)


def test_fp32_single_width_step(benchmark, batch):
    """The unit of the equal-FLOP limit: one plain full-precision ResNet-20 step (x10 for 2-4-6-8)."""
    x, y = batch
    torch.manual_seed(0)
    model = create_model("resnet20", num_classes=100, bits=[32], conv=lambda ci, co, k, s, p: nn.Conv2d(
        ci, co, k, s, p, bias=False), norm=nn.BatchNorm2d)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)

    def step():
        opt.zero_grad(set_to_none=True)
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()

    benchmark.pedantic(step, rounds=5, warmup_rounds=1)
