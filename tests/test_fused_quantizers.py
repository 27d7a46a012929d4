"""The fused quantizers (custom autograd Functions) against a frozen copy of the plain-autograd quantizers they replace.

Forward: ``torch.equal`` (bit for bit) at every bit-width each method serves, 32 included where it has a path.
Gradients w.r.t. inputs and weights: ``torch.equal`` too. The fused backward evaluates autograd's elementwise
chain in the same order (and torch's own ``tanh_backward``), so these hold exactly, for every clamp, ReLU and
max mask, values exactly on a bound and tied maxima included.

Gradients w.r.t. quantizer parameters (MBQuant / dedicated bounds, AdaBits' alpha, LSQ steps) are sums over
the elements each one serves, which the fused backward regroups (it sums first and divides by ``u - l``,
``alpha`` or ``s`` once; autograd divides every term and sums two or three partial sums) and accumulates in a
different order (``sum_to_size`` vs ``torch.dot``). Their tolerance is float32 summation error:
- per quantizer, ``SUM_RTOL`` = 1e-6 (~8 eps) of the sum of the terms' magnitudes (``magnitude`` in each test):
  summing n float32 terms errs by ~log2(n)·eps (pairwise) up to ~(n / SIMD lanes)·eps (blocked dot) of that
  sum, below 1e-6 for the n <= 2e4 here (measured: < 1e-8), while a wrong or missing term of a typical size
  (~1/n of the magnitude, >= 5e-5) exceeds it;
- per model step, ``MODEL_RTOL`` = 1e-3 of each parameter's gradient norm: there the magnitudes are not at
  hand, and single entries cancel up to ~1e4-fold (an AdaBits alpha's clip and rescale terms), so rounding
  reaches ~1e-4 of the norm (measured: <= 9e-5); a formula error is O(1).
"""
import math
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from suite.layers import adabits, dorefa, learned_bounds, lsq, multibranch, quant
from suite.layers.adabits import AdaBitsConv, pact_quantize
from suite.layers.base import FP_BITS
from suite.layers.dorefa import DoReFaConv
from suite.layers.lsq import activation_range, lsq_quantize, weight_range
from suite.layers.quant import clamp_discretize, quantize_activation, quantize_weight
from suite.methods import method as get_method

SUM_RTOL = 1e-6
MODEL_RTOL = 1e-3
QUANT_BITS = list(range(1, 9))


# -- frozen reference: the plain-autograd quantizers as of commit 011ec51 (do not edit) -------------------------


class _RefRoundSTE(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, levels):
        return torch.round(x * (levels - 1)) / (levels - 1)

    @staticmethod
    def backward(ctx, grad):
        return grad, None


def ref_discretize(x, levels):
    return _RefRoundSTE.apply(x, levels)


def ref_quantize_weight(w, lower, upper, levels=4):
    unit = torch.clamp((w - lower) / (upper - lower), 0, 1)
    return 2 * (ref_discretize(unit, levels) - 0.5)


def ref_quantize_activation(x, lower, upper, bits):
    unit = torch.clamp((x - lower) / (upper - lower), 0, 1)
    return ref_discretize(unit, 2**bits)


def ref_dorefa_weight(self, bits):
    scale = self.weight.abs().mean().detach()
    t = torch.tanh(self.weight)
    if bits == FP_BITS:
        return t / t.abs().max() * scale
    t = t / 2 / t.abs().max() + 0.5
    return (2 * ref_discretize(t, 2**bits) - 1) * scale


def ref_dorefa_input(self, x, bits):
    return x if bits == FP_BITS else ref_discretize(torch.clamp(x, 0, 1), 2**bits)


class _RefNestedGridSTE(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, bits, centered):
        levels = 2**bits
        code = torch.floor(levels * x).clamp_(0, levels - 1)
        return (code + 0.5 if centered else code) / levels

    @staticmethod
    def backward(ctx, grad):
        return grad, None, None


def ref_adabits_weight(self, bits):
    t = torch.tanh(self.weight)
    q = t / t.abs().max()
    if bits != FP_BITS:
        q = 2 * _RefNestedGridSTE.apply((q + 1) / 2, bits, self.grid == "centered") - 1
    fan_out = self.out_channels // self.groups * self.kernel_size[0] * self.kernel_size[1]
    return q * (1 / math.sqrt(fan_out) / q.detach().std())


def ref_pact(x, alpha, bits):
    x = F.relu(x)
    return ref_discretize(torch.where(x < alpha, x, alpha) / alpha, 2**bits) * alpha


def ref_adabits_input(self, x, bits):
    return x if bits == FP_BITS else ref_pact(x, self.alpha[str(bits)].abs(), bits)


def ref_grad_scale(x, scale):
    y = x * scale
    return (x - y).detach() + y


def ref_lsq_quantize(v, step, qn, qp, numel):
    s = ref_grad_scale(step, 1.0 / math.sqrt(numel * qp))
    t = torch.clamp(v / s, -qn, qp)
    span = qn + qp
    return (ref_discretize((t + qn) / span, span + 1) * span - qn) * s


# -- helpers ----------------------------------------------------------------------------------------------------


def leaf(t):
    return t.detach().clone().requires_grad_(True)


def run(fn, tensors, grad_out, **kwargs):
    """``fn(*leaves)``'s output and the gradients of every leaf for the upstream gradient ``grad_out``."""
    leaves = [leaf(t) for t in tensors]
    out = fn(*leaves, **kwargs)
    out.backward(grad_out)
    return out.detach(), [x.grad for x in leaves]


def assert_sum_close(new, ref, magnitude):
    """``new`` within ``SUM_RTOL`` of ``magnitude`` (the sum of |terms| that make up ``ref``) from ``ref``."""
    assert new.shape == ref.shape and torch.isfinite(ref).all()
    assert torch.all((new - ref).abs() <= SUM_RTOL * magnitude), (new, ref, magnitude)


def with_edges(x, *values):
    """``x`` with its first elements replaced by ``values`` (bounds, ties) so that every edge case is hit."""
    flat = x.clone().view(-1)
    edge = torch.tensor([float(v) for v in values])
    flat[:len(edge)] = edge
    return flat.view_as(x)


def compare(fn, ref_fn, tensors, grad_out, exact, **kwargs):
    """Forward bit for bit; gradients of ``tensors[i]`` exactly for i in ``exact``, else closely (returned)."""
    out, grads = run(fn, tensors, grad_out, **kwargs)
    ref_out, ref_grads = run(ref_fn, tensors, grad_out, **kwargs)
    assert torch.equal(out, ref_out)
    for i in exact:
        assert torch.equal(grads[i], ref_grads[i])
    return grads, ref_grads


# -- MBQuant and dedicated: learnable bounds ---------------------------------------------------------------------


def slot_activations(n, lower, upper):
    """Post-ReLU-like activations in n slots, with values exactly on each slot's bounds and rounding ties."""
    gen = torch.Generator().manual_seed(n)
    x = torch.relu(torch.randn(4, n, 8, 12, 12, generator=gen)) * upper.view(1, n, 1, 1, 1) / 2
    for k in range(n):
        lo, hi = lower[k].item(), upper[k].item()
        tie = lo + (hi - lo) * 0.5  # (v * (L-1)) lands on .5 for odd L-1
        x[:, k] = with_edges(x[:, k], lo, hi, lo - 1, hi + 1, tie, 0.0)
    return x


@pytest.mark.parametrize("bits", QUANT_BITS)
@pytest.mark.parametrize("n", [1, 2, 3, 4])
def test_activation_quantizer_per_slot(bits, n):
    """MBQuant's ``quantize_input_slots`` layout: x as [N, slots, C, H, W], one bound pair per slot."""
    lower = torch.tensor([0.0, 0.1, -0.2, 0.05][:n])
    upper = torch.tensor([1.5, 2.0, 0.7, 3.0][:n])
    x = slot_activations(n, lower, upper)
    g = torch.randn_like(x)
    lo, hi = lower.view(1, n, 1, 1, 1), upper.view(1, n, 1, 1, 1)
    grads, ref = compare(quantize_activation, ref_quantize_activation, [x, lo, hi], g, exact=[0], bits=bits)
    magnitude = 2 * g.abs().sum_to_size(lo.shape) / (hi - lo)
    assert_sum_close(grads[1], ref[1], magnitude)
    assert_sum_close(grads[2], ref[2], magnitude)


@pytest.mark.parametrize("levels", [2**b for b in QUANT_BITS])
@pytest.mark.parametrize("n", [1, 2, 4])
def test_weight_quantizer_per_slot(levels, n):
    """MBQuant's ``quantize_weight_slots`` layout (rows [n, -1], bounds [n, 1]) at 2-bit (4 levels) and the
    depthwise / dedicated 2^b levels."""
    gen = torch.Generator().manual_seed(levels + n)
    w = torch.randn(n, 16 * 16 * 9, generator=gen) * 0.1
    upper = 3 * w.std(dim=1, keepdim=True)
    lower = -upper
    for k in range(n):
        w[k] = with_edges(w[k], lower[k].item(), upper[k].item(), 0.0, 1.0)
    g = torch.randn_like(w)
    grads, ref = compare(quantize_weight, ref_quantize_weight, [w, lower, upper], g, exact=[0], levels=levels)
    magnitude = 4 * g.abs().sum(dim=1, keepdim=True) / (upper - lower)
    assert_sum_close(grads[1], ref[1], magnitude)
    assert_sum_close(grads[2], ref[2], magnitude)


def test_scalar_bounds_of_the_dedicated_conv():
    """``LearnedBoundsConv``: one bound pair per conv (0-dim), so every sum runs over the whole tensor."""
    x = torch.relu(torch.randn(8, 16, 16, 16))
    lower, upper = torch.tensor(0.0), torch.tensor(1.2)
    x = with_edges(x, 0.0, 1.2, 0.6)
    g = torch.randn_like(x)
    grads, ref = compare(quantize_activation, ref_quantize_activation, [x, lower, upper], g, exact=[0], bits=3)
    magnitude = 2 * g.abs().sum() / 1.2
    assert_sum_close(grads[1], ref[1], magnitude)
    assert_sum_close(grads[2], ref[2], magnitude)


# -- Any-Precision: DoReFa ------------------------------------------------------------------------------------------


def dorefa_conv(bits, seed=0):
    torch.manual_seed(seed)
    conv = DoReFaConv(16, 32, 3, 1, 1)
    with torch.no_grad():  # two tied maxima of |tanh(w)|: the max's gradient is shared between them
        conv.weight.view(-1)[:2] = torch.tensor([1.0, -1.0]) * conv.weight.abs().max() * 1.5
    conv.active_bits = bits
    return conv


@pytest.mark.parametrize("bits", QUANT_BITS + [FP_BITS])
def test_dorefa_weights(bits):
    conv = dorefa_conv(bits)
    g = torch.randn_like(conv.weight)
    compare(lambda w: DoReFaConv._weight_at(as_self(conv, w), bits),
            lambda w: ref_dorefa_weight(as_self(conv, w), bits), [conv.weight], g, exact=[0])


@pytest.mark.parametrize("bits", QUANT_BITS)
def test_dorefa_activations(bits):
    x = with_edges(torch.randn(8, 16, 12, 12) * 0.8, 0.0, 1.0, -0.0, 0.5, 2.0, -1.0)
    compare(clamp_discretize, lambda x, levels: ref_discretize(torch.clamp(x, 0, 1), levels), [x],
            torch.randn_like(x), exact=[0], levels=2**bits)


def as_self(conv, weight):
    """A stand-in ``self`` for a conv's ``_weight_at``, with a leaf tensor as its weight."""
    return SimpleNamespace(weight=weight, out_channels=conv.out_channels, groups=conv.groups,
                           kernel_size=conv.kernel_size, grid=getattr(conv, "grid", None))


# -- AdaBits -------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("bits", QUANT_BITS + [FP_BITS])
@pytest.mark.parametrize("grid", ["modified", "centered"])
def test_adabits_weights(bits, grid):
    torch.manual_seed(1)
    conv = AdaBitsConv(16, 32, 3, 1, 1, bits=[bits], grid=grid, alpha_init=8.0)
    with torch.no_grad():
        conv.weight.view(-1)[:2] = torch.tensor([1.0, -1.0]) * conv.weight.abs().max() * 1.5  # tied maxima
    g = torch.randn_like(conv.weight)
    compare(lambda w: AdaBitsConv._weight_at(as_self(conv, w), bits),
            lambda w: ref_adabits_weight(as_self(conv, w), bits), [conv.weight], g, exact=[0])


@pytest.mark.parametrize("bits", QUANT_BITS)
def test_pact_activations(bits):
    """Values below 0, exactly 0, inside, exactly alpha and above alpha; alpha's gradient through the clip and
    through the ``/ alpha``, ``* alpha`` around the rounding."""
    alpha = torch.tensor(1.7)
    x = with_edges(torch.randn(8, 16, 12, 12) * 1.5, -1.0, 0.0, -0.0, 1.7, 2.5, 0.85)
    g = torch.randn_like(x)
    grads, ref = compare(pact_quantize, ref_pact, [x, alpha], g, exact=[0], bits=bits)
    assert_sum_close(grads[1], ref[1], 2 * g.abs().sum())


# -- Bit-Mixer: LSQ ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("bits", range(2, 9))
@pytest.mark.parametrize("kind", ["weight", "activation"])
def test_lsq(bits, kind):
    """Signed weight and unsigned activation grids, values clamped on both sides, on the grid ends and at ties;
    the step's gradient through the clamp and the division, with LSQ's gradient scale."""
    qn, qp = weight_range(bits) if kind == "weight" else activation_range(bits)
    v = torch.randn(8, 16, 12, 12) if kind == "activation" else torch.randn(32, 16, 3, 3) * 0.1
    if kind == "activation":
        v = v.relu()
    step = 2 * v.abs().mean() / math.sqrt(qp)
    v = with_edges(v, -qn * step, qp * step, (qp + 1) * step, -(qn + 1) * step, 0.5 * step, 1.5 * step)
    numel = v[0].numel() if kind == "activation" else v.numel()
    g = torch.randn_like(v)
    grads, ref = compare(lsq_quantize, ref_lsq_quantize, [v, step], g, exact=[0], qn=qn, qp=qp, numel=numel)
    magnitude = (g.abs() * (qn + qp + v.abs() / step)).sum() / math.sqrt(numel * qp)
    assert_sum_close(grads[1], ref[1], magnitude)


# -- whole models: the fused layers against the same layers with the reference quantizers ------------------------


REFERENCE_PATCHES = {
    "mbquant": [(multibranch, "quantize_weight", ref_quantize_weight),
                (multibranch, "quantize_activation", ref_quantize_activation)],
    "dedicated": [(learned_bounds, "quantize_weight", ref_quantize_weight),
                  (learned_bounds, "quantize_activation", ref_quantize_activation)],
    "anyprecision": [(dorefa.DoReFaConv, "_weight_at", ref_dorefa_weight),
                     (dorefa.DoReFaConv, "_input_at", ref_dorefa_input)],
    "adabits": [(adabits.AdaBitsConv, "_weight_at", ref_adabits_weight),
                (adabits.AdaBitsConv, "_input_at", ref_adabits_input)],
    "bitmixer": [(lsq, "lsq_quantize", ref_lsq_quantize)],
}
# Parameters whose gradients are sums regrouped by the fused backward (everything else must match exactly).
SUMMED = {"w_lower", "w_upper", "a_lower", "a_upper", "alpha", "w_step", "a_step"}


@pytest.mark.parametrize("name, arch, bits, options", [
    ("mbquant", "resnet8", [2, 4, 6, 8], {}), ("mbquant", "resnet8", [2, 3, 4], {"selection": "serial"}),
    ("mbquant", "resnet8", [2, 4, 6, 8], {"conv_impl": "dense", "variant": "clean"}),
    ("mbquant", "mobilenetv1", [2, 3, 4], {"selection": "serial"}),  # depthwise: b-bit weights, partial branch
    ("dedicated", "resnet8", [1, 2, 5, 8, 32], {}), ("anyprecision", "resnet8", [1, 2, 4, 8, 32], {}),
    ("adabits", "resnet8", [1, 2, 4, 8, 32], {"grid": "centered"}),
    ("adabits", "resnet8", [2, 3, 8], {"grid": "modified"}), ("bitmixer", "resnet8", [2, 3, 4, 8], {}),
])
def test_model_step_matches_the_reference_quantizers(monkeypatch, name, arch, bits, options):
    """One joint step (every bit-width, forward + backward) of a calibrated model: the same logits bit for bit
    and the same gradients (exactly for every weight and BN parameter, closely for the quantizer parameters)."""
    spec = get_method(name)
    torch.manual_seed(0)
    trainable = spec.build(arch, 10, bits, spec.Options(**options))
    side = 32 if arch == "mobilenetv1" else 16  # MobileNetV1 downsamples 32-fold
    x, y = torch.randn(8, 3, side, side), torch.randint(0, 10, (8,))
    if trainable.initialize is not None:
        trainable.initialize(trainable.model, [(x, y)] * len(bits))
    state = {k: v.clone() for k, v in trainable.model.state_dict().items()}

    def step():
        trainable.model.load_state_dict(state)
        trainable.model.train()
        trainable.model.zero_grad(set_to_none=True)
        logits = {}
        for b in reversed(bits):
            trainable.model.set_bits(b)
            logits[b] = trainable.model(x)
            F.cross_entropy(logits[b], y).backward()
        grads = {n: p.grad.clone() for n, p in trainable.model.named_parameters() if p.grad is not None}
        return logits, grads

    logits, grads = step()
    for target, attr, ref in REFERENCE_PATCHES[name]:
        monkeypatch.setattr(target, attr, ref)
    ref_logits, ref_grads = step()
    for b in bits:
        assert torch.equal(logits[b], ref_logits[b]), b
    assert grads.keys() == ref_grads.keys()
    for n in grads:
        if SUMMED & set(n.split(".")):
            assert (grads[n] - ref_grads[n]).norm() <= MODEL_RTOL * ref_grads[n].norm(), n
        else:
            assert torch.equal(grads[n], ref_grads[n]), n


@pytest.mark.parametrize("inclusive", [False, True])
def test_clamp_backward_is_clamps_gradient(monkeypatch, inclusive):
    """The mask helper against torch's own clamp backward, into a fresh tensor and in place; with the rule of
    older torch releases (gradient passed on the bounds too) on the fallback path."""
    v = torch.tensor([-1.0, 0.0, 0.25, 1.0, 2.0] * 7)  # 35: vectorized body and scalar tail
    g = torch.randn_like(v)
    expected = run(torch.clamp, [v], g, min=0, max=1)[1][0]
    if inclusive != quant.CLAMP_GRAD_AT_BOUNDS:
        monkeypatch.setattr(quant, "CLAMP_GRAD_AT_BOUNDS", inclusive)
        expected = torch.where((v >= 0) & (v <= 1) if inclusive else (v > 0) & (v < 1), g, 0)
    assert torch.equal(quant.clamp_backward(g, v, 0, 1), expected)
    buf = v.clone()
    assert quant.clamp_backward(g, buf, 0, 1, out=buf) is buf and torch.equal(buf, expected)


@pytest.mark.parametrize("quantizer", ["bounded", "clamp", "pact", "lsq"])
def test_activation_quantizers_keep_no_tensor_of_their_own_for_the_backward(quantizer):
    """Everything activation-sized a fused quantizer saves is its input or its output (which the ReLU before it and
    the conv after it keep anyway); the plain graph kept two or three float intermediates per quantizer."""
    x = leaf(torch.relu(torch.randn(4, 2, 8, 6, 6)))
    scale = leaf(torch.tensor(0.7))
    run_quantizer = {
        "bounded": lambda: quantize_activation(x, torch.zeros(()), scale, 4),
        "clamp": lambda: clamp_discretize(x, 16),
        "pact": lambda: pact_quantize(x, scale, 4),
        "lsq": lambda: lsq_quantize(x, scale, 0, 15, x[0].numel()),
    }[quantizer]
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        out = run_quantizer()
    large = [t for t in saved if t.numel() == x.numel()]
    assert large and all(t.data_ptr() in (x.data_ptr(), out.data_ptr()) for t in large)
    assert all(t.numel() == 1 for t in saved if t.numel() != x.numel())
