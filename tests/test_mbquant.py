"""MBQuant core: quantizers, the selection rule (against the release's measured slices), costs, BN isolation."""
import json
from pathlib import Path

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from suite.costs import measure_cost
from suite.methods import mbquant
from suite.layers.branch_selection import active_branches
from suite.layers.multibranch import MultiBranchConv
from suite.methods.common import calibrate
from suite.models import create_model
from suite.layers.quant import HALF_NORMAL_STD, discretize, quantize_activation, quantize_weight

SELECTION_ORACLE = Path(__file__).resolve().parent / "reference" / "cifar_resnet20_selection.json"
SETTINGS = {"2-4-6-8 (amortization)": ([2, 4, 6, 8], "amortization"), "2-3-4 (serial)": ([2, 3, 4], "serial")}


def calibrated(bits, strategy="amortization", variant="release", arch="resnet20", classes=10, seed=0):
    torch.manual_seed(seed)
    model = create_model(f"mbquant_{arch}", num_classes=classes, bits=bits, strategy=strategy,
                         release_quirks=variant == "release")
    calibrate(model, bits, [(torch.randn(8, 3, 16, 16), None) for _ in bits])
    return model


# -- quantizers ------------------------------------------------------------------------------------------


def test_weight_quantizer_has_four_symmetric_levels():
    w = torch.linspace(-2, 2, 1001)
    q = quantize_weight(w, torch.tensor(-1.0), torch.tensor(1.0))
    levels = sorted(set(q.tolist()))
    assert levels == pytest.approx([-1, -1 / 3, 1 / 3, 1])
    assert q[0] == -1 and q[-1] == 1  # clamped outside the bounds


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
def test_activation_quantizer_levels(bits):
    x = torch.linspace(-1, 3, 20001)
    q = quantize_activation(x, torch.tensor(0.0), torch.tensor(2.0), bits)
    levels = torch.unique(q)
    assert len(levels) == 2**bits
    assert levels.min() == 0 and levels.max() == 1
    assert torch.allclose(levels, torch.arange(2**bits) / (2**bits - 1))


def test_round_is_half_to_even_and_ste_passes_gradient():
    x = torch.tensor([0.5, 1.5, 2.5]) / 3  # x * 3 lands exactly on .5 ties
    assert (discretize(x, 4) * 3).tolist() == [0.0, 2.0, 2.0]
    x = torch.rand(100, requires_grad=True)
    discretize(x, 16).sum().backward()
    assert torch.equal(x.grad, torch.ones(100))


def test_bounds_receive_gradients_through_the_clamp():
    lo, hi = torch.tensor(-0.5, requires_grad=True), torch.tensor(0.5, requires_grad=True)
    x = torch.randn(1000)
    quantize_weight(x, lo, hi).pow(2).sum().backward()
    assert lo.grad != 0 and hi.grad != 0


# -- selection ---------------------------------------------------------------------------------------------


def test_selection_tables():
    amortized = {b: active_branches(b, "amortization") for b in (2, 4, 6, 8)}
    serial = {b: active_branches(b, "serial") for b in (2, 3, 4, 6, 8)}
    assert amortized == {2: [0], 4: [1, 2], 6: [1, 2, 3], 8: [0, 1, 2, 3]}
    assert serial == {2: [0], 3: [0, 1], 4: [0, 1], 6: [0, 1, 2], 8: [0, 1, 2, 3]}


@pytest.mark.parametrize("setting", SETTINGS)
def test_every_conv_reads_the_release_slices(setting):
    """Rows, columns and input channels of every quantized conv at every bit-width = the release's, measured."""
    oracle = json.loads(SELECTION_ORACLE.read_text())["settings"][setting]
    bits, strategy = SETTINGS[setting]
    model = calibrated(bits, strategy)
    seen = {}
    for name, m in model.named_modules():
        if isinstance(m, MultiBranchConv):
            m.register_forward_hook(lambda mod, inp, out, name=name: seen.__setitem__(name, inp[0].shape[1]))
    for b in bits:
        model.set_bits(b)
        model(torch.randn(2, 3, 16, 16))
        convs = dict(model.named_modules())
        assert {e["conv"] for e in oracle[str(b)]} == set(seen)
        for e in oracle[str(b)]:
            sl = convs[e["conv"]].slices(b)
            assert list(sl.rows) == e["main_weight"]["rows"], (b, e["conv"])
            assert [0, convs[e["conv"]].ci] == e["main_weight"]["cols"]
            assert list(sl.inputs) == e["main_input"]["channels"], (b, e["conv"])
            if convs[e["conv"]].reads_stem:
                # The release tiles the 64-channel stem 4x (256) but reads only channels below 64; the suite
                # skips the tiling, so the first conv sees the 64 channels themselves.
                assert seen[e["conv"]] == 64 and e["main_input"]["of"] == 256
                assert max(e["main_input"]["channels"][1], (e["partial_input"] or {"channels": [0, 0]})["channels"][1]) <= 64
            else:
                assert seen[e["conv"]] == e["main_input"]["of"], (b, e["conv"])
            if e["partial_weight"] is None:
                assert sl.partial is None
            else:
                rows, cols, inputs, slot = sl.partial
                assert [list(rows), list(cols), list(inputs)] == [
                    e["partial_weight"]["rows"], e["partial_weight"]["cols"], e["partial_input"]["channels"]]


def test_clean_variant_aligns_rows_and_bounds_to_branches():
    model = calibrated([2, 4, 6, 8], variant="clean")
    conv = model.layer2[0].conv1  # ci 16 != co 32: misaligned in the release (quirk 2)
    assert conv.slices(4).rows == (32, 96) and conv.slices(4).slots == (1, 3)
    release = calibrated([2, 4, 6, 8]).layer2[0].conv1
    assert release.slices(4).rows == (16, 80) and release.slices(4).slots == (0, 2)


def test_unservable_bit_widths_raise():
    model = calibrated([2, 4, 6, 8])
    with pytest.raises(ValueError, match="bit-width 3 cannot be served"):
        model.set_bits(3)
    with pytest.raises(ValueError, match="odd bit-widths only at 3 bits"):
        mbquant.check_bits([2, 5], mbquant.Options(selection="serial"))
    with pytest.raises(ValueError, match="selection: serial"):
        mbquant.check_bits([2, 3, 4], mbquant.Options(selection="amortization"))
    with pytest.raises(ValueError, match="outside 2..8"):
        mbquant.check_bits([2, 10], mbquant.Options())


# -- calibration, shapes, BN ---------------------------------------------------------------------------------


def test_calibration_follows_the_release():
    model = calibrated([2, 4, 6, 8])
    conv = model.layer1[1].conv1
    for s in range(4):  # quirk 1: slot s from output filter s of the whole stored weight
        assert conv.w_upper[s].item() == pytest.approx(3 * conv.weight[s].std().item())
        assert conv.w_lower[s].item() == -conv.w_upper[s].item()
    # Slots beyond b/2 are only written by wider bit-widths; odd columns never.
    assert (conv.a_upper[:, [1, 3, 5]] == 0).all()
    assert (conv.a_upper[:1, 0] != 0).all() and (conv.a_upper[1:, 0] == 0).all()
    assert (conv.a_upper[:, 6] != 0).all()


def test_activation_bounds_are_three_half_normal_sigmas():
    conv = MultiBranchConv(4, 4, 1, branches=4, partial=(2, 2), strategy="serial", release_quirks=True)
    torch.nn.init.normal_(conv.weight)
    conv.active_bits, conv.calibrating = 2, True
    x = torch.rand(16, 4, 5, 5)
    conv(x)
    assert conv.a_lower[0, 0].item() == pytest.approx(x.min().item())
    assert conv.a_upper[0, 0].item() == pytest.approx(3 * x.std().item() / HALF_NORMAL_STD)


@pytest.mark.parametrize("bits,strategy", [([2, 4, 6, 8], "amortization"), ([2, 3, 4], "serial")])
def test_forward_shapes_at_every_bit_width(bits, strategy):
    model = calibrated(bits, strategy, classes=7)
    for b in bits:
        model.set_bits(b)
        out = model(torch.randn(3, 3, 16, 16))
        assert out.shape == (3, 7) and torch.isfinite(out).all()


def test_training_one_bit_width_leaves_other_bit_widths_bn_untouched():
    model = calibrated([2, 4, 6, 8])
    before = {k: v.clone() for k, v in model.state_dict().items()}
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model.train()
    model.set_bits(4)
    for _ in range(2):
        opt.zero_grad()
        model(torch.randn(4, 3, 16, 16)).sum().backward()
        opt.step()
    after = model.state_dict()
    bn_keys = [k for k in after if ".bn." in k]
    changed = {k for k in bn_keys if not torch.equal(before[k], after[k])}
    assert changed and all(".bn.2." in k for k in changed)  # index b - 2 = 2 only
    assert not torch.equal(before["bn1.running_mean"], after["bn1.running_mean"])  # the stem BN is shared


# -- cost ------------------------------------------------------------------------------------------------------


def _quantized_conv_flops(model, b, size=16):
    model.eval()
    model.set_bits(b)
    with FlopCounterMode(display=False) as counter:
        model(torch.zeros(1, 3, size, size))
    counts = counter.get_flop_counts()
    names = [n for n, m in model.named_modules() if isinstance(m, MultiBranchConv)]
    prefix = type(model).__name__ + "."
    return sum(sum(counts[prefix + n].values()) for n in names if prefix + n in counts)


@pytest.mark.parametrize("bits,strategy", [([2, 4, 6, 8], "amortization"), ([2, 3, 4], "serial")])
def test_bitops_equal_one_b_bit_network(bits, strategy):
    """b/2 branches x 2-bit weights x b-bit activations = b*b BitOPs per MAC of the original network."""
    model = calibrated(bits, strategy)
    base_macs = measure_cost(model, 2, (3, 16, 16)).quantized_macs  # one branch = the original ResNet-20 body
    for b in bits:
        cost = measure_cost(model, b, (3, 16, 16))
        assert cost.quantized_macs * 2 == _quantized_conv_flops(model, b)  # independent count: torch's
        if b % 2 == 0:
            assert cost.quantized_bitops == b * b * base_macs
        else:  # the partial branch: between the (b-1)- and (b+1)-bit networks
            assert (b - 1) ** 2 * base_macs < cost.quantized_bitops < (b + 1) ** 2 * base_macs


def test_dense_per_branch_convs_compute_the_grouped_result():
    grouped = calibrated([2, 4, 6, 8])
    dense = create_model("mbquant_resnet20", num_classes=10, bits=[2, 4, 6, 8], conv_impl="dense")
    dense.load_state_dict(grouped.state_dict())
    x = torch.randn(4, 3, 16, 16)
    for m in (grouped, dense):
        m.eval()
    for b in (2, 4, 6, 8):
        grouped.set_bits(b)
        dense.set_bits(b)
        assert torch.allclose(grouped(x), dense(x), atol=1e-4)
