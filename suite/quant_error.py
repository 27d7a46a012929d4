"""Bit-width switching error: how much a layer's weights, input activations and output change when a model
switches from its largest bit-width B to a lower b (the paper's motivating claim, arXiv 2305.08117 §1).

Per quantized layer (a module with ``macs_and_bitops``, in forward order) and per b < B of the bit list:

- ``weight_error``: ``||W_b - W_B|| / ||W_B||`` over the weight the layer multiplies with at b and at B,
  obtained from the layer's own quantizer. MBQuant: only the stored weight rows used at both b and B
  (each quantized with the bound slot it uses at that bit-width: the release indexes bounds by slot, so a
  branch can get other bounds at b than at B; ``clean`` indexes by branch, so 2-bit branches give 0).
  Dedicated models: model b's weights against model B's (independent networks, so this is large and
  says nothing about switching; reported for completeness).
- ``activation_error``: on the layer's FP input x captured in the B-bit forward,
  ``||Q_b(x) - Q_B(x)|| / ||Q_B(x)||`` with the layer's activation quantizer at b and at B (MBQuant: per
  branch, on the branches active at both, each with the slot it uses at that bit-width).
- ``output_drift``: ``||y_b - y_B|| / ||y_B||`` of the layer's output in the b-bit forward against the
  B-bit forward of the same batch (MBQuant: output channels of the branches in common, by branch index;
  at 3 bits the partial branch 1 only over its partial channels). A ``logits`` row per b gives the drift
  of the final logits.

The per-method adapters call the layers' own quantization functions (``quantize_slots`` for MBQuant,
``quantized_weight`` for Any-Precision / AdaBits, ``lsq_quantize`` for Bit-Mixer, ``quantize_weight`` /
``quantize_activation`` for the dedicated models); the activation quantizers of Any-Precision and AdaBits
have no accessor, so their two-line forward code is repeated here with the same functions.
MBQuant's depthwise layers (MobileNetV1) are handled like the convs (their weights are b-bit there, so
their weight error is not zero even in the clean variant).
"""
from __future__ import annotations

import math
from typing import Callable

import pandas as pd
import torch
from torch import nn

from suite.costs import FP_BITS

Range = tuple[int, int]  # (start, length)


# ----------------------------------------------------------------------------------------------------------
# MBQuant: which branch sits where at a bit-width
# ----------------------------------------------------------------------------------------------------------


def _mb_units(layer) -> tuple[int, int, int]:
    """(input channels per branch, output rows per branch, weight levels at b)."""
    from suite.methods.mbquant import MultiBranchDepthwiseConv

    if isinstance(layer, MultiBranchDepthwiseConv):
        return layer.c, layer.c, 0  # 0: 2**b levels
    return layer.ci, layer.co, 4


def _mb_branches(layer, bits: int) -> dict[int, tuple[int, Range, Range, Range]]:
    """branch -> (slot, input channels, output channels, weight rows) a b-bit forward of ``layer`` uses.

    Inputs are absolute channels of the layer's input, outputs channels of its output, rows of the stored
    weight (which the release's ``ci`` row offset may misalign from the branch index; rows follow the code).
    """
    from suite.methods.mbquant import active_branches

    sl = layer.slices(bits)
    ci, co, _ = _mb_units(layer)
    out: dict[int, tuple[int, Range, Range, Range]] = {}
    if sl.partial is None:
        for k, g in enumerate(active_branches(bits, layer.strategy)):
            out[g] = (sl.slots[0] + k, (sl.inputs[0] + k * ci, ci), (k * co, co), (sl.rows[0] + k * co, co))
        return out
    out[0] = (sl.slots[0], (sl.inputs[0], ci), (0, co), (sl.rows[0], co))
    rows, _, inputs, slot = sl.partial
    n_out, n_in = rows[1] - rows[0], inputs[1] - inputs[0]
    out[1] = (slot, (inputs[0], n_in), (co, n_out), (rows[0], n_out))
    return out


def _mb_weight_rows(layer, bits: int) -> dict[int, torch.Tensor]:
    """Stored row -> the quantized row the b-bit forward multiplies with (partial rows: their columns only)."""
    from suite.methods.mbquant import quantize_slots

    _, _, levels = _mb_units(layer)
    levels = levels or 2**bits
    sl = layer.slices(bits)
    rows_out: dict[int, torch.Tensor] = {}
    pieces = [(sl.rows, (0, layer.weight.shape[1]), sl.slots)]
    if sl.partial is not None:
        rows, pcols, _, slot = sl.partial
        pieces.append((rows, pcols, (slot, slot + 1)))
    for (r0, r1), (c0, c1), (s0, s1) in pieces:
        per_slot = (r1 - r0) // (s1 - s0)
        for k, slot in enumerate(range(s0, s1)):
            w = layer.weight[r0 + k * per_slot:r0 + (k + 1) * per_slot, c0:c1]
            dummy = w.new_zeros(1, 1, 1, 1)
            _, wq = quantize_slots(layer, dummy, w, (slot, slot + 1), bits, levels)
            for i in range(wq.shape[0]):
                rows_out[r0 + k * per_slot + i] = wq[i].flatten()
    return rows_out


def _mb_act(layer, x: torch.Tensor, slot: int, bits: int) -> torch.Tensor:
    from suite.methods.mbquant import quantize_slots

    a, _ = quantize_slots(layer, x, layer.weight.new_zeros(1), (slot, slot + 1), bits, 4)
    return a


def _sq(t: torch.Tensor) -> float:
    return float(t.double().pow(2).sum())


def _ratio(num: float, den: float) -> float:
    if den == 0:
        return 0.0 if num == 0 else math.inf
    return math.sqrt(num / den)


def _mb_errors(layer, b: int, B: int, x: torch.Tensor, y_b: torch.Tensor, y_B: torch.Tensor):
    wb, wB = _mb_weight_rows(layer, b), _mb_weight_rows(layer, B)
    wn = wd = 0.0
    for r in wb.keys() & wB.keys():
        n = min(wb[r].numel(), wB[r].numel())  # a partial row is compared on its columns
        wn += _sq(wb[r][:n] - wB[r][:n])
        wd += _sq(wB[r][:n])
    br_b, br_B = _mb_branches(layer, b), _mb_branches(layer, B)
    an = ad = on = od = 0.0
    for g in br_b.keys() & br_B.keys():
        slot_b, (ib, nib), (ob, nob), _ = br_b[g]
        slot_B, (iB, niB), (oB, noB), _ = br_B[g]
        n_in, n_out = min(nib, niB), min(nob, noB)
        chunk = x[:, iB:iB + n_in]  # branch g's channels of the B-bit input
        qb, qB = _mb_act(layer, chunk, slot_b, b), _mb_act(layer, chunk, slot_B, B)
        an += _sq(qb - qB)
        ad += _sq(qB)
        ob_t, oB_t = y_b[:, ob:ob + n_out], y_B[:, oB:oB + n_out]
        on += _sq(ob_t - oB_t)
        od += _sq(oB_t)
    return _ratio(wn, wd), _ratio(an, ad), _ratio(on, od)


# ----------------------------------------------------------------------------------------------------------
# Single-branch methods: weight / activation at a bit-width
# ----------------------------------------------------------------------------------------------------------


def _at_bits(layer, bits: int, fn: Callable[[], torch.Tensor]) -> torch.Tensor:
    saved = layer.active_bits
    layer.active_bits = bits
    try:
        return fn()
    finally:
        layer.active_bits = saved


def _single_quantizers(layer) -> tuple[Callable, Callable]:
    """(weight(b), act(x, b)) of one single-branch quantized conv, using its own quantizers."""
    from suite.methods import adabits, anyprecision, bitmixer, dedicated
    from suite.quant import quantize_activation, quantize_weight

    if isinstance(layer, (anyprecision.DoReFaConv, adabits.AdaBitsConv)):
        return ((lambda b: _at_bits(layer, b, layer.quantized_weight)),
                (lambda x, b: _at_bits(layer, b, lambda: layer.quantized_input(x))))
    if isinstance(layer, bitmixer.BitMixerConv):
        def weight(b):
            if b == FP_BITS:
                return layer.weight
            qn, qp = bitmixer.weight_range(b)
            return bitmixer.lsq_quantize(layer.weight, layer.w_step[layer.slot[b]], qn, qp, layer.weight.numel())

        def act(x, b):
            if b == FP_BITS:
                return x
            qn, qp = bitmixer.activation_range(b)
            return bitmixer.lsq_quantize(x, layer.a_step[layer.slot[b]], qn, qp, x[0].numel())
        return weight, act
    if isinstance(layer, dedicated.LearnedBoundsConv):
        # One fixed bit-width per layer: the caller pairs model b's layer with model B's.
        b0 = layer.active_bits

        def weight(b):
            assert b == b0
            return layer.weight if b == FP_BITS else quantize_weight(layer.weight, layer.w_lower, layer.w_upper, 2**b)

        def act(x, b):
            assert b == b0
            return x if b == FP_BITS else quantize_activation(x, layer.a_lower, layer.a_upper, b)
        return weight, act
    raise NotImplementedError(f"quant_error: no quantizer adapter for layer type {type(layer).__name__}")


def _rel(a: torch.Tensor, ref: torch.Tensor) -> float:
    return _ratio(_sq(a - ref), _sq(ref))


# ----------------------------------------------------------------------------------------------------------
# The measurement
# ----------------------------------------------------------------------------------------------------------


def _quantized_layers(model: nn.Module, bits: int) -> dict[str, nn.Module]:
    """Name -> quantized layer serving ``bits`` (dedicated models: model ``bits``'s layers, names relative)."""
    from suite.methods.dedicated import DedicatedModels

    root = model.models[str(bits)] if isinstance(model, DedicatedModels) else model
    return {n: m for n, m in root.named_modules() if hasattr(m, "macs_and_bitops")}


def _forward(model: nn.Module, bits: int, batch: torch.Tensor):
    """Logits and, per quantized layer in forward order, (input, output) of a ``bits`` forward."""
    layers = _quantized_layers(model, bits)
    seen: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}

    def hook(name):
        def fn(module, inputs, output):
            if name not in seen:
                seen[name] = (inputs[0].detach().clone(), output.detach().clone())
        return fn

    handles = [m.register_forward_hook(hook(n)) for n, m in layers.items()]
    try:
        model.set_bits(bits)
        logits = model(batch)
    finally:
        for h in handles:
            h.remove()
    return logits, layers, seen


def measure_switching_error(model: nn.Module, bits: list[int], batch: torch.Tensor) -> pd.DataFrame:
    """One row per (quantized layer, b) for b in ``bits`` except the largest B, plus a ``logits`` row per b.

    Columns ``layer, depth, bits, weight_error, activation_error, output_drift`` (see the module docstring).
    Runs in eval mode without gradients; restores every module's ``active_bits`` (and a dedicated model's
    routing) and train/eval flags afterwards.
    """
    from suite.methods.mbquant import MultiBranchConv, MultiBranchDepthwiseConv

    B = max(bits)
    saved_bits = {m: m.active_bits for m in model.modules() if hasattr(m, "active_bits")}
    saved_mode = {m: m.training for m in model.modules()}
    saved_current = getattr(model, "current", None)
    rows = []
    try:
        model.eval()
        with torch.no_grad():
            logits_B, layers_B, seen_B = _forward(model, B, batch)
            order = list(seen_B)  # forward order of the B-bit pass
            for b in bits:
                if b == B:
                    continue
                logits_b, layers_b, seen_b = _forward(model, b, batch)
                for depth, name in enumerate(order):
                    layer_B = layers_B[name]
                    x_B, y_B = seen_B[name]
                    if name not in seen_b:  # not run at b
                        rows.append(dict(layer=name, depth=depth, bits=b, weight_error=math.nan,
                                         activation_error=math.nan, output_drift=math.nan))
                        continue
                    y_b = seen_b[name][1]
                    layer_b = layers_b[name]
                    if isinstance(layer_B, (MultiBranchConv, MultiBranchDepthwiseConv)):
                        w_err, a_err, drift = _mb_errors(layer_B, b, B, x_B, y_b, y_B)
                    else:
                        weight_B, act_B = _single_quantizers(layer_B)
                        weight_b, act_b = _single_quantizers(layer_b)
                        w_err = _rel(weight_b(b), weight_B(B))
                        a_err = _rel(act_b(x_B, b), act_B(x_B, B))
                        drift = _rel(y_b, y_B) if y_b.shape == y_B.shape else math.nan
                    rows.append(dict(layer=name, depth=depth, bits=b, weight_error=w_err,
                                     activation_error=a_err, output_drift=drift))
                rows.append(dict(layer="logits", depth=len(order), bits=b, weight_error=math.nan,
                                 activation_error=math.nan, output_drift=_rel(logits_b, logits_B)))
    finally:
        for m, v in saved_bits.items():
            m.active_bits = v
        for m, v in saved_mode.items():
            m.training = v
        if saved_current is not None:
            model.current = saved_current
    return pd.DataFrame(rows, columns=["layer", "depth", "bits", "weight_error", "activation_error",
                                       "output_drift"])


def summarize(table: pd.DataFrame) -> dict[str, float]:
    """Per-bit means over the layers: ``qerr_weight_b{b}``, ``qerr_act_b{b}``, ``qerr_drift_b{b}``, and the
    logits' drift ``qerr_logits_b{b}``."""
    out: dict[str, float] = {}
    layers = table[table["layer"] != "logits"]
    for b, group in layers.groupby("bits"):
        out[f"qerr_weight_b{b}"] = float(group["weight_error"].mean())
        out[f"qerr_act_b{b}"] = float(group["activation_error"].mean())
        out[f"qerr_drift_b{b}"] = float(group["output_drift"].mean())
    for _, row in table[table["layer"] == "logits"].iterrows():
        out[f"qerr_logits_b{int(row['bits'])}"] = float(row["output_drift"])
    return out
