"""Single-branch ResNets whose body convs and BNs come from a method's factories: the baselines' models.

CIFAR ResNet-20 / ResNet-8 and ImageNet ResNet-18 / ResNet-34, each with the same topology as MBQuant's
network of that name with one branch (FP stem and classifier, quantized 1x1 stride-2 shortcut convs + BN where
the shape changes), so that methods differ only in their quantized layers. ``conv(ci, co, kernel, stride,
padding)`` and ``norm(channels)`` build the body layers; any of them with an ``active_bits`` attribute follows
``model.set_bits(b)``.
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from suite.models.base import BitSwitchable

CIFAR_WIDTHS = (16, 32, 64)
# torchvision's ImageNet ResNets (MBQuant's ImageNet ResNets use the same stage layout).
IMAGENET_WIDTHS = (64, 128, 256, 512)
IMAGENET_BLOCKS = {18: (2, 2, 2, 2), 34: (3, 4, 6, 3)}

ConvFactory = Callable[..., nn.Module]  # (ci, co, kernel, stride, padding, groups=1) -> conv
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


class ResNet(BitSwitchable):
    """FP stem (``conv1``, ``bn1``, ReLU, optional max-pool) -> stages ``layer1..`` of basic blocks (stride 2 at
    the first block of every stage but the first) -> global average pool -> FP ``fc``."""

    def __init__(self, *, stem_kernel: int, stem_stride: int, maxpool: bool, widths: tuple[int, ...],
                 blocks_per_stage: tuple[int, ...], num_classes: int, bits, conv: ConvFactory, norm: NormFactory):
        super().__init__()
        self.bits = list(bits)
        self.conv1 = nn.Conv2d(3, widths[0], stem_kernel, stem_stride, stem_kernel // 2, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        self.maxpool = nn.MaxPool2d(3, 2, 1) if maxpool else nn.Identity()
        ci = widths[0]
        for s, (co, n_blocks) in enumerate(zip(widths, blocks_per_stage)):
            blocks = []
            for i in range(n_blocks):
                blocks.append(BasicBlock(ci, co, 2 if (s > 0 and i == 0) else 1, conv, norm))
                ci = co
            self.add_module(f"layer{s + 1}", nn.Sequential(*blocks))
        self.num_stages = len(widths)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(widths[-1], num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        self.set_bits(max(self.bits))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(F.relu(self.bn1(self.conv1(x)), inplace=True))
        for s in range(self.num_stages):
            x = getattr(self, f"layer{s + 1}")(x)
        return self.fc(torch.flatten(self.avgpool(x), 1))

    def dataflow(self):
        """(body norm, the conv it follows, the body conv whose output that conv reads, or None after the stem),
        in forward order. A block's conv1 and shortcut both read the block input: the previous block's conv2."""
        previous = None
        for s in range(self.num_stages):
            for block in getattr(self, f"layer{s + 1}"):
                yield block.bn1, block.conv1, previous
                yield block.bn2, block.conv2, block.conv1
                if block.shortcut is not None:
                    yield block.shortcut[1], block.shortcut[0], previous
                previous = block.conv2


def cifar_resnet(depth: int, num_classes: int = 100, *, bits=(2, 4, 6, 8), conv: ConvFactory, norm: NormFactory,
                 widths=CIFAR_WIDTHS) -> ResNet:
    """He et al.'s CIFAR ResNet-(6n+2): 3x3 stem, three stages of n blocks."""
    if (depth - 2) % 6:
        raise ValueError(f"CIFAR ResNet depth must be 6n+2, got {depth}")
    return ResNet(stem_kernel=3, stem_stride=1, maxpool=False, widths=tuple(widths),
                  blocks_per_stage=((depth - 2) // 6,) * len(widths), num_classes=num_classes, bits=bits,
                  conv=conv, norm=norm)


def imagenet_resnet(depth: int, num_classes: int = 1000, *, bits=(2, 4, 6, 8), conv: ConvFactory,
                    norm: NormFactory) -> ResNet:
    """torchvision's ResNet-18/34 topology (= MBQuant's ImageNet ResNet with one branch): 7x7 stride-2 stem +
    max-pool, four stages 64-128-256-512."""
    if depth not in IMAGENET_BLOCKS:
        raise ValueError(f"ImageNet ResNet depth must be one of {sorted(IMAGENET_BLOCKS)}, got {depth}")
    return ResNet(stem_kernel=7, stem_stride=2, maxpool=True, widths=IMAGENET_WIDTHS,
                  blocks_per_stage=IMAGENET_BLOCKS[depth],
                  num_classes=num_classes, bits=bits, conv=conv, norm=norm)


def resnet20(**kwargs) -> ResNet:
    return cifar_resnet(20, **kwargs)


def resnet8(**kwargs) -> ResNet:
    return cifar_resnet(8, **kwargs)


def resnet18(**kwargs) -> ResNet:
    return imagenet_resnet(18, **kwargs)


def resnet34(**kwargs) -> ResNet:
    return imagenet_resnet(34, **kwargs)
