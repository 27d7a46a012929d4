import math

import pytest
import torch
import torch.nn.functional as F

from suite.analyses import QUANT_ERROR
from suite.layers.multibranch import MultiBranchConv
from suite.methods import adabits, anyprecision, mbquant
from suite.quant_error import KINDS, measure_switching_error, summarize

BITS = [2, 4, 6, 8]


def _built(module, options, bits=BITS, seed=0):
    torch.manual_seed(seed)
    trainable = module.build("resnet8", 10, bits, options)
    x = torch.randn(8, 3, 16, 16)
    trainable.initialize(trainable.model, [(x, None)] * len(bits)) if trainable.initialize else None
    return trainable.model, torch.randn(4, 3, 16, 16)


def _check_shape_and_restore(model, table, bits):
    B = max(bits)
    assert set(table["bits"]) == set(bits) - {B}
    assert list(table.columns) == ["layer", "depth", "bits", "weight_error", "weight_datapath_error",
                                   "activation_error", "output_drift", "bn_drift"]
    logits = table[table["layer"] == "logits"]
    assert len(logits) == len(bits) - 1
    assert all(math.isfinite(v) and v >= 0 for v in logits["output_drift"])
    layers = table[table["layer"] != "logits"]
    assert layers[list(KINDS)].notna().all().all()  # every layer is followed by a BN


@pytest.fixture(scope="module")
def mb_clean():
    return _built(mbquant, mbquant.Options(variant="clean"))


@pytest.fixture(scope="module")
def mb_release():
    return _built(mbquant, mbquant.Options(variant="release"))


def test_mbquant_clean_weights_do_not_switch(mb_clean):
    model, batch = mb_clean
    model.set_bits(4)
    model.train()
    table = measure_switching_error(model, BITS, batch)
    _check_shape_and_restore(model, table, BITS)
    layers = table[table["layer"] != "logits"]
    assert (layers["weight_error"] == 0).all()
    assert (layers["activation_error"] > 0).any()  # activations do switch
    # restored: bit-width 4 and train mode
    assert model.training and all(m.training for m in model.modules())
    assert all(m.active_bits == 4 for m in model.modules() if hasattr(m, "active_bits"))
    s = summarize(table)
    assert s["qerr_weight_b4"] == 0 and {"qerr_act_b2", "qerr_drift_b6", "qerr_logits_b2"} <= s.keys()


def test_mbquant_release_slot_indexed_bounds_switch_weights(mb_release):
    model, batch = mb_release
    model.eval()
    table = measure_switching_error(model, BITS, batch)
    _check_shape_and_restore(model, table, BITS)
    assert not model.training
    layers = table[table["layer"] != "logits"]
    assert (layers[layers["bits"] == 2]["weight_error"] == 0).all()
    assert (layers[layers["bits"].isin([4, 6])]["weight_error"] > 0).any()


def test_anyprecision_weight_error_shrinks_toward_top_bits():
    model, batch = _built(anyprecision, anyprecision.Options())
    table = measure_switching_error(model, BITS, batch)
    _check_shape_and_restore(model, table, BITS)
    layers = table[table["layer"] != "logits"]
    assert (layers["weight_error"] > 0).all()
    for _, per_layer in layers.groupby("layer"):
        errors = per_layer.sort_values("bits")["weight_error"].tolist()
        assert errors == sorted(errors, reverse=True)
    s = summarize(table)
    assert s["qerr_weight_b2"] > s["qerr_weight_b4"] > s["qerr_weight_b6"] > 0


def test_adabits_and_top_bit_excluded():
    model, batch = _built(adabits, adabits.Options())
    table = measure_switching_error(model, [2, 4], batch)
    _check_shape_and_restore(model, table, [2, 4])
    assert set(table["bits"]) == {2}
    layers = table[table["layer"] != "logits"]
    assert (layers["weight_error"] > 0).all() and (layers["activation_error"] > 0).all()
    assert list(layers["depth"]) == list(range(len(layers)))


def test_bn_drift_of_a_baseline_is_the_relative_error_of_each_conv_s_bn_output():
    """By hand, with the (BN, conv) pairs of the model's own dataflow."""
    model, batch = _built(anyprecision, anyprecision.Options())
    with torch.no_grad():  # per-bit BNs that differ from the identity, so that they show in the drift
        for bn in model.modules():
            if isinstance(bn, torch.nn.BatchNorm2d):
                bn.running_mean.normal_(), bn.running_var.uniform_(0.5, 2.0), bn.weight.normal_(), bn.bias.normal_()
    table = measure_switching_error(model, BITS, batch).set_index(["layer", "bits"])
    names = {m: n for n, m in model.named_modules()}
    outputs = {}
    handles = [bn.register_forward_hook(lambda m, i, o, key=names[conv]: outputs.__setitem__(key, o.clone()))
               for bn, conv, _ in model.dataflow()]
    model.eval()
    at = {}
    with torch.no_grad():
        for b in (2, 8):
            model.set_bits(b)
            model(batch)
            at[b] = dict(outputs)
    for h in handles:
        h.remove()
    assert len(at[8]) == 8  # ResNet-8: 3 blocks x 2 convs + 2 shortcuts
    for name, ref in at[8].items():
        expected = float((at[2][name] - ref).norm() / ref.norm())
        assert table.loc[(name, 2), "bn_drift"] == pytest.approx(expected, rel=1e-5)
        assert table.loc[(name, 2), "bn_drift"] != pytest.approx(table.loc[(name, 2), "output_drift"])


def test_a_release_conv_with_ci_ne_co_pairs_its_weights_with_the_outputs_they_compute():
    """Quirk 2: at 4 bits the release reads rows [ci, ci + 2co), so stored row and data-path position part."""
    torch.manual_seed(0)
    ci, co = 4, 8
    conv = MultiBranchConv(ci, co, 1, branches=4, partial=(co, ci), strategy="amortization", release_quirks=True)
    with torch.no_grad():
        conv.weight.normal_()
        conv.w_lower.fill_(-1.0), conv.w_upper.fill_(1.0), conv.a_lower.fill_(0.0), conv.a_upper.fill_(1.0)
    x = torch.rand(2, 2 * ci, 3, 3)
    conv.active_bits = 4
    with torch.no_grad():
        placed = conv.output_layout(conv(x), 4)
    inputs = conv.quantized_input(conv.input_layout(x, 4), 4)
    datapath, stored = conv.datapath_weight(4), conv.quantized_weight(4)
    for g in (1, 2):  # the branches a 4-bit forward runs
        computed = F.conv2d(inputs[:, g * ci:(g + 1) * ci], datapath[g * co:(g + 1) * co])
        assert torch.allclose(placed[:, g * co:(g + 1) * co], computed, atol=1e-6)
        rows = stored[g * co:(g + 1) * co]
        assert not torch.allclose(rows.nan_to_num(), datapath[g * co:(g + 1) * co])  # other filters in that place
    assert torch.equal(conv.datapath_weight(8).isnan(), conv.quantized_weight(8).isnan())  # aligned at B


def test_release_weight_columns_part_exactly_on_the_misaligned_convs(mb_release, mb_clean):
    release = measure_switching_error(mb_release[0], BITS, mb_release[1])
    layers = release[release["layer"] != "logits"]
    misaligned = layers["layer"].isin(["layer2.0.conv1", "layer2.0.shortcut.0", "layer3.0.conv1",
                                       "layer3.0.shortcut.0"]) & layers["bits"].isin([4, 6])
    same = layers["weight_error"] == layers["weight_datapath_error"]
    assert same[~misaligned].all() and not same[misaligned].any()
    assert (layers[misaligned]["weight_datapath_error"] > layers[misaligned]["weight_error"]).all()
    clean = measure_switching_error(mb_clean[0], BITS, mb_clean[1])
    assert (clean[clean["layer"] != "logits"][["weight_error", "weight_datapath_error"]] == 0).all().all()


def test_every_measured_kind_is_a_logged_kind():
    assert set(KINDS.values()) | {"logits"} == set(QUANT_ERROR.kinds)
