"""One family definition per architecture: every ResNet the registry builds, single- or multi-branch, is the one
ResNet trunk with blocks of the one basic-block family; every MobileNetV1 is the one MobileNetV1 trunk."""
import pytest

from suite.methods import build_trainable
from suite.models.mobilenet import MobileNetV1
from suite.models.resnet import BasicBlock, ResNet


@pytest.mark.parametrize("method", ["mbquant", "anyprecision", "dedicated", "bitmixer"])
@pytest.mark.parametrize("arch", ["resnet8", "resnet18"])
def test_every_resnet_is_the_one_trunk_with_basic_blocks(method, arch):
    model = build_trainable(method, arch, 10, [2, 4], {}).model
    nets = [model.serving(b) for b in (2, 4)]
    nets = [getattr(net, "net", net) for net in nets]  # Bit-Mixer wraps the single-branch network
    for net in nets:
        assert type(net) is ResNet and net.arch == arch
        blocks = [m for stage in range(net.num_stages) for m in getattr(net, f"layer{stage + 1}")]
        assert blocks and all(isinstance(b, BasicBlock) for b in blocks)


@pytest.mark.parametrize("method", ["mbquant", "adabits"])
def test_every_mobilenet_is_the_one_trunk(method):
    assert isinstance(build_trainable(method, "mobilenetv1", 10, [2, 4], {}).model, MobileNetV1)
