"""The three baselines (dedicated QAT, Any-Precision, AdaBits): each one's defining property, storage, costs,
bit-width checks, and a falling loss through the shared trainer."""
import math

import pytest
import torch
import torch.nn.functional as F
from pydantic import TypeAdapter, ValidationError

from suite.costs import measure_cost
from suite.methods import adabits, anyprecision, dedicated
from suite.layers.adabits import AdaBitsConv, nested_grid
from suite.layers.dorefa import DoReFaConv
from suite.layers.learned_bounds import BOUND_NAMES, LearnedBoundsConv
from suite.layers.norms import PerBitBatchNorm
from suite.layers.quant import HALF_NORMAL_STD
from suite.losses import inplace_distillation, labels_only, recursive_distillation
from suite.trainer import Recipe, fit, seed_everything

METHODS = {"dedicated": dedicated, "anyprecision": anyprecision, "adabits": adabits}
QUANT_CONVS = (LearnedBoundsConv, DoReFaConv, AdaBitsConv)


@pytest.fixture(autouse=True)
def _one_thread():
    """These models are tiny: one thread is faster, and spin-waiting threads crawl on a shared 2-core box."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def build(name, bits, arch="resnet8", classes=4, seed=0, **options):
    seed_everything(seed)
    method = METHODS[name]
    return method.build(arch, classes, bits, TypeAdapter(method.Options).validate_python(options))


def synthetic(n=64, classes=4, batch=16, seed=0):
    """Class templates plus noise: a learnable, fixed list of (x, y) batches of 3x16x16 images."""
    g = torch.Generator().manual_seed(seed)
    templates = torch.randn(classes, 3, 16, 16, generator=g)
    y = torch.arange(n) % classes
    x = templates[y] + 0.5 * torch.randn(n, 3, 16, 16, generator=g)
    return [(x[i:i + batch], y[i:i + batch]) for i in range(0, n, batch)]


def body_weights(model):
    return sum(m.weight.numel() for m in model.modules() if isinstance(m, QUANT_CONVS))


def snapshot(module):
    return {k: v.clone() for k, v in module.state_dict().items()}


def same(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def train_steps(model, bits, steps=3):
    """Optimizer steps at one bit-width only, with momentum and weight decay on every parameter."""
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
    model.train()
    model.set_bits(bits)
    for x, y in synthetic()[:steps]:
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
        opt.step()


# -- AdaBits: the nested grid ------------------------------------------------------------------------------


def test_adabits_modified_grids_are_nested_as_values_centered_are_not():
    x = torch.linspace(0, 1, 100_001)
    for b in range(1, 8):
        low, high = (set(nested_grid(x, n, "modified").tolist()) for n in (b, b + 1))
        assert len(low) == 2**b and low <= high  # every b-bit value is a (b+1)-bit value
        low, high = (set(nested_grid(x, n, "centered").tolist()) for n in (b, b + 1))
        assert len(low) == 2**b and not low & high  # (2k+1)/2^(b+1) is never (2j+1)/2^(b+2)


@pytest.mark.parametrize("grid", ["modified", "centered"])
def test_adabits_codes_are_nested_so_lower_bits_come_from_the_highest_bits_codes(grid):
    """For both grids the b-bit code is the 8-bit code without its low bits: storing max(bits) suffices."""
    x = torch.cat([torch.rand(10_000), torch.tensor([0.0, 1.0, 0.5])])
    code = {b: nested_grid(x, b, grid) * 2**b - (0.5 if grid == "centered" else 0) for b in range(1, 9)}
    for b in range(1, 8):
        assert torch.equal(code[b], torch.div(code[8], 2 ** (8 - b), rounding_mode="floor"))
    # and the conv's rescaled b-bit weights are rebuilt exactly from the 8-bit codes alone
    torch.manual_seed(0)
    conv = AdaBitsConv(8, 16, 3, bits=[4, 8], grid=grid, alpha_init=8.0)
    t = torch.tanh(conv.weight.detach())
    code8 = torch.floor(256 * (t / t.abs().max() + 1) / 2).clamp(0, 255)
    code4 = torch.div(code8, 16, rounding_mode="floor")
    q4 = 2 * (code4 + (0.5 if grid == "centered" else 0)) / 16 - 1
    conv.active_bits = 4
    assert torch.allclose(conv.quantized_weight(conv.active_bits), q4 / math.sqrt(16 * 9) / q4.std(), rtol=1e-6, atol=0)


def test_adabits_pact_activations_and_calibrated_alpha():
    trainable = build("adabits", [2, 4])
    batches = synthetic()
    trainable.initialize(trainable.model, batches)
    conv = trainable.model.layer2[0].conv1
    alphas = {b: conv.alpha[str(b)].item() for b in (2, 4)}
    assert all(a > 0 and a != 1.0 for a in alphas.values())  # set from data, per bit-width
    seen = {}
    conv.register_forward_hook(lambda m, inp, out: seen.update(x=inp[0]))
    trainable.model.eval()
    trainable.model.set_bits(2)
    trainable.model(batches[0][0])
    x = seen["x"].clamp(0, alphas[2])
    expected = torch.round(x / alphas[2] * 3) / 3 * alphas[2]
    w = conv.quantized_weight(conv.active_bits)
    assert torch.allclose(conv(seen["x"]), F.conv2d(expected, w, None, 2, 1), atol=1e-5)
    assert build("adabits", [2], alpha_init=8.0).model.layer1[0].conv1.alpha["2"].item() == 8.0


# -- Any-Precision -----------------------------------------------------------------------------------------


def test_anyprecision_8_bit_weights_approximate_the_fp_path_and_32_bits_is_exact_fp():
    torch.manual_seed(0)
    conv = DoReFaConv(16, 16, 3, 1, 1)
    w = conv.weight.detach()
    scale = w.abs().mean()
    fp = torch.tanh(w) / torch.tanh(w).abs().max() * scale
    conv.active_bits = 32
    assert torch.equal(conv.quantized_weight(conv.active_bits), fp)
    x = 3 * torch.rand(2, 16, 8, 8)  # values above 1 are not clamped on the FP path
    assert torch.equal(conv(x), F.conv2d(x, fp, None, 1, 1))
    for b in (1, 2, 4, 8):
        conv.active_bits = b
        q = conv.quantized_weight(conv.active_bits)
        levels = torch.unique(torch.round((q / scale + 1) / 2 * (2**b - 1)))
        assert len(levels) <= 2**b and levels.min() >= 0 and levels.max() <= 2**b - 1
    assert (q - fp).norm() / fp.norm() < 0.01
    assert (q - fp).abs().max() <= scale / 255 * 1.0001
    assert torch.equal(conv(x), F.conv2d(torch.round(x.clamp(0, 1) * 255) / 255, q, None, 1, 1))


def test_anyprecision_has_no_quantizer_parameters_and_maps_distillation():
    assert build("anyprecision", [2, 4]).params_of("quantizer") == []
    policies = {d: build("anyprecision", [2, 4], distillation=d).loss for d in ("recursive", "hard", "soft")}
    assert policies == {"recursive": recursive_distillation, "hard": labels_only, "soft": inplace_distillation}


# -- what each bit-width owns ------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["anyprecision", "adabits"])
def test_training_one_bit_width_leaves_the_others_bn_and_alpha_untouched(name):
    model = build(name, [2, 4]).model
    per_bit = {b: [m.bn[str(b)] for m in model.modules() if isinstance(m, PerBitBatchNorm)]
               + [m.alpha[str(b)] for m in model.modules() if isinstance(m, AdaBitsConv)] for b in (2, 4)}
    before = {b: [snapshot(m) if isinstance(m, torch.nn.Module) else m.detach().clone() for m in per_bit[b]]
              for b in (2, 4)}
    train_steps(model, 4)
    after = {b: [snapshot(m) if isinstance(m, torch.nn.Module) else m.detach().clone() for m in per_bit[b]]
             for b in (2, 4)}
    unchanged = [same(x, y) if isinstance(x, dict) else torch.equal(x, y) for x, y in zip(before[2], after[2])]
    changed = [not (same(x, y) if isinstance(x, dict) else torch.equal(x, y)) for x, y in zip(before[4], after[4])]
    assert all(unchanged) and all(changed)


def test_dedicated_models_share_nothing_and_train_independently():
    trainable = build("dedicated", [2, 4, 32])
    models = trainable.model.models
    storages = {b: {p.untyped_storage().data_ptr() for p in m.parameters()} for b, m in models.items()}
    assert not storages["2"] & storages["4"] and not storages["4"] & storages["32"] and not storages["2"] & storages["32"]
    assert {id(p) for p in trainable.params_of("quantizer")} == {
        id(p) for n, p in models.named_parameters() if n.rsplit(".", 1)[-1] in BOUND_NAMES}
    trainable.initialize(trainable.model, synthetic())
    before = snapshot(models["2"])
    train_steps(trainable.model, 4)
    assert same(before, snapshot(models["2"]))
    assert {m.active_bits for m in models["2"].modules() if isinstance(m, LearnedBoundsConv)} == {2}
    assert not any(hasattr(m, "w_lower") for m in models["32"].modules())  # the FP model is a plain network


def test_dedicated_calibration_follows_mbquant():
    trainable = build("dedicated", [2, 4])
    batches = synthetic()
    conv = trainable.model.models["4"].layer2[0].conv1
    seen = []
    hook = conv.register_forward_pre_hook(lambda m, inp: seen.append(inp[0].clone()))
    trainable.initialize(trainable.model, batches)
    hook.remove()
    (x,) = seen  # one calibration forward per model, each on its own batch
    assert conv.a_lower.item() == pytest.approx(x.min().item())
    assert conv.a_upper.item() == pytest.approx(3 * x.std().item() / HALF_NORMAL_STD, rel=1e-5)
    assert conv.w_upper.item() == pytest.approx(3 * conv.weight.std().item()) and conv.w_lower == -conv.w_upper


# -- training through the shared trainer ------------------------------------------------------------------


@pytest.mark.parametrize("name, bits, options", [
    ("dedicated", [2, 4], {}),
    ("anyprecision", [2, 4, 32], {}),
    ("adabits", [1, 2, 32], {"grid": "centered"}),  # alpha calibrated from data (the default)
    ("adabits", [4, 8], {"alpha_init": 8.0}),  # the paper's modified grid, the release's constant alpha
])
def test_fit_lowers_the_training_loss(tmp_path, name, bits, options):
    data = synthetic()
    recipe = Recipe(epochs=4, batch_size=16, lr=0.05, device="cpu")
    result = fit(build(name, bits, **options), data, data, recipe, seed=0, run_dir=tmp_path, progress=False)
    first, last = result.history[0]["train_loss_mean"], result.history[-1]["train_loss_mean"]
    assert last < 0.8 * first
    assert set(result.final) == set(bits)


# -- storage and cost --------------------------------------------------------------------------------------


@pytest.mark.parametrize("arch", ["resnet8", "resnet20"])
def test_storage_bits(arch):
    bits = [1, 2, 4, 8]
    one = body_weights(build("anyprecision", [2], arch=arch).model)
    for name, with_fp in [("dedicated", 32), ("anyprecision", 32), ("adabits", 32), ("adabits", None)]:
        listed = bits + ([with_fp] if with_fp else [])
        model = build(name, listed, arch=arch).model
        storage = METHODS[name].storage_bits(model)
        assert set(storage) == {"weights", "bn", "clip", "fp_layers"}
        assert storage["weights"] > 0 and storage["bn"] > 0 and storage["fp_layers"] > 0
        assert (storage["clip"] > 0) == (name != "anyprecision")
        expected = {"dedicated": sum(listed) * one, "anyprecision": 32 * one,
                    "adabits": (32 if with_fp else max(bits)) * one}[name]
        assert storage["weights"] == expected
    # everything but the body weights is FP32, and nothing is left out
    model = build("anyprecision", listed, arch=arch).model
    stats = sum(b.numel() for n, b in model.named_buffers() if "running" in n)
    assert sum(anyprecision.storage_bits(model).values()) == 32 * (sum(p.numel() for p in model.parameters()) + stats)


@pytest.mark.parametrize("arch", ["resnet8", "resnet20"])
def test_bitops_are_b_squared_macs_and_macs_match_across_methods(arch):
    bits = [1, 2, 3, 8, 32]
    macs = {}
    for name in METHODS:
        model = build(name, bits, arch=arch).model
        for b in bits:
            cost = measure_cost(model, b, (3, 16, 16))
            assert cost.quantized_macs > 0 and cost.quantized_bitops == b * b * cost.quantized_macs
            macs.setdefault(b, set()).add((cost.quantized_macs, cost.fp_macs))
    assert all(len(v) == 1 for v in macs.values()) and len({v.pop() for v in macs.values()}) == 1


# -- bit-width checks --------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(METHODS))
@pytest.mark.parametrize("bits, message", [
    ([0, 2], "bit-width 0"), ([2, 9], "bit-width 9"), ([16], "bit-width 16"), ([2, 2], "repeats"), ([], "empty"),
])
def test_unservable_bit_lists_raise(name, bits, message):
    method = METHODS[name]
    with pytest.raises(ValueError, match=message):
        method.check_bits(bits, method.Options())
    with pytest.raises(ValueError, match=message):
        method.build("resnet8", 4, bits, method.Options())


def test_anyprecision_distillation_needs_an_ascending_list_and_options_are_strict():
    with pytest.raises(ValueError, match="ascending"):
        anyprecision.check_bits([8, 4], anyprecision.Options())
    anyprecision.check_bits([8, 4], anyprecision.Options(distillation="hard"))
    for method, options in [(dedicated, {"grid": "modified"}), (anyprecision, {"distillation": "kd"}),
                            (adabits, {"grid": "uniform"}), (adabits, {"alpha_init": "data"})]:
        with pytest.raises(ValidationError):
            TypeAdapter(method.Options).validate_python(options)
    with pytest.raises(ValueError, match="alpha_init"):
        adabits.check_bits([2], adabits.Options(alpha_init=0.0))
