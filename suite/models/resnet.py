"""One ResNet family: the trunk (``ResNet``) whose block is an argument, and the single-branch basic block.

CIFAR ResNet-20 / ResNet-8 and ImageNet ResNet-18 / ResNet-34 with single-branch blocks are the baselines' models:
the same topology as MBQuant's network of that name with one branch (FP stem and classifier, quantized 1x1
stride-2 shortcut convs + BN where the shape changes), so that methods differ only in their quantized layers.
``conv(ci, co, kernel, stride, padding)`` and ``norm(channels)`` build the body layers; any of them with an
``active_bits`` attribute follows ``model.set_bits(b)``. MBQuant's multi-branch ResNets are this trunk with its
multi-branch block (mbquant_resnet.py).
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from suite.layers.multibranch import MultiBranchConv
from suite.models.base import BitSwitchable

CIFAR_WIDTHS = (16, 32, 64)
# torchvision's ImageNet ResNets (MBQuant's ImageNet ResNets use the same stage layout).
IMAGENET_WIDTHS = (64, 128, 256, 512)
IMAGENET_BLOCKS = {18: (2, 2, 2, 2), 34: (3, 4, 6, 3)}

ConvFactory = Callable[..., nn.Module]  # (ci, co, kernel, stride, padding, groups=1) -> conv
NormFactory = Callable[[int], nn.Module]


@dataclass(frozen=True)
class Place:
    """Where a block sits: its input and output widths, its stride, its stage and index there, and whether it is
    the network's first or last block."""
    ci: int
    co: int
    stride: int
    stage: int
    index: int
    first: bool
    last: bool

    @property
    def changes_shape(self) -> bool:
        """Whether the residual needs a projection (1x1 conv + BN) to the block's output shape."""
        return self.stride != 1 or self.ci != self.co


BlockFactory = Callable[[Place], nn.Module]


class BasicBlock(nn.Module):
    """conv1-bn1-ReLU-conv2-bn2 plus the residual, then ReLU; where the shape changes the residual goes through
    ``projection`` (1x1 conv + BN), registered as ``shortcut_name`` (the checkpoint's key)."""

    def __init__(self, conv1: nn.Module, bn1: nn.Module, conv2: nn.Module, bn2: nn.Module,
                 projection: nn.Module | None = None, shortcut_name: str = "shortcut"):
        super().__init__()
        self.conv1, self.bn1, self.conv2, self.bn2 = conv1, bn1, conv2, bn2
        self.shortcut_name = shortcut_name
        setattr(self, shortcut_name, projection)

    @property
    def projection(self) -> nn.Module | None:
        return getattr(self, self.shortcut_name)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)), inplace=True)
        out = self.bn2(self.conv2(out))
        return F.relu(out + (x if self.projection is None else self.projection(x)), inplace=True)


def plain_blocks(conv: ConvFactory, norm: NormFactory) -> BlockFactory:
    """Single-branch basic blocks whose body layers come from a method's ``conv`` / ``norm`` factories."""
    def block(place: Place) -> BasicBlock:
        ci, co, stride = place.ci, place.co, place.stride
        layers = conv(ci, co, 3, stride, 1), norm(co), conv(co, co, 3, 1, 1), norm(co)
        projection = nn.Sequential(conv(ci, co, 1, stride, 0), norm(co)) if place.changes_shape else None
        return BasicBlock(*layers, projection)
    return block


class ResNet(BitSwitchable):
    """FP stem (``conv1`` to ``stem_width`` channels, ``bn1``, ReLU, optional max-pool, optionally tiled
    ``stem_copies`` times) -> stages ``layer1..`` of ``block``s (stride 2 at the first block of every stage but the
    first) -> global average pool -> FP ``fc``. ``block(place)`` builds the block at each ``Place``."""

    def __init__(self, *, stem_kernel: int, stem_stride: int, maxpool: bool, widths: tuple[int, ...],
                 blocks_per_stage: tuple[int, ...], num_classes: int, bits, block: BlockFactory,
                 stem_width: int | None = None, stem_copies: int = 1, arch: str = ""):
        super().__init__()
        self.bits, self.arch, self.stem_copies = list(bits), arch, stem_copies
        stem_width = stem_width or widths[0]
        self.conv1 = nn.Conv2d(3, stem_width, stem_kernel, stem_stride, stem_kernel // 2, bias=False)
        self.bn1 = nn.BatchNorm2d(stem_width)
        self.maxpool = nn.MaxPool2d(3, 2, 1) if maxpool else nn.Identity()
        ci, stages = widths[0], len(widths)
        for s, (co, n_blocks) in enumerate(zip(widths, blocks_per_stage)):
            blocks = []
            for i in range(n_blocks):
                blocks.append(block(Place(ci, co, 2 if (s > 0 and i == 0) else 1, s, i, first=(s == 0 and i == 0),
                                          last=(s == stages - 1 and i == n_blocks - 1))))
                ci = co
            self.add_module(f"layer{s + 1}", nn.Sequential(*blocks))
        self.num_stages = stages
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(widths[-1], num_classes)
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, MultiBranchConv)):  # a multi-branch conv as its whole stored tensor
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        self.set_bits(max(self.bits))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(F.relu(self.bn1(self.conv1(x)), inplace=True))
        if self.stem_copies > 1:
            x = x.tile(1, self.stem_copies, 1, 1)
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
                if block.projection is not None:
                    yield block.projection[1], block.projection[0], previous
                previous = block.conv2


def cifar_resnet(depth: int, num_classes: int = 100, *, bits=(2, 4, 6, 8), conv: ConvFactory, norm: NormFactory,
                 widths=CIFAR_WIDTHS) -> ResNet:
    """He et al.'s CIFAR ResNet-(6n+2): 3x3 stem, three stages of n blocks."""
    if (depth - 2) % 6:
        raise ValueError(f"CIFAR ResNet depth must be 6n+2, got {depth}")
    return ResNet(stem_kernel=3, stem_stride=1, maxpool=False, widths=tuple(widths),
                  blocks_per_stage=((depth - 2) // 6,) * len(widths), num_classes=num_classes, bits=bits,
                  block=plain_blocks(conv, norm), arch=f"resnet{depth}")


def imagenet_resnet(depth: int, num_classes: int = 1000, *, bits=(2, 4, 6, 8), conv: ConvFactory,
                    norm: NormFactory) -> ResNet:
    """torchvision's ResNet-18/34 topology (= MBQuant's ImageNet ResNet with one branch): 7x7 stride-2 stem +
    max-pool, four stages 64-128-256-512."""
    if depth not in IMAGENET_BLOCKS:
        raise ValueError(f"ImageNet ResNet depth must be one of {sorted(IMAGENET_BLOCKS)}, got {depth}")
    return ResNet(stem_kernel=7, stem_stride=2, maxpool=True, widths=IMAGENET_WIDTHS,
                  blocks_per_stage=IMAGENET_BLOCKS[depth], num_classes=num_classes, bits=bits,
                  block=plain_blocks(conv, norm), arch=f"resnet{depth}")


# The registered names (suite/models/__init__.py).
resnet20 = partial(cifar_resnet, 20)
resnet8 = partial(cifar_resnet, 8)
resnet18 = partial(imagenet_resnet, 18)
resnet34 = partial(imagenet_resnet, 34)
