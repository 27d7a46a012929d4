"""MBQuant's multi-branch ResNets: the ResNet trunk (resnet.py) with the multi-branch basic block.

CIFAR ResNet-20 / ResNet-8 (docs/spec/mbquant.md §1, §3-§5): a full-precision stem with one 16-channel slice per
stored branch (stored branch k reads stem channels [16k, 16k+16)); every body conv, shortcut 1x1 convs included,
is a ``MultiBranchConv``, every body BN a ``SwitchableBatchNorm``; the last block averages the ceil(b/2) branch
outputs.

ImageNet ResNet-18 / ResNet-34 (docs/spec/imagenet-models.md §1-§5) differ, all as released:
- a 64-channel full-precision stem (7x7 stride-2 conv, **one** BN shared by all bit-widths, ReLU, max-pool)
  whose output is tiled G times, so every stored branch reads an identical copy of it;
- rows are offset by ``co`` (branches stay aligned) while the other release quirks (weight bounds from output
  filter s, slot-indexed bounds) stay under ``release_quirks``;
- the conv path of every downsampling block is channel-shuffled (g = b//2) after bn2, before the residual add:
  the only exchange between branches;
- the last conv's switchable BN has 7 entries (no eighth).
Module names mirror the release's, so state-dict keys do too (CIFAR ``layer2.0.shortcut.0``, ImageNet
``layer2.0.downsample.0``, ``layer4.1.bn2.bn.3``); inside a quantized conv the bounds are the suite's tensors
(``w_lower [G]``, ``a_upper [G, 7]``, ...).
"""
from __future__ import annotations

from functools import partial

import torch
import torch.nn.functional as F
from torch import nn

from suite.layers.branch_selection import first_branch
from suite.layers.multibranch import MultiBranchConv, SwitchableBatchNorm, bn_sizes
from suite.models.resnet import CIFAR_WIDTHS, IMAGENET_BLOCKS, IMAGENET_WIDTHS, BasicBlock, Place, ResNet

# Per-stage (partial outputs, partial inputs) of the 3-bit partial branch in the released 2-3-4 ResNets
# (mbquant.md §3, imagenet-models.md §3.2, §5).
CIFAR_PARTIAL_WIDTHS = ((16, 8), (24, 16), (48, 24))
IMAGENET_PARTIAL_WIDTHS = {
    18: ((40, 64), (76, 40), (184, 76), (396, 184)),
    34: ((39, 64), (78, 39), (188, 78), (400, 188)),
}


def channel_shuffle(x: torch.Tensor, groups: int) -> torch.Tensor:
    """ShuffleNet's channel shuffle (imagenet-models.md §4): channel c of slot s moves to position c*groups + s,
    i.e. output channel j takes input channel (j mod groups)*(C/groups) + j//groups."""
    if groups == 1:
        return x
    n, c, h, w = x.shape
    return x.view(n, groups, c // groups, h, w).transpose(1, 2).reshape(n, c, h, w)


class MultiBranchBasicBlock(BasicBlock):
    """The release's ``QBasicBlock``: the basic block with multi-branch convs and switchable BNs. ``partial`` =
    (p_out, p_in) of its conv1 and shortcut; conv1 of the network's first block reads all ``ci`` stem channels,
    every conv2 reads p_out (mbquant.md §3). ``shuffle``: channel-shuffle the conv path of a downsampling block."""

    def __init__(self, place: Place, partial: tuple[int, int], *, conv_kw: dict, bn_kw: dict, shuffle: bool = False,
                 shortcut_name: str = "shortcut"):
        (p_out, p_in), ci, co, stride, last = partial, place.ci, place.co, place.stride, place.last

        def norm(is_last: bool = False) -> SwitchableBatchNorm:
            return SwitchableBatchNorm(bn_sizes(co, p_out, last=is_last, **bn_kw))

        conv1 = MultiBranchConv(ci, co, 3, stride, 1, partial=(p_out, ci if place.first else p_in),
                                reads_stem=place.first, **conv_kw)
        bn1 = norm()
        # The network's last conv: its 3-bit partial branch has all co outputs (reading p_out inputs).
        conv2 = MultiBranchConv(co, co, 3, 1, 1, partial=(co if last else p_out, p_out), **conv_kw)
        bn2 = norm(last)
        projection = None
        if place.changes_shape:
            projection = nn.Sequential(MultiBranchConv(ci, co, 1, stride, 0, partial=(p_out, p_in), **conv_kw), norm())
        super().__init__(conv1, bn1, conv2, bn2, projection, shortcut_name)
        self.ci, self.co, self.p_out, self.first, self.last, self.shuffle = ci, co, p_out, place.first, last, shuffle
        self.strategy, self.release_quirks = conv_kw["strategy"], conv_kw["release_quirks"]
        self.active_bits: int | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b = self.active_bits
        # As released, a shuffling (ImageNet) block runs its shortcut after the conv path, a CIFAR block before
        # it: the same values, but the order in which hooks, and so the switching-error tables, see the layers.
        late = self.shuffle and self.projection is not None
        identity = x if self.projection is None or late else self.projection(x)
        if self.first:
            # The first block's input is the whole stem: keep the identity channels of the active branches. The
            # release always starts at channel 0, even where conv1 reads from an offset (quirk 5; on ImageNet the
            # G stem copies are identical, so this changes no value there, imagenet-models.md §3.3).
            start = 0 if self.release_quirks or b % 2 else first_branch(b, self.strategy) * self.ci
            identity = identity[:, start:start + (b // 2) * self.ci + (self.p_out if b % 2 else 0)]
        out = F.relu(self.bn1(self.conv1(x)), inplace=True)
        out = self.bn2(self.conv2(out))
        if self.last and b % 2:
            # The last conv's partial branch has all co outputs, its residual only p_out: pad with zeros.
            identity = F.pad(identity, (0, 0, 0, 0, 0, self.co - self.p_out))
        if late:
            out = channel_shuffle(out, b // 2)  # the conv path only, after bn2; the shortcut is not shuffled
            identity = self.projection(x)
        out = F.relu(out + identity, inplace=True)
        if self.last:
            n, c, h, w = out.shape
            out = out.view(n, (b + 1) // 2, self.co, h, w).mean(dim=1)
        return out


def mbquant_cifar_resnet(depth: int = 20, num_classes: int = 100, *, bits=(2, 4, 6, 8), branches: int = 4,
                         strategy: str = "amortization", release_quirks: bool = True, conv_impl: str = "grouped",
                         widths=CIFAR_WIDTHS, partial_widths=CIFAR_PARTIAL_WIDTHS) -> ResNet:
    if (depth - 2) % 6:
        raise ValueError(f"CIFAR ResNet depth must be 6n+2, got {depth}")
    conv_kw = dict(branches=branches, strategy=strategy, release_quirks=release_quirks, conv_impl=conv_impl)
    bn_kw = dict(branches=branches, release_quirks=release_quirks)
    return ResNet(
        stem_kernel=3, stem_stride=1, maxpool=False, widths=tuple(widths), stem_width=widths[0] * branches,
        blocks_per_stage=((depth - 2) // 6,) * len(widths), num_classes=num_classes, bits=bits,
        block=lambda place: MultiBranchBasicBlock(place, partial_widths[place.stage], conv_kw=conv_kw, bn_kw=bn_kw),
        arch=f"resnet{depth}")


def mbquant_imagenet_resnet(depth: int = 18, num_classes: int = 1000, *, bits=(2, 4, 6, 8), branches: int = 4,
                            strategy: str = "amortization", release_quirks: bool = True,
                            conv_impl: str = "grouped") -> ResNet:
    if depth not in IMAGENET_BLOCKS:
        raise ValueError(f"MBQuant ImageNet ResNet depth must be one of {sorted(IMAGENET_BLOCKS)}, got {depth}")
    # The ImageNet release offsets rows by co (aligned) under every variant.
    conv_kw = dict(branches=branches, strategy=strategy, release_quirks=release_quirks, conv_impl=conv_impl,
                   row_offset="co")
    bn_kw = dict(branches=branches, release_quirks=False)  # 7 BNs at the last conv: no eighth (§1.4)

    def block(place: Place) -> MultiBranchBasicBlock:
        p_out, p_in = IMAGENET_PARTIAL_WIDTHS[depth][place.stage]  # p_in: the stage's first block only
        return MultiBranchBasicBlock(place, (p_out, p_in if place.index == 0 else p_out), conv_kw=conv_kw,
                                     bn_kw=bn_kw, shuffle=True, shortcut_name="downsample")

    return ResNet(stem_kernel=7, stem_stride=2, maxpool=True, widths=IMAGENET_WIDTHS, stem_copies=branches,
                  blocks_per_stage=IMAGENET_BLOCKS[depth], num_classes=num_classes, bits=bits, block=block,
                  arch=f"resnet{depth}")


# The registered names (suite/models/__init__.py).
mbquant_resnet20 = partial(mbquant_cifar_resnet, 20)
mbquant_resnet8 = partial(mbquant_cifar_resnet, 8)
mbquant_resnet18 = partial(mbquant_imagenet_resnet, 18)
mbquant_resnet34 = partial(mbquant_imagenet_resnet, 34)
