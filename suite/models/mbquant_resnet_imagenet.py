"""MBQuant's multi-branch ImageNet ResNets (ResNet-18, ResNet-34), as in docs/spec/imagenet-models.md §1-§5.

Differences from the CIFAR model (mbquant_resnet_cifar.py), all as released:
- a 64-channel full-precision stem (7x7 stride-2 conv, **one** BN shared by all bit-widths, ReLU, max-pool)
  whose output is tiled G times, so every stored branch reads an identical copy of it;
- rows are offset by ``co`` (branches stay aligned) while the other release quirks (weight bounds from output
  filter s, slot-indexed bounds) stay under ``release_quirks``;
- the conv path of every downsampling block is channel-shuffled (g = b//2) after bn2, before the residual add:
  the only exchange between branches;
- the last conv's switchable BN has 7 entries (no eighth).
Module names mirror the release's, so state-dict keys do too (``layer2.0.downsample.0``, ``layer4.1.bn2.bn.3``);
inside a quantized conv the bounds are the suite's tensors (``w_lower [G]``, ``a_upper [G, 7]``, ...).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from suite.layers.branch_selection import first_branch
from suite.layers.multibranch import MultiBranchConv, SwitchableBatchNorm, bn_sizes
from suite.models.base import BitSwitchable
from suite.models.resnet import IMAGENET_BLOCKS, IMAGENET_WIDTHS

# Per-stage (partial outputs, partial inputs) of the 3-bit partial branch in the released 2-3-4 ResNets (§3.2, §5).
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


class BasicBlock(nn.Module):
    """The release's ``QBasicBlock``. ``partial`` = (p_out, p_in) of this block's conv1 and shortcut: the stage's
    values in its first block (p_in = ci = 64 in the network's first block), (p_out, p_out) in later blocks."""

    def __init__(self, ci, co, stride, partial, *, first, last, conv_kw, bn_kw):
        super().__init__()
        p_out, p_in = partial
        self.ci, self.co, self.p_out, self.first, self.last = ci, co, p_out, first, last
        self.strategy, self.release_quirks = conv_kw["strategy"], conv_kw["release_quirks"]
        self.conv1 = MultiBranchConv(ci, co, 3, stride, 1, partial=(p_out, p_in), reads_stem=first, **conv_kw)
        self.bn1 = SwitchableBatchNorm(bn_sizes(co, p_out, last=False, **bn_kw))
        # The network's last conv: its 3-bit partial branch has all co outputs (reading p_out inputs).
        self.conv2 = MultiBranchConv(co, co, 3, 1, 1, partial=(co if last else p_out, p_out), **conv_kw)
        self.bn2 = SwitchableBatchNorm(bn_sizes(co, p_out, last=last, **bn_kw))
        self.downsample = None
        if stride != 1 or ci != co:
            self.downsample = nn.Sequential(
                MultiBranchConv(ci, co, 1, stride, 0, partial=(p_out, p_in), **conv_kw),
                SwitchableBatchNorm(bn_sizes(co, p_out, last=False, **bn_kw)),
            )
        self.active_bits: int | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b = self.active_bits
        identity = x
        if self.first:
            # The first block's input is the tiled stem: keep the identity channels of the active branches.
            # The release starts at channel 0 even where conv1 reads from an offset; the G copies are identical,
            # so this changes no value (imagenet-models.md §3.3).
            start = 0 if self.release_quirks or b % 2 else first_branch(b, self.strategy) * self.ci
            identity = x[:, start:start + (b // 2) * self.ci + (self.p_out if b % 2 else 0)]
        out = F.relu(self.bn1(self.conv1(x)), inplace=True)
        out = self.bn2(self.conv2(out))
        if self.last and b % 2:
            # The last conv's partial branch has all co outputs, its residual only p_out: pad with zeros at the end.
            identity = F.pad(identity, (0, 0, 0, 0, 0, self.co - self.p_out))
        if self.downsample is not None:
            out = channel_shuffle(out, b // 2)  # the conv path only, after bn2; the shortcut is not shuffled
            identity = self.downsample(x)
        out = F.relu(out + identity, inplace=True)
        if self.last:
            n, c, h, w = out.shape
            out = out.view(n, (b + 1) // 2, self.co, h, w).mean(dim=1)
        return out


class MBQuantResNetImageNet(BitSwitchable):
    def __init__(self, depth: int = 18, num_classes: int = 1000, *, bits=(2, 4, 6, 8), branches: int = 4,
                 strategy: str = "amortization", release_quirks: bool = True, conv_impl: str = "grouped"):
        super().__init__()
        if depth not in IMAGENET_BLOCKS:
            raise ValueError(f"MBQuant ImageNet ResNet depth must be one of {sorted(IMAGENET_BLOCKS)}, got {depth}")
        self.bits, self.branches = list(bits), branches
        # The ImageNet release offsets rows by co (aligned) under every variant.
        conv_kw = dict(branches=branches, strategy=strategy, release_quirks=release_quirks, conv_impl=conv_impl,
                       row_offset="co")
        bn_kw = dict(branches=branches, release_quirks=False)  # 7 BNs at the last conv: no eighth (§1.4)
        # Full-precision stem shared by all branches and bit-widths (one BN), tiled G times in ``forward``.
        self.conv1 = nn.Conv2d(3, IMAGENET_WIDTHS[0], 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(IMAGENET_WIDTHS[0])
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        stage_blocks, ci = IMAGENET_BLOCKS[depth], IMAGENET_WIDTHS[0]
        stages = zip(IMAGENET_WIDTHS, stage_blocks, IMAGENET_PARTIAL_WIDTHS[depth])
        for s, (co, n_blocks, (p_out, p_in)) in enumerate(stages):
            blocks = []
            for i in range(n_blocks):
                blocks.append(BasicBlock(
                    ci, co, 2 if (s > 0 and i == 0) else 1, (p_out, p_in if i == 0 else p_out),
                    first=(s == 0 and i == 0), last=(s == len(IMAGENET_WIDTHS) - 1 and i == n_blocks - 1),
                    conv_kw=conv_kw, bn_kw=bn_kw,
                ))
                ci = co
            self.add_module(f"layer{s + 1}", nn.Sequential(*blocks))
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(IMAGENET_WIDTHS[-1], num_classes)
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, MultiBranchConv)):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")  # whole stored tensor
        self.set_bits(max(self.bits))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = x.tile(1, self.branches, 1, 1)  # as released: G identical copies, branch k reads copy k
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


def mbquant_resnet18(**kwargs) -> MBQuantResNetImageNet:
    return MBQuantResNetImageNet(depth=18, **kwargs)


def mbquant_resnet34(**kwargs) -> MBQuantResNetImageNet:
    return MBQuantResNetImageNet(depth=34, **kwargs)
