"""Single-branch CIFAR ResNets (ResNet-20, ResNet-8) whose body convs and BNs come from a method's factories.

The baselines' common model: the same topology as MBQuant's network with one branch (FP stem and
classifier, quantized 1x1 stride-2 shortcut convs + BN where the shape changes), so that methods differ only
in their quantized layers. ``conv(ci, co, kernel, stride, padding)`` and ``norm(channels)`` build the body
layers; any of them with an ``active_bits`` attribute follows ``model.set_bits(b)``.
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from suite.models.base import BitSwitchable

ConvFactory = Callable[[int, int, int, int, int], nn.Module]
NormFactory = Callable[[int], nn.Module]


class BasicBlock(nn.Module):
    def __init__(self, ci: int, co: int, stride: int, conv: ConvFactory, norm: NormFactory):
        super().__init__()
        self.conv1, self.bn1 = conv(ci, co, 3, stride, 1), norm(co)
        self.conv2, self.bn2 = conv(co, co, 3, 1, 1), norm(co)
        self.shortcut = None
        if stride != 1 or ci != co:
            self.shortcut = nn.Sequential(conv(ci, co, 1, stride, 0), norm(co))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)), inplace=True)
        out = self.bn2(self.conv2(out))
        return F.relu(out + (x if self.shortcut is None else self.shortcut(x)), inplace=True)


class ResNetCIFAR(BitSwitchable):
    def __init__(self, depth: int = 20, num_classes: int = 100, *, bits=(2, 4, 6, 8), conv: ConvFactory,
                 norm: NormFactory, widths=(16, 32, 64)):
        super().__init__()
        if (depth - 2) % 6:
            raise ValueError(f"CIFAR ResNet depth must be 6n+2, got {depth}")
        self.bits = list(bits)
        self.conv1 = nn.Conv2d(3, widths[0], 3, 1, 1, bias=False)  # full precision, as in every method
        self.bn1 = nn.BatchNorm2d(widths[0])
        blocks_per_stage, ci, stages = (depth - 2) // 6, widths[0], []
        for s, co in enumerate(widths):
            blocks = []
            for i in range(blocks_per_stage):
                blocks.append(BasicBlock(ci, co, 2 if (s > 0 and i == 0) else 1, conv, norm))
                ci = co
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3 = stages
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(widths[-1], num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        self.set_bits(max(self.bits))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn1(self.conv1(x)), inplace=True)
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(torch.flatten(self.avgpool(x), 1))


def resnet20(**kwargs) -> ResNetCIFAR:
    return ResNetCIFAR(depth=20, **kwargs)


def resnet8(**kwargs) -> ResNetCIFAR:
    return ResNetCIFAR(depth=8, **kwargs)
