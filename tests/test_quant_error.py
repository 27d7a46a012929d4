import math

import pytest
import torch

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
