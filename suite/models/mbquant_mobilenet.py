"""MBQuant's multi-branch MobileNetV1, as in docs/spec/imagenet-models.md §1, §2, §6.

A full-precision head (3x3 stride-2 conv 32, one BN shared by all bit-widths, ReLU) tiled G times, then 13
depthwise-separable blocks ``stage_{s}_layer_{i}``, each ``body = [dw MultiBranchDepthwiseConv (b-bit weights),
SwitchableBatchNorm, ReLU, pw MultiBranchConv 1x1 (2-bit weights), SwitchableBatchNorm, ReLU]`` (the last block
then averages its ceil(b/2) branch outputs), average pool and a full-precision ``classifier``. No channel
shuffle (the release's call is commented out). Rows are offset by ``co`` (aligned), as in the ImageNet ResNets.

``load_pretrained_fp`` initialises every branch from a full-precision MobileNetV1 read from a local file (§6.2).
"""
from __future__ import annotations

import os

import torch
from torch import nn

from suite.layers.multibranch import (
    BOUND_NAMES, MultiBranchConv, MultiBranchDepthwiseConv, SwitchableBatchNorm, bn_sizes, depthwise_bn_sizes,
)
from suite.models.mobilenet import HEAD_WIDTH, MobileNetV1, mv1_layers

# Partial outputs of each block's pw conv at 3 bits (the release's ``oneBit``); a block's p_in is the previous
# block's p_out (HEAD_WIDTH for the first block).
MV1_PARTIAL_OUT = (52, 40, 101, 148, 223, 373, 404, 236, 376, 419, 233, 892, 1024)
BN_FIELDS = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")


class DepthwiseSeparable(nn.Module):
    """The release's ``QDepthwiseSeparableConv``: keys ``body.0`` (dw), ``body.1``, ``body.3`` (pw), ``body.4``.
    The network's last block ends with the mean of the ceil(b/2) branch outputs."""

    def __init__(self, ci, co, stride, partial, *, first, last, dw_kw, conv_kw, branches):
        super().__init__()
        p_out, p_in = partial
        self.co, self.last = co, last
        self.body = nn.Sequential(
            MultiBranchDepthwiseConv(ci, stride, partial_in=p_in, reads_stem=first, **dw_kw),
            SwitchableBatchNorm(depthwise_bn_sizes(ci, p_in)),
            nn.ReLU(inplace=True),
            MultiBranchConv(ci, co, 1, 1, 0, partial=(p_out, p_in), **conv_kw),
            # Built without the last-conv flag even for the last block; with p_out = co = 1024 the sizes are
            # the last-conv layout anyway (§6.1).
            SwitchableBatchNorm(bn_sizes(co, p_out, last=False, branches=branches, release_quirks=False)),
            nn.ReLU(inplace=True),
        )
        self.active_bits: int | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.body(x)
        if self.last:
            n, c, h, w = out.shape
            out = out.view(n, (self.active_bits + 1) // 2, self.co, h, w).mean(dim=1)
        return out


class MBQuantMobileNetV1(MobileNetV1):
    def __init__(self, num_classes: int = 1000, *, bits=(2, 4, 6, 8), branches: int = 4,
                 strategy: str = "amortization", release_quirks: bool = True, conv_impl: str = "grouped",
                 pretrained_fp: str | None = None):
        dw_kw = dict(branches=branches, strategy=strategy, release_quirks=release_quirks)
        conv_kw = dict(dw_kw, conv_impl=conv_impl, row_offset="co")
        # A block's p_in is the previous block's p_out (HEAD_WIDTH for the first block).
        partial = dict(zip((place for _, place in mv1_layers()),
                           zip(MV1_PARTIAL_OUT, (HEAD_WIDTH, *MV1_PARTIAL_OUT[:-1]))))

        def block(place):
            return DepthwiseSeparable(place.ci, place.co, place.stride, partial[place], first=place.first,
                                      last=place.last, dw_kw=dw_kw, conv_kw=conv_kw, branches=branches)

        # The release ignores num_classes (always 1000); we do not.
        super().__init__(num_classes, bits=bits, block=block, head_copies=branches)
        self.branches = branches
        if pretrained_fp is not None:
            load_pretrained_fp(self, pretrained_fp)


def mbquant_mobilenetv1(**kwargs) -> MBQuantMobileNetV1:
    return MBQuantMobileNetV1(**kwargs)


# ----------------------------------------------------------------------------------------------------------
# Full-precision initialisation (imagenet-models.md §6.2)
# ----------------------------------------------------------------------------------------------------------


def fp_key_map() -> dict[str, str]:
    """Model key -> key of pytorchcv's ``mobilenet_w1`` state dict (the release's FP source), for every
    non-quantizer entry: head, the dw/pw conv weights and BNs of the 13 blocks, classifier. The release pairs
    the two lists by position; pairing by name gives the same pairs and fails loudly on a foreign file."""
    keys = {"head.0.weight": "features.init_block.conv.weight"}
    keys |= {f"head.1.{f}": f"features.init_block.bn.{f}" for f in BN_FIELDS}
    for name, place in mv1_layers():
        unit = f"features.stage{place.stage + 1}.unit{place.index + 1}"
        for conv, bn, part in (("0", "1", "dw_conv"), ("3", "4", "pw_conv")):
            keys[f"{name}.body.{conv}.weight"] = f"{unit}.{part}.conv.weight"
            keys |= {f"{name}.body.{bn}.{f}": f"{unit}.{part}.bn.{f}" for f in BN_FIELDS}  # per-bit BNs: see below
    keys |= {"classifier.weight": "output.weight", "classifier.bias": "output.bias"}
    return keys


def _tile_to(fp: torch.Tensor, length: int) -> torch.Tensor:
    """Tile along dim 0 (every branch gets a copy) and truncate to ``length`` (a per-bit BN's width)."""
    return fp.repeat(-(-length // fp.shape[0]), *([1] * (fp.dim() - 1)))[:length]


@torch.no_grad()
def load_pretrained_fp(model: MBQuantMobileNetV1, path: str) -> None:
    """Initialise ``model`` from a full-precision MobileNetV1 state dict in the local file ``path``.

    The file holds pytorchcv's ``mobilenet_w1`` state dict (keys ``features.init_block.*``,
    ``features.stage{1..5}.unit{u}.{dw_conv,pw_conv}.{conv.weight,bn.*}``, ``output.*``), bare or under a
    ``state_dict`` key, with or without a ``module.`` prefix. As the release does (§6.2): head conv/BN and
    classifier are copied; every dw and pw weight is tiled G times along dim 0 (identical branches); every FP BN
    goes into all 7 per-bit BNs, each vector tiled and truncated to that BN's width (the 3-bit BN of width
    co + p gets [FP(0:co), FP(0:p)]), ``num_batches_tracked`` copied. The quantizer bounds are not touched
    (``calibrate`` sets them).
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(f"full-precision MobileNetV1 state dict not found: {path} (a local file saved "
                                "with torch.save from pytorchcv's mobilenet_w1; it is never downloaded)")
    state = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    state = {k.removeprefix("module."): v for k, v in state.items()}
    own = model.state_dict()
    pairs, new = fp_key_map(), {}
    for key, target in own.items():
        module, field = key.rsplit(".", 1)
        if field in BOUND_NAMES:
            continue
        bn = module.rsplit(".bn.", 1)[0] if ".bn." in key else None  # per-bit BN ``<bn>.bn.<j>`` <- FP BN ``<bn>``
        source = pairs.get(f"{bn}.{field}" if bn else key)
        if source is None:
            raise KeyError(f"no full-precision source known for model entry {key!r}")
        if source not in state:
            raise KeyError(f"{path} lacks {source!r} (for {key}); expected pytorchcv mobilenet_w1 keys")
        fp = value = state[source]
        if key.split(".", 1)[0] in model.block_names and target.dim() > 0:
            # Body entries hold one FP copy per branch: a conv weight G copies, a per-bit BN as many channels as
            # that bit-width selects (its 2-bit entry, bn.0, is one branch wide).
            width = own[f"{bn}.bn.0.{field}"].shape[0] if bn else target.shape[0] // model.branches
            if fp.shape[0] == width:
                value = _tile_to(fp, target.shape[0])
        if value.shape != target.shape:
            raise ValueError(f"{source} {tuple(fp.shape)} cannot initialise {key} {tuple(target.shape)}")
        new[key] = value
    missing, unexpected = model.load_state_dict(new, strict=False)
    assert not unexpected and all(k.rsplit(".", 1)[-1] in BOUND_NAMES for k in missing)
