"""Bit-Mixer: LSQ quantizer, transitional BN indexing, layer-wise sampling, schedule, costs, storage, training."""
from __future__ import annotations

import itertools

import pytest
import torch
from pydantic import TypeAdapter, ValidationError

from suite.costs import measure_cost
from suite.methods import bitmixer as bm
from suite.layers.lsq import TransitionalBatchNorm, activation_range, lsq_quantize, transition_key, weight_range
from suite.methods import common
from suite.trainer import Recipe, fit

INPUT = (3, 16, 16)


def built(bits=(2, 4), arch="resnet8", options=None, calibrate=True, seed=0):
    torch.manual_seed(seed)
    trainable = bm.build(arch, 10, list(bits), options or bm.Options())
    if calibrate:
        common.calibrate(trainable.model, list(bits), [(torch.randn(8, *INPUT), None) for _ in bits])
    return trainable


def transitional_bns(model):
    return [m for m in model.modules() if isinstance(m, TransitionalBatchNorm)]


# -- quantizer ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
def test_lsq_levels_and_gradients(bits):
    qn, qp = weight_range(bits)
    v = torch.linspace(-3, 3, 20001, requires_grad=True)
    step = torch.tensor(2.0 / qp if qp else 1.0, requires_grad=True)
    q = lsq_quantize(v, step, qn, qp, v.numel())
    levels = torch.unique(torch.round(q.detach() / step.detach()))
    assert levels.tolist() == list(range(-qn, qp + 1))
    assert torch.allclose(q.detach(), torch.round(q.detach() / step.detach()) * step.detach(), atol=1e-5)
    q.sum().backward()
    inside = (v.detach() / step.detach() > -qn) & (v.detach() / step.detach() < qp)
    assert torch.equal(v.grad, inside.float())  # straight through inside the range, zero outside
    assert step.grad is not None and step.grad != 0


def test_activation_quantizer_is_unsigned():
    qn, qp = activation_range(3)
    x = torch.linspace(-1, 10, 5001)
    q = lsq_quantize(x, torch.tensor(1.0), qn, qp, x.numel())
    assert torch.round(q).unique().tolist() == list(range(0, 8))


def test_steps_are_initialised_lsq_style():
    model = built(calibrate=False).model
    x = torch.rand(8, *INPUT)
    common.calibrate(model, [2, 4], [(x, None), (x, None)])
    conv = model._convs[1]
    assert conv.initialized(2) and conv.initialized(4)
    assert torch.isclose(conv.w_step[conv.slot[4]], 2 * conv.weight.abs().mean() / 7 ** 0.5)


# -- transitional BN ----------------------------------------------------------------------------------------


def test_first_layer_bn_keeps_only_its_own_bit_width():
    model = built(bits=(2, 3, 4), calibrate=False).model
    first, *rest = transitional_bns(model)
    assert sorted(first.bn.keys()) == ["2to2", "3to3", "4to4"]
    assert all(len(bn.bn) == 9 for bn in rest)


def test_transition_bn_is_indexed_by_previous_and_current_bits():
    model = built(bits=(2, 4)).model
    names = model.layer_names
    config = [2, 4, 4, 2, 2, 4, 2, 2]  # one bit-width per quantized conv, module order
    assert len(config) == model.num_layers == len(names)
    bits_of = dict(zip(names, config))
    # previous quantized conv in the dataflow (conv1 and shortcut read the block input = previous conv2)
    previous = {"layer1.0.conv1": None, "layer1.0.conv2": "layer1.0.conv1",
                "layer2.0.conv1": "layer1.0.conv2", "layer2.0.conv2": "layer2.0.conv1",
                "layer2.0.shortcut.0": "layer1.0.conv2",
                "layer3.0.conv1": "layer2.0.conv2", "layer3.0.conv2": "layer3.0.conv1",
                "layer3.0.shortcut.0": "layer2.0.conv2"}
    bn_of = {"conv1": "bn1", "conv2": "bn2", "shortcut.0": "shortcut.1"}
    modules = dict(model.net.named_modules())
    before = {n: {k: b.running_mean.clone() for k, b in modules[n].bn.items()}
              for n, m in modules.items() if isinstance(m, TransitionalBatchNorm)}
    model.train()
    model.set_layer_bits(config)
    assert model.layer_bits() == config
    with torch.no_grad():
        model(torch.randn(8, *INPUT))
    for conv_name in names:
        block, leaf = conv_name.split(".", 2)[:2], conv_name.split(".", 2)[2]
        bn_name = ".".join(block + [bn_of[leaf]])
        p = previous[conv_name]
        expected = transition_key(bits_of[conv_name] if p is None else bits_of[p], bits_of[conv_name])
        changed = {k for k, b in modules[bn_name].bn.items() if not torch.equal(b.running_mean, before[bn_name][k])}
        assert changed == {expected}, (conv_name, changed, expected)
    # a uniform configuration uses the (b, b) entries
    model.set_layer_bits([4] * model.num_layers)
    assert {bn.transition for bn in transitional_bns(model)} == {(4, 4)}


# -- schedule and layer-wise sampling ---------------------------------------------------------------------


def test_stage_schedule():
    model = built(calibrate=False).model
    seen = []
    for epoch in range(9):
        model.on_epoch_start(epoch, 9)
        seen.append((model.stage, round(model.mix_prob, 4), model._convs[0].fp_weights_in_training))
    assert seen == [(1, 0, True)] * 3 + [(2, 0, False)] * 3 + [(3, 0.3333, False), (3, 0.6667, False), (3, 1.0, False)]
    model = built(options=bm.Options(stages=(0, 0.5, 0.5), stage1_weights="quantized"), calibrate=False).model
    model.on_epoch_start(0, 4)
    assert model.stage == 2 and not model._convs[0].fp_weights_in_training


def test_layerwise_sampling_covers_every_configuration():
    model = built(bits=(2, 4), calibrate=False).model
    model.train()
    model.on_epoch_start(5, 6)  # last epoch of stage 3: mixing probability 1
    assert model.mix_prob == 1.0
    torch.manual_seed(0)
    seen = set()
    for _ in range(4000):
        model.set_bits(2)
        seen.add(tuple(model.layer_bits()))
    assert seen == set(itertools.product((2, 4), repeat=model.num_layers))  # all 2^8 combinations
    model.set_bits(4)  # the top bit-width (the in-place teacher) stays uniform
    assert model.layer_bits() == [4] * model.num_layers


def test_sampling_follows_torch_global_rng_and_stage():
    model = built(bits=(2, 3, 4), calibrate=False).model
    model.train()
    model.on_epoch_start(0, 3)  # stage 1: network-wide
    model.set_bits(2)
    assert model.layer_bits() == [2] * model.num_layers
    model.on_epoch_start(2, 3)
    torch.manual_seed(7)
    a = [(model.set_bits(2), model.layer_bits())[1] for _ in range(5)]
    torch.manual_seed(7)
    b = [(model.set_bits(2), model.layer_bits())[1] for _ in range(5)]
    assert a == b and any(cfg != [2] * model.num_layers for cfg in a)


def test_uniform_eval_is_deterministic_and_never_mixes():
    model = built(bits=(2, 4)).model
    model.train()
    model.on_epoch_start(2, 3)
    model.set_bits(2)  # a random mixture in train mode
    x = torch.randn(4, *INPUT)
    model.eval()
    outputs = []
    for _ in range(2):
        state = torch.get_rng_state()
        model.set_bits(2)
        assert torch.equal(torch.get_rng_state(), state)  # no draw in eval mode
        assert model.layer_bits() == [2] * model.num_layers
        with torch.no_grad():
            outputs.append(model(x))
    assert torch.equal(outputs[0], outputs[1])
    model.set_bits(4)
    with torch.no_grad():
        assert not torch.equal(model(x), outputs[0])


def test_set_layer_bits_rejects_bad_configurations():
    model = built(bits=(2, 4), calibrate=False).model
    with pytest.raises(ValueError):
        model.set_layer_bits([2] * (model.num_layers - 1))
    with pytest.raises(ValueError):
        model.set_layer_bits([3] * model.num_layers)
    with pytest.raises(ValueError):
        model.set_bits(8)


# -- costs and storage ------------------------------------------------------------------------------------


def per_layer_macs(model):
    macs = {}
    hooks = [c.register_forward_hook(lambda m, i, o, n=n: macs.__setitem__(n, m.macs_and_bitops(o)[0]))
             for n, c in zip(model.layer_names, model._convs)]
    model.eval()
    model.set_bits(2)
    with torch.no_grad():
        model(torch.zeros(1, *INPUT))
    for h in hooks:
        h.remove()
    return [macs[n] for n in model.layer_names]


@pytest.mark.parametrize("b", [2, 4, 32])
def test_uniform_bitops_are_b_times_b_macs(b):
    model = built(bits=(2, 4, 32)).model
    cost = measure_cost(model, b, INPUT)
    assert cost.quantized_macs == sum(per_layer_macs(model)) > 0
    assert cost.quantized_bitops == b * b * cost.quantized_macs


def test_mixed_bitops_are_the_per_layer_sum():
    model = built(bits=(2, 3, 4)).model
    macs = per_layer_macs(model)
    config = [2, 4, 3, 3, 4, 2, 2, 4]
    cost = measure_cost(model, config, INPUT)  # set_bits accepts a per-layer list
    assert cost.quantized_macs == sum(macs)
    assert cost.quantized_bitops == sum(b * b * m for b, m in zip(config, macs))
    assert cost.quantized_bitops not in {b * b * sum(macs) for b in (2, 3, 4)}


def test_storage_components_from_real_parameters():
    model = built(bits=(2, 4)).model
    s = bm.storage_bits(model)
    assert set(s) == {"weights", "bn", "clip", "fp_layers"}
    assert all(v > 0 for v in s.values())
    conv_weights = sum(c.weight.numel() for c in model._convs)
    assert s["weights"] == 32 * conv_weights  # shared FP32 latent weights
    assert s["clip"] == 32 * 2 * 2 * model.num_layers  # w and a step per layer per bit-width
    bn_entries = sum(len(bn.bn) for bn in transitional_bns(model))
    assert bn_entries == 2 + 4 * (model.num_layers - 1)  # first BN: diagonal only
    channels = sum(4 * b.num_features for bn in transitional_bns(model) for b in bn.bn.values())
    assert s["bn"] == 32 * (channels + 4 * 16)  # transitional BNs + the FP stem BN
    assert s["fp_layers"] == 32 * (3 * 16 * 9 + 64 * 10 + 10)
    with_fp = bm.storage_bits(built(bits=(2, 4, 32), calibrate=False).model)
    assert with_fp["clip"] == s["clip"]  # no step sizes for a full-precision bit-width


# -- options and bits -------------------------------------------------------------------------------------


def test_check_bits():
    options = bm.Options()
    bm.check_bits([2, 3, 4, 8, 32], options)
    for bad in ([], [1, 2], [2, 9], [2, 16], [2, 2]):
        with pytest.raises(ValueError):
            bm.check_bits(bad, options)
    with pytest.raises(KeyError, match="unknown model 'resnet56'"):
        bm.build("resnet56", 10, [2, 4], options)


def test_options_are_strict():
    adapter = TypeAdapter(bm.Options)
    assert adapter.validate_python({"stages": [0.5, 0.25, 0.25]}).stages == (0.5, 0.25, 0.25)
    for bad in ({"stages": [0.5, 0.5, 0.5]}, {"stages": [1.0]}, {"distillation": "recursive"}, {"mixing": 1}):
        with pytest.raises(ValidationError):
            adapter.validate_python(bad)
    assert bm.Options(stages=[0, 0, 1]).stages == (0.0, 0.0, 1.0)  # the runner's plain construction


# -- training ---------------------------------------------------------------------------------------------


def test_fit_lowers_the_loss_across_the_three_stages(tmp_path):
    torch.manual_seed(0)
    x = torch.randn(48, *INPUT)
    y = torch.randint(0, 10, (48,))
    batches = [(x[i:i + 16], y[i:i + 16]) for i in range(0, 48, 16)]
    trainable = bm.build("resnet8", 10, [2, 4], bm.Options())
    stages = []
    hook = trainable.on_epoch_start
    trainable.on_epoch_start = lambda e, n: (hook(e, n), stages.append(trainable.model.stage))
    recipe = Recipe(epochs=6, batch_size=16, lr=0.05, lr_quant=1e-3, device="cpu")
    result = fit(trainable, batches, batches[:1], recipe, seed=0, run_dir=tmp_path, progress=False)
    assert stages == [1, 1, 2, 2, 3, 3]
    losses = [row["train_loss_mean"] for row in result.history]
    assert all(torch.isfinite(torch.tensor(losses)))
    assert losses[-1] < losses[0]
    assert all(c.initialized(2) and c.initialized(4) for c in trainable.model._convs)
    assert set(result.final) == {2, 4}


def test_a_resumed_run_matches_an_unbroken_one(tmp_path):
    """Stage state comes from on_epoch_start and the draws from the re-seeded global RNG: resuming is exact."""
    torch.manual_seed(0)
    batches = [(torch.randn(16, *INPUT), torch.randint(0, 10, (16,)))]
    recipe = Recipe(epochs=3, batch_size=16, lr=0.05, device="cpu")

    def run(run_dir, stop_at=None):
        torch.manual_seed(1)
        trainable = bm.build("resnet8", 10, [2, 4], bm.Options())

        def log(row, epoch):
            if epoch == stop_at:
                raise KeyboardInterrupt

        return fit(trainable, batches, batches, recipe, seed=3, run_dir=run_dir, progress=False, log=log)

    unbroken = run(tmp_path / "a")
    with pytest.raises(KeyboardInterrupt):
        run(tmp_path / "b", stop_at=1)  # killed after epoch 1 (stage 2) was saved
    resumed = run(tmp_path / "b")
    assert resumed.resumed_from == 2
    assert [r["train_loss_mean"] for r in resumed.history] == [r["train_loss_mean"] for r in unbroken.history]
