"""Bit-Mixer (Bulat & Tzimiropoulos, ICCV 2021): one meta-quantized network, any bit-width in any layer.

Shared latent weights, LSQ quantizers per layer and bit-width, *transitional* BatchNorms indexed by the
(previous layer's bit-width -> this layer's bit-width) pair, and a 3-stage schedule that ends with random
layer-wise bit-widths, so that at test time every layer may pick its own bit-width (``set_layer_bits``).

No official code exists: this is a re-implementation from the paper's description (its sources are listed in
docs/spec/baselines.md). Every choice made where the description is silent or does not fit the shared trainer:

1. Model: the suite's single-branch ResNets (``suite.models.resnet``: ResNet-20/8, ResNet-18/34) or MobileNetV1
   (``suite.models.mobilenet``) with FP stem conv + BN and FP classifier (suite convention, baselines.md). Every
   body conv, including the 1x1 stride-2 shortcut convs and MobileNetV1's depthwise convs, is a
   ``BitMixerConv``; every body BN is a ``TransitionalBatchNorm``. The model is wrapped in ``BitMixerNet`` (state
   dict keys prefixed ``net.``), which owns the bit-width logic.
2. A layer's bit-width ``b_i`` applies to both its weights and its input activations (one number per layer);
   BitOPs of a layer = b_i * b_i * MACs, so a mixed configuration costs the per-layer sum. The shortcut conv is
   a layer of its own with an independent bit-width, even though it reads the same input as the block's conv1.
3. Quantizers (LSQ, Esser et al. 2020): per layer, per bit-width, one learnable scalar step for the weights
   (signed grid, Q_n = 2^(b-1), Q_p = 2^(b-1) - 1) and one for the input activations (unsigned grid, Q_n = 0,
   Q_p = 2^b - 1: every body conv reads a post-ReLU tensor). Forward ``round(clamp(v/s, -Q_n, Q_p)) * s``
   (rounding through ``suite.quant.discretize``: half to even, straight-through), LSQ gradient scaling
   g = 1/sqrt(N * Q_p) (N = weights of the layer, or activation elements of one sample). Per-tensor steps, not
   per-channel.
4. Step initialisation: s = 2 * mean|v| / sqrt(Q_p) (LSQ), weights from the latent weights, activations from the
   first batch the layer sees at that bit-width: the trainer's ``initialize`` hook runs one no-grad train-mode
   forward per bit-width of the list (uniform network), each on the next training batch (the last one reused if
   the loader runs out). Steps start at 0, meaning "not initialised": a step never initialised that way is
   initialised lazily on its first train-mode forward (an uncalibrated model evaluates to NaN rather than to a
   silently wrong network). Floor 1e-8 so an all-zero input cannot produce a zero step. BN running statistics of
   the (b, b) transitions move during that calibration (as in MBQuant's calibration).
5. Bit-width 32 in the list means a full-precision layer (no quantizer, no step sizes; 32 x 32 BitOPs per MAC).
   Supported bit-widths: 2..8 and 32. 1 bit is rejected (LSQ's signed 1-bit weight grid has Q_p = 0).
6. Transitional BN: the BN after conv ``i`` holds one independent ``BatchNorm2d`` per pair (p, c) of bit-widths of
   the list (|B|^2 entries, key ``"{p}to{c}"``) and uses (p, c) = (bit-width of the *previous* quantized layer,
   bit-width of conv i). At a uniform bit-width b it is (b, b). "Previous" follows the dataflow of the main path:
   for a block's conv2 it is the block's conv1; for a block's conv1 *and* its shortcut conv it is the conv2 of the
   preceding block (the last conv whose output reached the block input); in MobileNetV1 the pointwise conv
   follows its block's depthwise conv, which follows the previous block's pointwise conv (``dataflow``). The
   first quantized conv reads the FP stem, whose output never changes bit-width, so its BN is indexed by its own
   bit-width only: key (b, b), and only the |B| diagonal entries are stored (the off-diagonal ones are removed
   at construction).
7. Three stages over the epochs, fractions ``Options.stages`` (default thirds; stage ends at
   round(cumulative fraction * epochs)), driven by the trainer's ``on_epoch_start(epoch, epochs)``:
   stage 1 network-wide (uniform) bit-widths with *full-precision weights* in training (activations quantized;
   ``stage1_weights: fp``, this module's reading of the paper's two-stage intermediate meta-network, weights-first being the
   authors' usual recipe) - ``stage1_weights: quantized`` makes stage 1 identical to stage 2; stage 2 network-wide
   bit-widths, weights and activations quantized; stage 3 random layer-wise bit-widths with a probability that
   grows linearly over the stage: p = (k + 1) / n3 at the k-th of its n3 epochs (reaching 1 at the last epoch).
   Evaluation always quantizes the weights, in every stage.
8. Fitting the shared trainer's step (every bit-width of the list, descending, one forward each): the paper's
   per-iteration sampling of one bit-width is replaced by running all listed bit-widths every step (as every
   method of the suite does). In stage 3, ``set_bits(b)`` in train mode treats b as the *nominal* bit-width: each
   layer independently, with probability p, takes a bit-width drawn uniformly from the list (possibly b itself),
   otherwise b. The highest bit-width of the list is never mixed: it always runs the uniform network, so that the
   in-place teacher (the first bit-width the trainer runs for ascending lists) is the uniform top network. Draws
   use torch's global RNG (the trainer re-seeds it every epoch: runs are reproducible and resumable); one
   ``torch.rand`` and one ``torch.randint`` over all layers per draw, whatever p is. The per-bit training losses
   the trainer logs in stage 3 are therefore those of random mixtures with nominal b.
9. Evaluation (``model.eval()`` then ``set_bits(b)``) is always the uniform b-bit network; ``set_layer_bits`` (or
   ``set_bits`` with a per-layer list, which ``suite.costs.measure_cost`` also accepts this way) runs any
   per-layer configuration, layers in module order (``BitMixerNet.layer_names``).
10. Distillation: ``inplace`` by default (the highest bit-width learns from labels and teaches every other one
    with ½(softCE + CE)); whether the paper's teacher is the top bit-width or a separate FP network is not
    known, and the shared trainer has no external teacher, so the top bit-width teaches. ``none``: CE only.
11. Optimisation is the suite's (SGD on weights/BN/FC, Adam on the step sizes, cosine, per-epoch evaluation) and
    does not follow the paper's ImageNet recipe.
12. Storage (``storage_bits``, through the baselines' shared ``suite.methods.storage.stored_bits``): the shared
    latent weights are stored at FP32 (the per-bit LSQ steps differ, so a lower-bit weight is not a function of
    the top-bit quantized copy; a quantize-once copy cannot serve every bit-width exactly) + every transitional
    BN entry and the stem BN (gamma, beta, running mean, running variance at 32 bits; ``bn``) + every LSQ step
    (32 bits; ``clip``) + the FP stem conv and classifier (``fp_layers``).
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import Literal, Sequence

import torch

from suite.layers.lsq import STEP_NAMES, BitMixerConv, TransitionalBatchNorm
from suite.losses import inplace_distillation, labels_only
from suite.contract import Method, Trainable, fp32_weight_storage
from suite.methods.common import calibrate, check_bit_list, parameters_named, sgd_and_adam
from suite.models import create_model
from suite.models.base import BitSwitchable

LOSSES = {"inplace": inplace_distillation, "none": labels_only}


def stage_bounds(stages: Sequence[float], epochs: int) -> tuple[int, int]:
    """First epoch of stage 2 and of stage 3."""
    e1 = int(round(stages[0] * epochs))
    e2 = int(round((stages[0] + stages[1]) * epochs))
    return min(e1, epochs), min(max(e2, e1), epochs)


class BitMixerNet(BitSwitchable):
    """A single-branch model with Bit-Mixer layers plus the bit-width logic: uniform, random layer-wise, per-layer."""

    def __init__(self, arch: str, num_classes: int, bits: Sequence[int], options: "Options"):
        super().__init__()
        self.bits = list(bits)
        self.options = options
        self.stage = 2  # until on_epoch_start says otherwise: network-wide, quantized
        self.mix_prob = 0.0
        self.net = create_model(
            arch, num_classes=num_classes, bits=self.bits,
            conv=partial(BitMixerConv, bits=self.bits),
            norm=lambda channels: TransitionalBatchNorm(channels, self.bits),
        )
        linked = set()
        for norm, conv, previous in self.net.dataflow():
            norm.link(conv, previous)
            linked.add(norm)
        norms = [m for m in self.net.modules() if isinstance(m, TransitionalBatchNorm)]
        if set(norms) != linked:
            raise RuntimeError("some transitional BN could not be linked to its conv (unknown block structure)")
        named = [(n, m) for n, m in self.net.named_modules() if isinstance(m, BitMixerConv)]
        self.layer_names = [n for n, _ in named]
        self._convs = [m for _, m in named]  # plain list: already registered under self.net
        self.set_bits(max(self.bits))

    # -- bit-widths ------------------------------------------------------------------------------------

    @property
    def num_layers(self) -> int:
        return len(self._convs)

    def layer_bits(self) -> list[int]:
        """The current bit-width of every quantized conv, in module order."""
        return [c.active_bits for c in self._convs]

    def set_layer_bits(self, layer_bits: Sequence[int]) -> None:
        """Run any per-layer configuration (test-time layer-wise selection), layers in ``layer_names`` order."""
        layer_bits = [int(b) for b in layer_bits]
        if len(layer_bits) != self.num_layers:
            raise ValueError(f"expected {self.num_layers} per-layer bit-widths, got {len(layer_bits)}")
        for b in layer_bits:
            if b not in self.bits:
                raise ValueError(f"bit-width {b} cannot be served by this model (built for bits {self.bits})")
        for conv, b in zip(self._convs, layer_bits):
            conv.active_bits = b

    def set_bits(self, bits) -> None:
        """Uniform ``bits`` (always in eval mode); in train mode during stage 3, a random layer-wise mixture
        with nominal ``bits`` (see module docstring, item 8). A sequence is a per-layer configuration."""
        if isinstance(bits, (list, tuple)):
            self.set_layer_bits(bits)
            return
        if bits not in self.bits:
            raise ValueError(f"bit-width {bits} cannot be served by this model (built for bits {self.bits})")
        if self.training and self.stage == 3 and bits != max(self.bits):
            self.set_layer_bits(self.draw(bits))
        else:
            self.set_layer_bits([bits] * self.num_layers)

    def draw(self, nominal: int) -> list[int]:
        """Each layer: with probability ``mix_prob`` a bit-width drawn uniformly from the list, else ``nominal``."""
        mixed = (torch.rand(self.num_layers) < self.mix_prob).tolist()
        choice = torch.randint(len(self.bits), (self.num_layers,)).tolist()
        return [self.bits[c] if m else nominal for m, c in zip(mixed, choice)]

    def on_epoch_start(self, epoch: int, epochs: int) -> None:
        """The three-stage schedule (module docstring, item 7)."""
        e1, e2 = stage_bounds(self.options.stages, epochs)
        if epoch < e1:
            self.stage, self.mix_prob = 1, 0.0
        elif epoch < e2:
            self.stage, self.mix_prob = 2, 0.0
        else:
            self.stage, self.mix_prob = 3, (epoch - e2 + 1) / (epochs - e2)
        fp = self.stage == 1 and self.options.stage1_weights == "fp"
        for conv in self._convs:
            conv.fp_weights_in_training = fp

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


# ----------------------------------------------------------------------------------------------------------
# The method
# ----------------------------------------------------------------------------------------------------------


@dataclass
class Options:
    """Bit-Mixer's manifest options (``method.options``)."""

    __pydantic_config__ = {"extra": "forbid"}
    stages: tuple[float, float, float] = (1 / 3, 1 / 3, 1 / 3)  # fractions of the epochs in stages 1, 2, 3
    stage1_weights: Literal["fp", "quantized"] = "fp"  # stage 1 trains with FP or quantized weights
    distillation: Literal["inplace", "none"] = "inplace"

    def __post_init__(self):
        stages = tuple(float(s) for s in self.stages)
        if len(stages) != 3 or any(s < 0 for s in stages) or abs(sum(stages) - 1) > 1e-6:
            raise ValueError(f"stages must be three non-negative epoch fractions summing to 1, got {self.stages}")
        self.stages = stages


def check_bits(bits: list[int], options: Options) -> None:
    """Raise ValueError naming the bit-width this setting cannot serve (LSQ needs at least 2 bits)."""
    check_bit_list(bits, "Bit-Mixer", lowest=2)


# Item 12: the shared latent weights at FP32, every transitional BN entry and the stem BN, every LSQ step
# (``clip``), the FP stem conv and classifier.
storage_bits = fp32_weight_storage


def build(arch: str, num_classes: int, bits: list[int], options: Options) -> Trainable:
    """The trainer's view of Bit-Mixer: model, loss, SGD + Adam on the steps, calibration, stage schedule."""
    check_bits(bits, options)
    model = BitMixerNet(arch, num_classes, bits, options)
    return Trainable(
        model=model,
        bits=list(bits),
        loss=LOSSES[options.distillation],
        param_groups=partial(sgd_and_adam, model, parameters_named(model, STEP_NAMES)),
        initialize=lambda m, batches: calibrate(m, bits, batches),
        on_epoch_start=model.on_epoch_start,
    )


METHOD = Method("bitmixer", Options, build, check_bits, storage_bits,
                "LSQ meta-quantized network with transitional BN and random layer-wise bit-widths (re-implemented)")
