"""Bit-width switching error: how much a layer's weights, input activations and output change when a model
switches from its largest bit-width B to a lower b (the paper's motivating claim, arXiv 2305.08117 §1).

Per quantized layer (in forward order) and per b < B of the bit list, each a relative L2 error over the
elements both bit-widths read, in the layer's stored layout (``QuantizedLayer``):

- ``weight_error``: ``||W_b - W_B|| / ||W_B||`` of the weights the layer multiplies with at b and at B.
  MBQuant: the stored rows both read, each with the bound slot it uses at that bit-width (the release indexes
  bounds by slot, so a branch can get other bounds at b than at B; ``clean`` indexes by branch, so its fixed
  2-bit branches give 0). Dedicated models: model b's weights against model B's (independent networks, so
  this is large and says nothing about switching; reported for completeness).
- ``activation_error``: on the layer's input x captured in the B-bit forward,
  ``||Q_b(x) - Q_B(x)|| / ||Q_B(x)||`` with the layer's activation quantizer at b and at B (MBQuant: per
  branch, on the branches active at both).
- ``output_drift``: ``||y_b - y_B|| / ||y_B||`` of the layer's output in the b-bit forward against the
  B-bit forward of the same batch (MBQuant: by branch; at 3 bits the partial branch over its channels).
  A ``logits`` row per b gives the drift of the final logits.
"""
from __future__ import annotations

import math

import pandas as pd
import torch
from torch import nn

from suite.layers.base import QuantizedLayer

COLUMNS = ["layer", "depth", "bits", "weight_error", "activation_error", "output_drift"]


def relative_error(a: torch.Tensor, ref: torch.Tensor) -> float:
    """``||a - ref|| / ||ref||`` (squares summed in float64) over the elements finite in both (the views mark
    what a bit-width does not read as NaN); NaN if the shapes differ or no element is finite in both."""
    if a.shape != ref.shape:
        return math.nan
    both = torch.isfinite(a) & torch.isfinite(ref)
    if not both.any():
        return math.nan
    num, den = float((a - ref)[both].double().pow(2).sum()), float(ref[both].double().pow(2).sum())
    if den == 0:
        return 0.0 if num == 0 else math.inf
    return math.sqrt(num / den)


def _serving(model: nn.Module, bits: int) -> nn.Module:
    return model.serving(bits) if hasattr(model, "serving") else model


def _forward(model: nn.Module, bits: int, batch: torch.Tensor):
    """Logits, the quantized layers serving ``bits`` by name, and per layer (input, output) of a ``bits`` forward."""
    layers = {n: m for n, m in _serving(model, bits).named_modules() if isinstance(m, QuantizedLayer)}
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


def _errors(layer_b: nn.Module, layer_B: nn.Module, b: int, B: int, x_B: torch.Tensor, y_b: torch.Tensor,
            y_B: torch.Tensor) -> tuple[float, float, float]:
    weight = relative_error(layer_b.quantized_weight(b), layer_B.quantized_weight(B))
    x = layer_B.input_layout(x_B, B)
    activation = relative_error(layer_b.quantized_input(x, b), layer_B.quantized_input(x, B))
    drift = relative_error(layer_b.output_layout(y_b, b), layer_B.output_layout(y_B, B))
    return weight, activation, drift


def measure_switching_error(model: nn.Module, bits: list[int], batch: torch.Tensor) -> pd.DataFrame:
    """One row per (quantized layer, b) for b in ``bits`` except the largest B, plus a ``logits`` row per b.

    Columns ``COLUMNS`` (see the module docstring). Runs in eval mode without gradients; restores every module's
    ``active_bits`` and train/eval flag and the model's routing afterwards.
    """
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
                    errors = (math.nan,) * 3  # not run at b
                    if name in seen_b:
                        errors = _errors(layers_b[name], layers_B[name], b, B, seen_B[name][0], seen_b[name][1],
                                         seen_B[name][1])
                    rows.append(dict(zip(COLUMNS, (name, depth, b, *errors))))
                rows.append(dict(zip(COLUMNS, ("logits", len(order), b, math.nan, math.nan,
                                               relative_error(logits_b, logits_B)))))
    finally:
        for m, v in saved_bits.items():
            m.active_bits = v
        for m, v in saved_mode.items():
            m.training = v
        if saved_current is not None:
            model.current = saved_current
    return pd.DataFrame(rows, columns=COLUMNS)


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
