"""MBQuant's multi-branch CIFAR ResNets (ResNet-20, ResNet-8), as in docs/spec/mbquant.md §1, §3-§5.

Stem and classifier are full precision and shared by all bit-widths; every body conv, shortcut 1x1 convs
included, is a ``MultiBranchConv``; every body BN a ``SwitchableBatchNorm``. Stored branch k reads its own
stem channels [16k, 16k+16); the last block averages the ceil(b/2) branch outputs.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from suite.layers.branch_selection import first_branch
from suite.layers.multibranch import MultiBranchConv, SwitchableBatchNorm, bn_sizes
from suite.models.base import BitSwitchable
from suite.models.resnet import CIFAR_WIDTHS

# Per-stage (partial outputs, partial inputs) of the 3-bit partial branch in the released CIFAR ResNets.
CIFAR_PARTIAL_WIDTHS = ((16, 8), (24, 16), (48, 24))


class BasicBlock(nn.Module):
    def __init__(self, ci, co, stride, stage_partial, *, first, last, conv_kw, bn_kw):
        super().__init__()
        p_out, p_in = stage_partial
        self.ci, self.co, self.p_out, self.first, self.last = ci, co, p_out, first, last
        self.strategy, self.release_quirks = conv_kw["strategy"], conv_kw["release_quirks"]
        # The partial branch's input width per conv (mbquant.md §3): the first body conv reads all ci stem
        # channels, every conv2 reads its stage's p_out, other conv1s and shortcuts the stage's p_in.
        self.conv1 = MultiBranchConv(ci, co, 3, stride, 1, partial=(p_out, ci if first else p_in),
                                     reads_stem=first, **conv_kw)
        self.bn1 = SwitchableBatchNorm(bn_sizes(co, p_out, last=False, **bn_kw))
        self.conv2 = MultiBranchConv(co, co, 3, 1, 1, partial=(co if last else p_out, p_out), **conv_kw)
        self.bn2 = SwitchableBatchNorm(bn_sizes(co, p_out, last=last, **bn_kw))
        self.shortcut = None
        if stride != 1 or ci != co:
            self.shortcut = nn.Sequential(
                MultiBranchConv(ci, co, 1, stride, 0, partial=(p_out, p_in), **conv_kw),
                SwitchableBatchNorm(bn_sizes(co, p_out, last=False, **bn_kw)),
            )
        self.active_bits: int | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b = self.active_bits
        identity = x if self.shortcut is None else self.shortcut(x)
        if self.first:
            # The first block's input is the whole stem: keep the identity channels of the active branches.
            # The release always starts at channel 0, even where conv1 reads from an offset (quirk 5).
            start = 0 if self.release_quirks or b % 2 else first_branch(b, self.strategy) * self.ci
            identity = identity[:, start:start + (b // 2) * self.ci + (self.p_out if b % 2 else 0)]
        out = F.relu(self.bn1(self.conv1(x)), inplace=True)
        out = self.bn2(self.conv2(out))
        if self.last and b % 2:
            # The last conv's partial branch has all co outputs, its residual only p_out: pad with zeros.
            identity = F.pad(identity, (0, 0, 0, 0, 0, self.co - self.p_out))
        out = F.relu(out + identity, inplace=True)
        if self.last:
            n, c, h, w = out.shape
            out = out.view(n, (b + 1) // 2, self.co, h, w).mean(dim=1)
        return out


class MBQuantResNetCIFAR(BitSwitchable):
    def __init__(self, depth: int = 20, num_classes: int = 100, *, bits=(2, 4, 6, 8), branches: int = 4,
                 strategy: str = "amortization", release_quirks: bool = True, conv_impl: str = "grouped",
                 widths=CIFAR_WIDTHS, partial_widths=CIFAR_PARTIAL_WIDTHS):
        super().__init__()
        if (depth - 2) % 6:
            raise ValueError(f"CIFAR ResNet depth must be 6n+2, got {depth}")
        self.bits = list(bits)
        conv_kw = dict(branches=branches, strategy=strategy, release_quirks=release_quirks, conv_impl=conv_impl)
        bn_kw = dict(branches=branches, release_quirks=release_quirks)
        # Full-precision stem, one 16-channel slice per stored branch.
        self.conv1 = nn.Conv2d(3, widths[0] * branches, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0] * branches)
        blocks_per_stage, ci = (depth - 2) // 6, widths[0]
        stages = []
        for s, (co, partial) in enumerate(zip(widths, partial_widths)):
            blocks = []
            for i in range(blocks_per_stage):
                blocks.append(BasicBlock(
                    ci, co, 2 if (s > 0 and i == 0) else 1, partial,
                    first=(s == 0 and i == 0), last=(s == len(widths) - 1 and i == blocks_per_stage - 1),
                    conv_kw=conv_kw, bn_kw=bn_kw,
                ))
                ci = co
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3 = stages
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(widths[-1], num_classes)
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, MultiBranchConv)):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")  # whole stored tensor
        self.set_bits(max(self.bits))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn1(self.conv1(x)), inplace=True)
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(torch.flatten(self.avgpool(x), 1))


def mbquant_resnet20(**kwargs) -> MBQuantResNetCIFAR:
    return MBQuantResNetCIFAR(depth=20, **kwargs)


def mbquant_resnet8(**kwargs) -> MBQuantResNetCIFAR:
    return MBQuantResNetCIFAR(depth=8, **kwargs)
