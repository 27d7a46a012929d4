"""One MobileNetV1 family: the trunk (``MobileNetV1``) whose block is an argument, and the single-branch block.

The layout of the release's MobileNetV1: a full-precision head (3x3 stride-2 conv 32, BN, ReLU), 13
depthwise-separable blocks ``stage_{s}_layer_{i}``, average pool and a full-precision ``classifier``;
initialisation as the release's (N(0, sqrt(2 / (k*k*stored out channels))) on every conv, N(0, 0.01) on the
classifier). With single-branch blocks it is the baselines' model: 3x3 depthwise and 1x1 pointwise convs both
quantized (MBQuant's depthwise convs run at b bits too), built by the method's factories, called as
``conv(ci, co, kernel, stride, padding, groups=g)``. MBQuant's MobileNetV1 is this trunk with its multi-branch
block (mbquant_mobilenet.py).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from suite.layers.multibranch import MultiBranchConv, MultiBranchDepthwiseConv
from suite.models.base import BitSwitchable
from suite.models.resnet import BlockFactory, ConvFactory, NormFactory, Place

HEAD_WIDTH = 32
# Per stage: (output width, blocks); the first block of stages 1-4 has a stride-2 depthwise conv (224 -> 7).
MV1_STAGES = ((64, 1), (128, 2), (256, 2), (512, 6), (1024, 2))


def mv1_layers() -> list[tuple[str, Place]]:
    """(module name, place) of the 13 blocks, in order: per-branch widths, dw stride, stage and index."""
    layers, ci, last_stage = [], HEAD_WIDTH, len(MV1_STAGES) - 1
    for s, (co, n) in enumerate(MV1_STAGES):
        for i in range(n):
            place = Place(ci, co, 2 if (s > 0 and i == 0) else 1, s, i, first=not layers,
                          last=(s == last_stage and i == n - 1))
            layers.append((f"stage_{s}_layer_{i}", place))
            ci = co
    return layers


class DepthwiseSeparable(nn.Module):
    def __init__(self, ci: int, co: int, stride: int, conv: ConvFactory, norm: NormFactory):
        super().__init__()
        self.depthwise, self.bn1 = conv(ci, ci, 3, stride, 1, groups=ci), norm(ci)
        self.pointwise, self.bn2 = conv(ci, co, 1, 1, 0), norm(co)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn1(self.depthwise(x)), inplace=True)
        return F.relu(self.bn2(self.pointwise(x)), inplace=True)


class MobileNetV1(BitSwitchable):
    """Head (tiled ``head_copies`` times) -> the 13 ``block(place)``s -> average pool -> ``classifier``."""

    def __init__(self, num_classes: int = 1000, *, bits=(2, 4, 6, 8), block: BlockFactory, head_copies: int = 1):
        super().__init__()
        self.bits, self.head_copies = list(bits), head_copies
        self.head = nn.Sequential(
            nn.Conv2d(3, HEAD_WIDTH, 3, 2, 1, bias=False), nn.BatchNorm2d(HEAD_WIDTH), nn.ReLU(inplace=True),
        )
        self.block_names = []
        for name, place in mv1_layers():
            self.add_module(name, block(place))
            self.block_names.append(name)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(place.co, num_classes)
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, MultiBranchConv, MultiBranchDepthwiseConv)):
                k = m.weight.shape[2] * m.weight.shape[3]
                m.weight.data.normal_(0, math.sqrt(2.0 / (k * m.weight.shape[0])))
        self.classifier.weight.data.normal_(0, 0.01)
        self.classifier.bias.data.zero_()
        self.set_bits(max(self.bits))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.head(x)
        if self.head_copies > 1:
            x = x.tile(1, self.head_copies, 1, 1)  # as released: G identical copies, branch k reads copy k
        for name in self.block_names:
            x = getattr(self, name)(x)
        return self.classifier(torch.flatten(self.avgpool(x), 1))

    def dataflow(self):
        """(body norm, the conv it follows, the body conv whose output that conv reads, or None after the head),
        in forward order: depthwise after the previous block's pointwise, pointwise after its depthwise."""
        previous = None
        for name in self.block_names:
            block = getattr(self, name)
            yield block.bn1, block.depthwise, previous
            yield block.bn2, block.pointwise, block.depthwise
            previous = block.pointwise


def mobilenetv1(*, conv: ConvFactory, norm: NormFactory, **kwargs) -> MobileNetV1:
    return MobileNetV1(block=lambda p: DepthwiseSeparable(p.ci, p.co, p.stride, conv, norm), **kwargs)
