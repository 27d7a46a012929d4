"""The baselines on the ImageNet architectures (single-branch ResNet-18/34 and MobileNetV1): topology against
torchvision / MBQuant's models, costs and storage against MBQuant's, Bit-Mixer's dataflow, one training step."""
import pytest
import torch
import torchvision
from pydantic import TypeAdapter
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from suite.costs import conv_macs, measure_cost
from suite.methods import METHODS
from suite.layers.lsq import TransitionalBatchNorm
from suite.models import create_model
from suite.trainer import Recipe, fit, seed_everything

BASELINES = ["dedicated", "anyprecision", "adabits", "bitmixer"]
ARCHS = ["resnet18", "mobilenetv1"]
BITS = [2, 4, 6, 8]


def build(name, arch, bits=BITS, classes=10, **options):
    seed_everything(0)
    method = METHODS[name]
    return method.build(arch, classes, bits, TypeAdapter(method.Options).validate_python(options))


def plain(arch, classes=1000):
    """The single-branch model with full-precision nn.Conv2d / nn.BatchNorm2d layers."""
    conv = lambda ci, co, k, s, p, groups=1: nn.Conv2d(ci, co, k, s, p, groups=groups, bias=False)  # noqa: E731
    return create_model(arch, num_classes=classes, bits=[32], conv=conv, norm=nn.BatchNorm2d)


@pytest.mark.parametrize("depth", [18, 34])
def test_single_branch_resnet_is_torchvisions(depth):
    """Same parameters in the same order, and the same function once torchvision's weights are copied in."""
    ours, reference = plain(f"resnet{depth}"), getattr(torchvision.models, f"resnet{depth}")()
    theirs = reference.state_dict()
    renamed = {k.replace("downsample", "shortcut"): v for k, v in theirs.items()}
    assert [(k, v.shape) for k, v in ours.state_dict().items()] == [(k, v.shape) for k, v in renamed.items()]
    ours.load_state_dict(renamed)
    ours.eval(), reference.eval()
    x = torch.randn(2, 3, 64, 64)
    torch.testing.assert_close(ours(x), reference(x))


def test_single_branch_mobilenet_is_one_branch_of_mbquants():
    """Every conv of the baseline MobileNetV1 has the shape of one of MBQuant's G stored branches."""
    ours = plain("mobilenetv1")
    mbquant = create_model("mbquant_mobilenetv1", num_classes=1000, bits=BITS)
    for name, *_ in mbquant.named_children():
        if not name.startswith("stage_"):
            continue
        block, ref = getattr(ours, name), getattr(mbquant, name).body
        for conv, ref_conv in ((block.depthwise, ref[0]), (block.pointwise, ref[3])):
            shape = ref_conv.weight.shape
            assert conv.weight.shape == (shape[0] // mbquant.branches, *shape[1:])
        assert block.depthwise.groups == block.depthwise.in_channels
    assert ours.head[0].weight.shape == mbquant.head[0].weight.shape
    assert ours.classifier.weight.shape == mbquant.classifier.weight.shape


def depthwise_macs(model, size):
    """MACs of one image through the depthwise convs of a single-branch MobileNetV1."""
    macs = []
    hooks = [m.register_forward_hook(lambda mod, inp, out: macs.append(conv_macs(out, mod.weight.shape)))
             for m in model.modules() if isinstance(m, nn.Conv2d) and m.groups > 1]
    with torch.no_grad():
        model.eval()(torch.zeros(1, *size))
    for h in hooks:
        h.remove()
    return sum(macs)


@pytest.mark.parametrize("arch", ARCHS)
def test_every_baseline_costs_what_mbquant_costs_at_every_bit_width(arch):
    """BitOPs = b*b*MACs over the same quantized layers as MBQuant's b-bit network (b/2 two-bit branches), and
    the hooks' MACs are all the MACs torch's FLOP counter sees.

    Except in MobileNetV1's depthwise convs: MBQuant runs one b-bit-weight depthwise conv per active branch,
    so those cost b/2 times a b-bit network's."""
    size = (3, 64, 64)
    mbquant = METHODS["mbquant"]
    reference = mbquant.build(arch, 10, BITS, mbquant.Options()).model
    dw = depthwise_macs(plain(arch, 10), size) if arch == "mobilenetv1" else 0
    assert (dw > 0) == (arch == "mobilenetv1")
    for name in BASELINES:
        model = build(name, arch).model
        for b in BITS:
            cost, expected = measure_cost(model, b, size), measure_cost(reference, b, size)
            assert cost.quantized_bitops == b * b * cost.quantized_macs, (name, b)
            assert expected.quantized_bitops - cost.quantized_bitops == (b // 2 - 1) * b * b * dw, (name, b)
            assert cost.fp_macs == expected.fp_macs, (name, b)
        with FlopCounterMode(display=False) as counter:  # torch's own count of the same forward: every MAC
            cost = measure_cost(model, 2, size)
        assert counter.get_total_flops() == 2 * (cost.quantized_macs + cost.fp_macs), name


@pytest.mark.parametrize("arch", ARCHS)
def test_storage_of_the_baselines_against_mbquants(arch):
    """Body weights stored per method, in units of one single-branch network's body weights N."""
    n = sum(m.weight.numel() for m in build("anyprecision", arch).model.modules() if hasattr(m, "macs_and_bitops"))
    mbquant = METHODS["mbquant"]
    branches = mbquant.storage_bits(mbquant.build(arch, 10, BITS, mbquant.Options()).model)["weights"]
    expected = {"dedicated": sum(BITS) * n, "anyprecision": 32 * n, "adabits": max(BITS) * n, "bitmixer": 32 * n}
    for name in BASELINES:
        assert METHODS[name].storage_bits(build(name, arch).model)["weights"] == expected[name], name
    if arch == "resnet18":
        assert branches == 4 * 2 * n  # MBQuant: G = 4 branches at 2 bits = AdaBits' nested 8-bit codes
    else:
        assert branches > 4 * 2 * n  # MobileNetV1's depthwise weights are stored at FP32 (grids do not nest)


def test_bitmixer_transitions_follow_mobilenets_dataflow():
    net = build("bitmixer", "mobilenetv1").model.net
    links = {norm: (conv, previous) for norm, conv, previous in net.dataflow()}
    assert set(links) == {m for m in net.modules() if isinstance(m, TransitionalBatchNorm)}
    first, second = net.stage_0_layer_0, net.stage_1_layer_0
    assert links[first.bn1] == (first.depthwise, None)
    assert links[first.bn2] == (first.pointwise, first.depthwise)
    assert links[second.bn1] == (second.depthwise, first.pointwise)
    assert len(first.bn1.bn) == len(BITS) and len(second.bn1.bn) == len(BITS) ** 2


def test_adabits_rescales_a_depthwise_conv_by_its_own_fan_out():
    """He et al.'s fan-out of a depthwise conv is k*k (each input channel feeds one output channel)."""
    conv = build("adabits", "mobilenetv1", grid="centered").model.stage_0_layer_0.depthwise
    conv.active_bits = 8
    assert conv.quantized_weight(conv.active_bits).std().item() == pytest.approx(1 / 3, rel=1e-4)


@pytest.mark.parametrize("name", BASELINES)
@pytest.mark.parametrize("arch", ARCHS)
def test_one_training_step_through_the_shared_trainer(tmp_path, name, arch):
    torch.manual_seed(0)
    data = [(torch.randn(4, 3, 32, 32), torch.randint(0, 10, (4,))) for _ in range(2)]
    options = {"grid": "centered"} if name == "adabits" else {}
    recipe = Recipe(epochs=1, batch_size=4, lr=0.01, device="cpu", steps_per_epoch=1)
    result = fit(build(name, arch, **options), data, data[:1], recipe, seed=0, run_dir=tmp_path, progress=False)
    losses = [result.history[0][f"train_loss_b{b}"] for b in BITS]
    assert all(torch.isfinite(torch.tensor(losses))) and set(result.final) == set(BITS)
