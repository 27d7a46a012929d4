"""MBQuant ImageNet models (ResNet-18/34, MobileNetV1) against imagenet-models.md and the release's state dicts.

Small inputs (32x32, 64x64): the models are fully convolutional up to the adaptive pool. Calibrated models are
shared per module (the ResNet-18 body alone has 45M parameters).
"""
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from suite.costs import measure_cost
from suite.methods import mbquant
from suite.layers.branch_selection import depthwise_slices, first_branch
from suite.layers.multibranch import BOUND_NAMES, MultiBranchConv, MultiBranchDepthwiseConv, SwitchableBatchNorm
from suite.methods.common import calibrate
from suite.models import create_model
from suite.models import mbquant_resnet as resnet_module
from suite.models.mbquant_mobilenet import MV1_PARTIAL_OUT, load_pretrained_fp, mv1_layers
from suite.models.mbquant_resnet import channel_shuffle
from suite.layers.quant import quantize_activation, quantize_weight

REFERENCE = Path(__file__).resolve().parent / "reference"
SETTINGS = {"2468": ([2, 4, 6, 8], "amortization"), "234": ([2, 3, 4], "serial")}
RELEASE_QUANTIZER_FIELDS = ("uW", "lW", "uA", "lA", "output_scale", "bkwd_scaling_factorW", "bkwd_scaling_factorA",
                            "init")
QUANTIZED = (MultiBranchConv, MultiBranchDepthwiseConv)
SIZE = 32


def build(arch, setting, classes=10, **kw):
    bits, strategy = SETTINGS[setting]
    return create_model(f"mbquant_{arch}", num_classes=classes, bits=bits, strategy=strategy, **kw)


CALIBRATION_LOGITS = {}  # (arch, setting) -> {b: logits of that bit-width's train-mode calibration forward}


@pytest.fixture(scope="module")
def models():
    """Calibrated models (10 classes, 32x32 batches of 2), built on first use and shared by the module's tests."""
    cache = {}

    def get(arch, setting):
        if (arch, setting) not in cache:
            torch.manual_seed(0)
            model = build(arch, setting)
            bits, logits = SETTINGS[setting][0], []
            hook = model.register_forward_hook(lambda m, i, o: logits.append(o))
            calibrate(model, bits, [(torch.randn(2, 3, SIZE, SIZE), None) for _ in bits])
            hook.remove()
            CALIBRATION_LOGITS[arch, setting] = dict(zip(bits, logits))
            cache[arch, setting] = model.eval()
        return cache[arch, setting]

    return get


def quantized_modules(model):
    return {n: m for n, m in model.named_modules() if isinstance(m, QUANTIZED)}


# -- state dict against the release ------------------------------------------------------------------------


def release_keys(tsv):
    rows = [line.split("\t") for line in (REFERENCE / tsv).read_text().splitlines() if line]
    return {k: tuple(int(v) for v in shape.strip("()").split(",") if v.strip()) for k, shape, _ in rows}


@pytest.mark.parametrize("arch,tsv,n_convs", [("resnet18", "imagenet_resnet18_2468_state_dict.tsv", 19),
                                              ("mobilenetv1", "imagenet_mobilenetv1_2468_state_dict.tsv", 26)])
def test_state_dict_mirrors_the_release(arch, tsv, n_convs):
    release = release_keys(tsv)
    if arch == "resnet18":  # the 2-3-4 checkpoint has the same keys and shapes
        assert release_keys("imagenet_resnet18_234_state_dict.tsv") == release
    model = build(arch, "2468", classes=1000)
    ours = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    quantizer = set(BOUND_NAMES)

    # Weights, BNs, stem and classifier: the same keys with the same shapes, both ways.
    release_plain = {k: s for k, s in release.items() if not set(k.split(".")) & set(RELEASE_QUANTIZER_FIELDS)}
    ours_plain = {k: s for k, s in ours.items() if k.rsplit(".", 1)[-1] not in quantizer}
    assert ours_plain == release_plain

    # Quantizer tensors differ by design: one conv per release conv key family, G weight bounds, [G, 7] act bounds.
    release_convs = {k.removesuffix(".uW.0") for k in release if k.endswith(".uW.0")}
    convs = quantized_modules(model)
    assert set(convs) == release_convs and len(convs) == n_convs
    for name in convs:
        assert ours[f"{name}.w_lower"] == ours[f"{name}.w_upper"] == (4,)
        assert ours[f"{name}.a_lower"] == ours[f"{name}.a_upper"] == (4, 7)
        assert all(release[f"{name}.{f}.{s}"] == ((7,) if f in ("uA", "lA") else ()) for f in ("uW", "lW", "uA", "lA")
                   for s in range(4))
        assert ours[f"{name}.weight"] == release[f"{name}.weight"]
    if arch == "mobilenetv1":  # depthwise convs: no output_scale in the release either
        dws = {n for n, m in convs.items() if isinstance(m, MultiBranchDepthwiseConv)}
        assert dws == {n for n in release_convs if n.endswith("body.0")} and len(dws) == 13
        assert not any(k.startswith(tuple(f"{n}.output_scale" for n in dws)) for k in release)


def test_method_builds_the_imagenet_models():
    trainable = mbquant.build("mobilenetv1", 10, [2, 4, 6, 8], mbquant.Options())
    assert type(trainable.model).__name__ == "MBQuantMobileNetV1"
    assert len(trainable.params_of("quantizer")) == 4 * 26  # w_lower, w_upper, a_lower, a_upper of 26 quantized convs
    serial = mbquant.build("mobilenetv1", 10, [2, 3, 4], mbquant.Options(selection="serial", variant="clean"))
    assert serial.model.stage_0_layer_0.body[0].slices(4).inputs == (0, 64)  # clean: no amortized-offset leftover
    with pytest.raises(KeyError, match="mbquant_resnet50"):
        mbquant.build("resnet50", 10, [2, 4], mbquant.Options())


def test_resnet34_layout_and_three_bit_widths():
    """ResNet-34: [3, 4, 6, 3] blocks, its own partial widths (§5); one 3-bit calibration forward, hooked."""
    torch.manual_seed(0)
    r34 = build("resnet34", "234")
    convs = quantized_modules(r34)
    assert len(convs) == 2 * (3 + 4 + 6 + 3) + 3
    assert {n for n in convs if "downsample" in n} == {"layer2.0.downsample.0", "layer3.0.downsample.0",
                                                      "layer4.0.downsample.0"}
    sd = r34.state_dict()
    assert sd["layer4.2.conv2.weight"].shape == (2048, 512, 3, 3) and "layer4.2.bn2.bn.7.weight" not in sd
    assert [sd[f"layer4.2.bn2.bn.{j}.weight"].shape[0] for j in range(7)] == [512, 1024, 1024, 1536, 1536, 2048, 2048]
    assert [sd[f"layer2.1.bn1.bn.{j}.weight"].shape[0] for j in range(7)] == [128, 206, 256, 334, 384, 462, 512]
    widths = {}
    for name in ("layer1", "layer2", "layer3", "layer4", "layer4.1", "layer4.2.bn2", ""):
        r34.get_submodule(name).register_forward_hook(lambda m, i, o, name=name: widths.__setitem__(name, o))
    calibrate(r34, [3], [(torch.randn(2, 3, SIZE, SIZE), None)])
    out = widths.pop("")
    assert out.shape == (2, 10) and torch.isfinite(out).all()
    assert {k: v.shape[1] for k, v in widths.items()} == {
        "layer1": 64 + 39, "layer2": 128 + 78, "layer3": 256 + 188, "layer4.1": 512 + 400, "layer4.2.bn2": 1024,
        "layer4": 512}


# -- forward --------------------------------------------------------------------------------------------------


def _widths(model, bits, names, x):
    """Channel count of each named module's output at ``bits`` (of its input for names ending in ':in')."""
    seen, hooks = {}, []
    for name in names:
        module, kind = name.split(":") if ":" in name else (name, "out")
        hooks.append(model.get_submodule(module).register_forward_hook(
            lambda m, i, o, name=name, kind=kind: seen.__setitem__(name, (i[0] if kind == "in" else o).shape[1])))
    try:
        model.set_bits(bits)
        with torch.no_grad():
            model(x)
    finally:
        for h in hooks:
            h.remove()
    return [seen[n] for n in names]


def test_resnet18_three_bit_channel_widths(models):
    model = models("resnet18", "234")
    names = ["layer1.0.conv1:in", "layer1", "layer2", "layer3", "layer4.0", "layer4.1.conv2", "layer4"]
    x = torch.randn(1, 3, SIZE, SIZE)
    assert _widths(model, 3, names, x) == [256, 104, 204, 440, 908, 1024, 512]  # imagenet-models.md §3.2
    assert _widths(model, 2, names, x) == [256, 64, 128, 256, 512, 512, 512]
    assert _widths(model, 4, names, x) == [256, 128, 256, 512, 1024, 1024, 512]
    # The partial branch's input width per conv (§3.2): block 0 conv1 / shortcut read p_in, the rest p_out.
    convs = quantized_modules(model)
    assert convs["layer1.0.conv1"].slices(3).partial == ((64, 104), (0, 64), (64, 128), 1)
    assert convs["layer1.1.conv1"].slices(3).partial == ((64, 104), (0, 40), (64, 104), 1)
    assert convs["layer2.0.conv1"].slices(3).partial == ((128, 204), (0, 40), (64, 104), 1)
    assert convs["layer2.0.downsample.0"].slices(3).partial == ((128, 204), (0, 40), (64, 104), 1)
    assert convs["layer2.0.conv2"].slices(3).partial == ((128, 204), (0, 76), (128, 204), 1)
    assert convs["layer4.1.conv2"].slices(3).partial == ((512, 1024), (0, 396), (512, 908), 1)
    assert [bn.num_features for bn in model.layer2[0].downsample[1].bn] == [128, 204, 256, 332, 384, 460, 512]


def test_mobilenet_three_bit_channel_widths(models):
    model = models("mobilenetv1", "234")
    names = [n for n, *_ in mv1_layers()]
    x = torch.randn(1, 3, SIZE, SIZE)
    hooked = [f"{n}.body.3" for n in names] + [f"{n}.body.0:in" for n in names] + [f"{n}.body.0" for n in names]
    widths = _widths(model, 3, hooked + ["classifier:in"], x)
    pw, dw_in, dw_out, classifier_in = widths[:13], widths[13:26], widths[26:39], widths[39]
    assert pw == [116, 168, 229, 404, 479, 885, 916, 748, 888, 931, 745, 1916, 2048]  # imagenet-models.md §6.1
    assert dw_in[0] == 128 and dw_out[0] == 64  # the tiled head; the first dw conv reads branch 0 + 32 partial
    assert dw_out[1:] == dw_in[1:] == pw[:-1]   # a dw conv keeps its input's width
    assert classifier_in == 1024                # the mean of the two 1024-channel chunks
    assert _widths(model, 4, hooked[:13], x) == [2 * p.co for _, p in mv1_layers()]
    assert [model.stage_4_layer_1.body[4].bn[j].num_features for j in range(7)] == [1024, 2048, 2048, 3072, 3072,
                                                                                   4096, 4096]
    # (p_in, p_out) of each block: p_in = the previous block's p_out, 32 for the first.
    p_in = [32, *MV1_PARTIAL_OUT[:-1]]
    for n, pi, po in zip(names, p_in, MV1_PARTIAL_OUT):
        block = model.get_submodule(n).body
        assert block[0].partial_in == pi and block[3].partial == (po, pi)
        assert [bn.num_features for bn in block[1].bn][:2] == [block[0].c, block[0].c + pi]


def test_mobilenet_2468_widths_and_strides(models):
    model = models("mobilenetv1", "2468")
    names = [f"{n}.body.3" for n, *_ in mv1_layers()]
    assert [p.stride for _, p in mv1_layers()] == [1, 2, 1, 2, 1, 2, 1, 1, 1, 1, 1, 2, 1]
    # 64x64 input: total stride 32 (as 224 -> 112 (head) -> 56 -> 28 -> 14 -> 7) leaves 2x2 after the last block.
    spatial = {}
    hook = model.stage_4_layer_1.register_forward_hook(lambda m, i, o: spatial.__setitem__("last", o.shape[-1]))
    assert _widths(model, 2, names, torch.randn(1, 3, 64, 64)) == [p.co for _, p in mv1_layers()]
    hook.remove()
    assert spatial["last"] == 2
    assert _widths(model, 6, names, torch.randn(1, 3, SIZE, SIZE)) == [3 * p.co for _, p in mv1_layers()]


# -- channel shuffle ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("groups", [1, 2, 3, 4])
def test_channel_shuffle_permutation(groups):
    co = 6
    x = torch.arange(groups * co, dtype=torch.float32).view(1, -1, 1, 1).repeat(2, 1, 3, 3)
    out = channel_shuffle(x, groups)
    for j in range(groups * co):  # output j takes input (j mod g) * c_g + j // g (§4)
        assert torch.equal(out[:, j], x[:, (j % groups) * co + j // groups])
    for s in range(groups):  # channel c of slot s moves to c * g + s
        for c in range(co):
            assert out[0, c * groups + s, 0, 0].item() == s * co + c


def test_shuffle_only_in_downsampling_blocks(models, monkeypatch):
    model = models("resnet18", "2468")
    calls, current = [], {}
    original = resnet_module.channel_shuffle

    def recording(x, groups):
        calls.append((current["block"], groups, x.shape[1]))
        return original(x, groups)

    monkeypatch.setattr(resnet_module, "channel_shuffle", recording)
    hooks = [blk.register_forward_pre_hook(lambda m, i, name=name: current.__setitem__("block", name))
             for name, blk in model.named_modules() if isinstance(blk, resnet_module.MultiBranchBasicBlock)]
    try:
        for b in (2, 4):
            calls.clear()
            model.set_bits(b)
            with torch.no_grad():
                model(torch.randn(1, 3, SIZE, SIZE))
            assert calls == [("layer2.0", b // 2, b // 2 * 128), ("layer3.0", b // 2, b // 2 * 256),
                             ("layer4.0", b // 2, b // 2 * 512)]
    finally:
        for h in hooks:
            h.remove()


@pytest.mark.parametrize("bits", [4, 8])
def test_downsampling_block_shuffles_the_conv_path_only(models, bits):
    model = models("resnet18", "2468")
    model.set_bits(bits)
    block = model.layer3[0]
    x = torch.relu(torch.randn(2, bits // 2 * 128, 4, 4))
    with torch.no_grad():
        conv_path = block.bn2(block.conv2(F.relu(block.bn1(block.conv1(x)))))
        shortcut = block.downsample(x)
        expected = F.relu(channel_shuffle(conv_path, bits // 2) + shortcut)
        assert torch.equal(block(x), expected)
        assert not torch.equal(expected, F.relu(conv_path + shortcut))
        assert not torch.equal(expected, F.relu(channel_shuffle(conv_path + shortcut, bits // 2)))


# -- selection ----------------------------------------------------------------------------------------------


def test_imagenet_rows_are_aligned_while_cifar_keeps_its_misalignment(models):
    model = models("resnet18", "2468")
    convs = quantized_modules(model)
    assert convs["layer2.0.conv1"].slices(4).rows == (128, 384)  # ci 64 != co 128: offset by co
    assert convs["layer2.0.downsample.0"].slices(6).rows == (128, 512)
    assert convs["layer2.0.conv1"].slices(4).slots == (0, 2)     # release quirk 3 kept
    assert convs["layer1.0.conv1"].slices(4).inputs == (64, 192)  # the first conv reads the tiled stem's copies 1-2
    for name, conv in convs.items():  # every conv: whole branches, from branch first_branch(b)
        for b in (2, 4, 6, 8):
            first = first_branch(b, "amortization")
            assert conv.slices(b).rows == (first * conv.co, (first + b // 2) * conv.co)
    cifar = create_model("mbquant_resnet20", num_classes=10, bits=[2, 4, 6, 8])
    assert cifar.layer2[0].conv1.slices(4).rows == (16, 80)       # mbquant.md quirk 2, unchanged
    clean = build("resnet18", "2468", release_quirks=False)
    assert clean.layer2[0].conv1.slices(4).rows == (128, 384) and clean.layer2[0].conv1.slices(4).slots == (1, 3)


def test_mobilenet_selection(models):
    mv1 = quantized_modules(models("mobilenetv1", "2468"))
    first, later, pw = mv1["stage_0_layer_0.body.0"], mv1["stage_1_layer_0.body.0"], mv1["stage_1_layer_0.body.3"]
    assert (first.slices(4).rows, first.slices(4).inputs) == ((32, 96), (32, 96))  # branches {1, 2} of the head
    assert (later.slices(6).rows, later.slices(6).inputs) == ((64, 256), (0, 192))
    assert pw.slices(4).rows == (128, 384)  # 64 -> 128: aligned
    serial = quantized_modules(models("mobilenetv1", "234"))
    first = serial["stage_0_layer_0.body.0"]
    # The 2-3-4 code's first dw conv reads the head at the amortized offset with serial rows (same values).
    assert (first.slices(4).rows, first.slices(4).inputs) == ((0, 64), (32, 96))
    assert first.slices(3).partial == ((32, 64), (0, 1), (32, 64), 1)
    assert serial["stage_4_layer_1.body.0"].slices(3).partial == ((1024, 1916), (0, 1), (1024, 1916), 1)
    assert serial["stage_4_layer_1.body.3"].slices(3).partial == ((1024, 2048), (0, 892), (1024, 1916), 1)
    clean = depthwise_slices(4, "amortization", 32, partial_in=32, reads_stem=True, release_quirks=False)
    assert clean.slots == (1, 3) and clean.inputs == (32, 96)


# -- the release's forward, recomputed --------------------------------------------------------------------------
# Written from imagenet-models.md §1.2, §1.3 and §2 the way the release computes it: select rows and input
# channels, split them into chunks, quantize chunk s with slot s in a Python loop, concatenate, convolve.


def _release_wq(conv, w, s, levels):
    u = ((w - conv.w_lower[s]) / (conv.w_upper[s] - conv.w_lower[s])).clamp(0, 1)
    return (torch.round(u * (levels - 1)) / (levels - 1) - 0.5) * 2


def _release_aq(conv, a, s, b):
    u = ((a - conv.a_lower[s, b - 2]) / (conv.a_upper[s, b - 2] - conv.a_lower[s, b - 2])).clamp(0, 1)
    return torch.round(u * (2**b - 1)) / (2**b - 1)


def _release_qconv(conv, x, b, serial, kind, p_out, p_in):
    """QConv.select + QConv.conv (2-bit weights); ``kind``: first, last or normal."""
    W, co, ci, n = conv.weight, conv.co, conv.ci, b // 2
    conv_kw = dict(stride=conv.stride, padding=conv.padding)
    if b % 2 == 0:
        o = 0 if serial or b in (2, 8) else co  # single_len = co: aligned
        W1, A1 = W[o:o + n * co], (x[:, o:o + n * ci] if kind == "first" else x)
        qw = torch.cat([_release_wq(conv, c, s, 4) for s, c in enumerate(W1.chunk(n, 0))])
        qa = torch.cat([_release_aq(conv, c, s, b) for s, c in enumerate(A1.chunk(n, 1))], 1)
        return F.conv2d(qa, qw, None, groups=n, **conv_kw)
    W1, A1 = W[:co], x[:, :ci]
    if kind == "first":
        W2, A2 = W[co:co + p_out], x[:, ci:2 * ci]
    else:
        W2, A2 = W[co:2 * co if kind == "last" else co + p_out, :p_in], x[:, ci:]
    out1 = F.conv2d(_release_aq(conv, A1, 0, b), _release_wq(conv, W1, 0, 4), None, **conv_kw)
    out2 = F.conv2d(_release_aq(conv, A2, 1, b), _release_wq(conv, W2, 1, 4), None, **conv_kw)
    return torch.cat([out1, out2], 1)


def _release_depthwise(conv, x, b, serial, first, p_in):
    """QConv_Tra_Mulit.select + conv: b-bit weights, one depthwise conv over the selected channels."""
    W, C, n = conv.weight, conv.c, b // 2
    if serial:  # quant_conv_234: rows [0, #inputs); the first conv reads the head at the amortized offset at 4 bits
        if first:
            x = x[:, C:3 * C] if b == 4 else x[:, :C + (p_in if b % 2 else 0)] if b == 3 else x[:, :n * C]
        W1 = W[:x.shape[1]]
    else:
        o = C if b in (4, 6) else 0
        if first:
            x = x[:, o:o + n * C]
        W1 = W[o:o + x.shape[1]]
    chunks_w, chunks_a = list(W1[:n * C].chunk(n, 0)), list(x[:, :n * C].chunk(n, 1))
    if b % 2:
        chunks_w.append(W1[n * C:])
        chunks_a.append(x[:, n * C:])
    qw = torch.cat([_release_wq(conv, c, s, 2**b) for s, c in enumerate(chunks_w)])
    qa = torch.cat([_release_aq(conv, c, s, b) for s, c in enumerate(chunks_a)], 1)
    return F.conv2d(qa, qw, None, conv.stride, 1, 1, qw.shape[0])


RESNET_CONVS = {  # name: (kind, p_out, p_in, per-branch input width) in ResNet-18
    "layer1.0.conv1": ("first", 40, 64, 64), "layer2.0.downsample.0": ("normal", 76, 40, 64),
    "layer3.1.conv2": ("normal", 184, 184, 256), "layer4.1.conv2": ("last", 396, 396, 512),
}


@pytest.mark.parametrize("setting", SETTINGS)
def test_resnet18_convs_compute_the_release_formulas(models, setting):
    model = models("resnet18", setting)
    bits, strategy = SETTINGS[setting]
    torch.manual_seed(1)
    with torch.no_grad():
        for name, (kind, p_out, p_in, ci) in RESNET_CONVS.items():
            conv = model.get_submodule(name)
            for b in bits:
                if kind == "first":  # the tiled stem
                    x = torch.relu(torch.randn(2, ci, 6, 6)).tile(1, 4, 1, 1)
                else:
                    x = torch.relu(torch.randn(2, (b // 2) * ci + (p_in if b % 2 else 0), 6, 6))
                conv.active_bits = b
                expected = _release_qconv(conv, x, b, strategy == "serial", kind, p_out, p_in)
                assert torch.equal(conv(x), expected), (name, b)


@pytest.mark.parametrize("setting", SETTINGS)
def test_mobilenet_convs_compute_the_release_formulas(models, setting):
    model = models("mobilenetv1", setting)
    bits, strategy = SETTINGS[setting]
    torch.manual_seed(1)
    with torch.no_grad():
        for name, p_in, p_out, first in (("stage_0_layer_0", 32, 52, True), ("stage_3_layer_2", 404, 236, False),
                                          ("stage_4_layer_1", 892, 1024, False)):
            dw, pw = model.get_submodule(name).body[0], model.get_submodule(name).body[3]
            for b in bits:
                width = (b // 2) * dw.c + (p_in if b % 2 else 0)
                x = torch.relu(torch.randn(2, dw.c, 6, 6)).tile(1, 4, 1, 1) if first else \
                    torch.relu(torch.randn(2, width, 6, 6))
                dw.active_bits = pw.active_bits = b
                assert torch.equal(dw(x), _release_depthwise(dw, x, b, strategy == "serial", first, p_in)), (name, b)
                y = torch.relu(torch.randn(2, width, 3, 3))
                kind = "last" if name == "stage_4_layer_1" else "normal"
                assert torch.equal(pw(y), _release_qconv(pw, y, b, strategy == "serial", kind, p_out, p_in)), (name, b)


# -- depthwise layer ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
def test_depthwise_conv_quantizes_weights_at_b_bits(bits):
    torch.manual_seed(0)
    strategy = "serial" if bits == 3 else "amortization"
    conv = MultiBranchDepthwiseConv(4, 2, branches=4, partial_in=2, strategy=strategy, release_quirks=True)
    torch.nn.init.normal_(conv.weight)
    conv.active_bits = bits
    width = (bits // 2) * 4 + (2 if bits % 2 else 0)
    x = torch.relu(torch.randn(3, width, 9, 9))
    conv.calibrating = True
    out = conv(x)
    conv.calibrating = False
    assert out.shape == (3, width, 5, 5)
    # Reference: per slot s, the chunk's weights on 2^b levels and inputs on 2^b levels, one depthwise conv.
    sl = conv.slices(bits)
    rows = list(range(*sl.rows)) + (list(range(*sl.partial[0])) if sl.partial else [])
    chunks = [(s, 4) for s in range(sl.groups)] + ([(1, 2)] if sl.partial else [])
    ws, xs, start = [], [], 0
    for slot, size in chunks:
        w = conv.weight[rows[start:start + size]]
        # Calibration: 3 * std of the slot's own chunk (no quirk 1 here).
        assert conv.w_upper[slot].item() == pytest.approx(3 * w.std().item())
        ws.append(quantize_weight(w, conv.w_lower[slot], conv.w_upper[slot], 2**bits))
        xs.append(quantize_activation(x[:, start:start + size], conv.a_lower[slot, bits - 2],
                                      conv.a_upper[slot, bits - 2], bits))
        start += size
    w, a = torch.cat(ws), torch.cat(xs, dim=1)
    assert len(torch.unique(w)) <= 2**bits and (bits == 2 or len(torch.unique(w)) > 4)
    torch.testing.assert_close(out, F.conv2d(a, w, None, 2, 1, 1, width), rtol=0, atol=1e-5)
    macs, bitops = conv.macs_and_bitops(out[:1])
    assert macs == width * 25 * 9 and bitops == bits * bits * macs


def test_mobilenet_depthwise_calibration_uses_branch_chunks(models):
    dw = models("mobilenetv1", "2468").stage_1_layer_1.body[0]
    for s in range(4):  # last pass (8 bits): slot s = branch s, bound from the branch's own rows
        assert dw.w_upper[s].item() == pytest.approx(3 * dw.weight[s * 128:(s + 1) * 128].std().item())
    pw = models("mobilenetv1", "2468").stage_1_layer_1.body[3]
    for s in range(4):  # the pw conv keeps quirk 1: output filter s of the whole weight
        assert pw.w_upper[s].item() == pytest.approx(3 * pw.weight[s].std().item())


def test_stem_bn_is_shared_and_body_bns_are_per_bit(models):
    model = models("resnet18", "2468")
    assert isinstance(model.bn1, torch.nn.BatchNorm2d) and model.bn1.num_batches_tracked.item() == 4
    assert isinstance(model.layer1[0].bn1, SwitchableBatchNorm)
    assert [bn.num_batches_tracked.item() for bn in model.layer1[0].bn1.bn] == [1, 0, 1, 0, 1, 0, 1]


# -- costs ----------------------------------------------------------------------------------------------------


def cost_and_flops(model, b, size):
    """``measure_cost`` at ``b``, and torch's own count of the quantized layers' MACs in that same forward:
    (depthwise, other)."""
    with FlopCounterMode(display=False) as counter:
        cost = measure_cost(model, b, (3, size, size))
    counts = counter.get_flop_counts()
    prefix = type(model).__name__ + "."
    macs = {True: 0, False: 0}
    for name, m in quantized_modules(model).items():
        macs[isinstance(m, MultiBranchDepthwiseConv)] += sum(counts.get(prefix + name, {}).values()) // 2
    return cost, macs[True], macs[False]


@pytest.mark.parametrize("setting", SETTINGS)
@pytest.mark.parametrize("arch", ["resnet18", "mobilenetv1"])
def test_forward_and_bitops_at_every_bit_width(models, arch, setting):
    """Finite logits at every bit-width (calibration's train-mode forwards, then eval-mode ones), and costs:
    2-bit weights x b-bit activations on the multi-branch convs, b-bit x b-bit on the depthwise ones.

    For the ResNet that is b*b x the MACs of one branch (the original network), as for the CIFAR model. For
    MobileNetV1 the depthwise layers run b/2 branches at b-bit weights: b*b*(b/2) x one branch's depthwise MACs.
    """
    model = models(arch, setting)
    bits = SETTINGS[setting][0]
    for b, out in CALIBRATION_LOGITS[arch, setting].items():
        assert out.shape == (2, 10) and torch.isfinite(out).all(), b
    for m in quantized_modules(model).values():  # calibration wrote exactly the slots and columns each b uses
        for b in bits:
            sl = m.slices(b)
            n = sl.groups + (sl.partial is not None)
            assert (m.a_upper[:n, b - 2] != 0).all() and (m.a_upper[n:, b - 2] == 0).all()
        assert (m.w_upper[:max(bits) // 2] > 0).all()

    size = 64 if setting == "2468" else SIZE
    logits = []
    hook = model.register_forward_hook(lambda m, i, o: logits.append(o))
    try:
        base, base_dw, base_other = cost_and_flops(model, 2, size)
        for b in bits:
            cost, dw, other = cost_and_flops(model, b, size) if b != 2 else (base, base_dw, base_other)
            assert logits[-1].shape == (1, 10) and torch.isfinite(logits[-1]).all()  # eval mode, after calibration
            assert cost.quantized_macs == dw + other  # dw, other: independent counts (torch's)
            assert cost.quantized_bitops == 2 * b * other + b * b * dw
            assert cost.fp_macs == base.fp_macs  # stem/head + classifier, shared
            if b % 2 == 0:
                assert (dw, other) == (b // 2 * base_dw, b // 2 * base_other)
                assert cost.quantized_bitops == b * b * base_other + b * b * (b // 2) * base_dw
            else:  # 3 bits: branch 0 plus a partial branch, between one and two branches
                assert base.quantized_macs < cost.quantized_macs < 2 * base.quantized_macs
                if arch == "resnet18":  # between the 2- and 4-bit networks
                    assert 4 * base.quantized_macs < cost.quantized_bitops < 16 * base.quantized_macs
    finally:
        hook.remove()
    assert base.quantized_macs == base_dw + base_other and (base_dw > 0) == (arch == "mobilenetv1")
    assert not torch.equal(logits[0], logits[-1])
    if arch == "resnet18" and setting == "2468":
        # One branch = torchvision's single-branch ResNet-18 body (stem 7x7 conv and fc are FP here).
        from torchvision.models import resnet18

        with FlopCounterMode(display=False) as counter:
            resnet18(num_classes=10)(torch.zeros(1, 3, size, size))
        body = sum(sum(v.values()) for k, v in counter.get_flop_counts().items()
                   if k.startswith("ResNet.layer") and k.endswith(("conv1", "conv2", "downsample.0")))
        assert base.quantized_macs * 2 == body
        assert base.fp_macs == 64 * (size // 2) ** 2 * 3 * 49 + 512 * 10


def test_mobilenet_storage_counts_depthwise_weights_at_fp32(models):
    model = models("mobilenetv1", "2468")
    dw = sum(m.weight.numel() for m in model.modules() if isinstance(m, MultiBranchDepthwiseConv))
    pw = sum(m.weight.numel() for m in model.modules() if isinstance(m, MultiBranchConv))
    assert mbquant.storage_bits(model)["weights"] == 2 * pw + 32 * dw


# -- pretrained full-precision initialisation -------------------------------------------------------------------


def pytorchcv_mobilenet_w1(classes=1000, seed=0):
    """A synthetic state dict in pytorchcv ``mobilenet_w1``'s key order and shapes (random values)."""
    g = torch.Generator().manual_seed(seed)
    state = {}

    def bn(prefix, c):
        state.update({f"{prefix}.weight": torch.rand(c, generator=g) + 0.5,
                      f"{prefix}.bias": torch.randn(c, generator=g),
                      f"{prefix}.running_mean": torch.randn(c, generator=g),
                      f"{prefix}.running_var": torch.rand(c, generator=g) + 0.5,
                      f"{prefix}.num_batches_tracked": torch.tensor(12345)})

    state["features.init_block.conv.weight"] = torch.randn(32, 3, 3, 3, generator=g)
    bn("features.init_block.bn", 32)
    for _, place in mv1_layers():
        ci, co = place.ci, place.co
        unit = f"features.stage{place.stage + 1}.unit{place.index + 1}"
        state[f"{unit}.dw_conv.conv.weight"] = torch.randn(ci, 1, 3, 3, generator=g)
        bn(f"{unit}.dw_conv.bn", ci)
        state[f"{unit}.pw_conv.conv.weight"] = torch.randn(co, ci, 1, 1, generator=g)
        bn(f"{unit}.pw_conv.bn", co)
    state["output.weight"] = torch.randn(classes, 1024, generator=g)
    state["output.bias"] = torch.randn(classes, generator=g)
    return state


def test_pretrained_fp_tiles_every_branch(tmp_path):
    fp = pytorchcv_mobilenet_w1()
    path = tmp_path / "mobilenet_w1.pth"
    torch.save({"state_dict": {f"module.{k}": v for k, v in fp.items()}}, path)
    model = create_model("mbquant_mobilenetv1", num_classes=1000, bits=[2, 4, 6, 8], pretrained_fp=str(path))
    sd = model.state_dict()
    quantizer = {k for k in sd if k.rsplit(".", 1)[-1] in BOUND_NAMES}
    assert len(sd) - len(quantizer) == 944  # the release's positional pairing has 944 entries too (§6.2)
    assert all((sd[k] == 0).all() for k in quantizer)  # bounds untouched: calibrate sets them

    assert torch.equal(sd["head.0.weight"], fp["features.init_block.conv.weight"])
    assert torch.equal(sd["head.1.running_var"], fp["features.init_block.bn.running_var"])
    assert torch.equal(sd["classifier.weight"], fp["output.weight"])
    assert torch.equal(sd["classifier.bias"], fp["output.bias"])
    unit = "features.stage2.unit1"  # = stage_1_layer_0, 64 -> 128
    assert torch.equal(sd["stage_1_layer_0.body.0.weight"], fp[f"{unit}.dw_conv.conv.weight"].repeat(4, 1, 1, 1))
    assert torch.equal(sd["stage_1_layer_0.body.3.weight"], fp[f"{unit}.pw_conv.conv.weight"].repeat(4, 1, 1, 1))
    pw_bn = fp[f"{unit}.pw_conv.bn.weight"]
    assert torch.equal(sd["stage_1_layer_0.body.4.bn.0.weight"], pw_bn)
    assert torch.equal(sd["stage_1_layer_0.body.4.bn.1.weight"], torch.cat([pw_bn, pw_bn[:40]]))  # co + p_out
    assert torch.equal(sd["stage_1_layer_0.body.4.bn.6.weight"], pw_bn.repeat(4))
    dw_mean = fp[f"{unit}.dw_conv.bn.running_mean"]
    assert torch.equal(sd["stage_1_layer_0.body.1.bn.3.running_mean"], torch.cat([dw_mean, dw_mean, dw_mean[:52]]))
    assert sd["stage_4_layer_1.body.4.bn.5.num_batches_tracked"].item() == 12345
    last = fp["features.stage5.unit2.pw_conv.bn.bias"]
    assert torch.equal(sd["stage_4_layer_1.body.4.bn.1.bias"], torch.cat([last, last]))

    # Every branch starts as the same FP network.
    for s in range(1, 4):
        assert torch.equal(model.stage_3_layer_2.body[3].weight[s * 512:(s + 1) * 512],
                           model.stage_3_layer_2.body[3].weight[:512])


def test_pretrained_fp_errors(tmp_path):
    fp = pytorchcv_mobilenet_w1()
    bad = dict(fp)
    del bad["features.stage3.unit2.pw_conv.bn.running_var"]
    torch.save(bad, tmp_path / "bad.pth")
    model = create_model("mbquant_mobilenetv1", num_classes=1000, bits=[2, 4])
    with pytest.raises(KeyError, match="features.stage3.unit2.pw_conv.bn.running_var"):
        load_pretrained_fp(model, str(tmp_path / "bad.pth"))
    torch.save(fp, tmp_path / "fp.pth")
    ten = create_model("mbquant_mobilenetv1", num_classes=10, bits=[2, 4])
    with pytest.raises(ValueError, match="output.weight"):
        load_pretrained_fp(ten, str(tmp_path / "fp.pth"))
    with pytest.raises(FileNotFoundError, match="never downloaded"):
        load_pretrained_fp(model, str(tmp_path / "missing.pth"))
