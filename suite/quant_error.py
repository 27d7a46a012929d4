"""Bit-width switching error: how much a layer's weights, input activations and output change when a model
switches from its largest bit-width B to a lower b (the paper's motivating claim, arXiv 2305.08117 §1).

Per quantized layer (in forward order) and per b < B of the bit list, each a relative L2 error
``||v_b - v_B|| / ||v_B||`` over the elements both bit-widths read, in the layer's stored layout
(``QuantizedLayer``):

- ``weight_error``: the weights the layer multiplies with at b and at B, paired by **stored row** (the same
  latent weights). MBQuant: each row with the bound slot it uses at that bit-width. The clean variant indexes
  bounds by branch, so its fixed 2-bit branches give 0 *by construction* (not a measurement); the release
  indexes bounds by slot, so a branch can get other bounds at b than at B (what this column then shows).
- ``weight_datapath_error``: the same weights paired by **data-path position**, where ``output_layout`` places
  the output they compute (branch g at b against branch g at B). It equals ``weight_error`` wherever stored rows
  and branches align (every single-branch layer); it differs where a b-bit forward runs other rows in a
  branch's place (the CIFAR release's convs with ci != co, quirk 2). It and the three columns below pair the
  same positions.
- ``activation_error``: on the layer's input x captured in the B-bit forward,
  ``||Q_b(x) - Q_B(x)|| / ||Q_B(x)||`` with the layer's activation quantizer at b and at B.
- ``output_drift``: the layer's output in the b-bit forward against the B-bit forward of the same batch (at 3
  bits the partial branch over its channels). Not scale-invariant: MBQuant's fixed-level weights carry no scale.
- ``bn_drift``: the same for the output of the BatchNorm that reads the layer's output (at b the b-bit BN, at
  B the B-bit one, eval mode), placed like ``output_drift``: a scale the per-bit BN absorbs does not count,
  so this is the function-level measure comparable across methods. NaN for a layer no BN reads directly.

MBQuant's errors cover only the branches both bit-widths run (b/2 of its B/2 branches); a shared-weight
method's cover its whole tensor. Dedicated models: model b against model B (independent networks: large, and
no statement about switching). A ``logits`` row per b gives the drift of the final logits (``output_drift``).
"""
from __future__ import annotations

import math

import pandas as pd
import torch
from torch import nn

from suite.layers.base import QuantizedLayer

# Column of the per-layer table -> its kind in the logged metrics (``qerr_{kind}_b{b}``, suite.analyses).
KINDS = {"weight_error": "weight", "weight_datapath_error": "weight_datapath", "activation_error": "act",
         "output_drift": "drift", "bn_drift": "bn_drift"}
COLUMNS = ["layer", "depth", "bits", *KINDS]


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
    """Logits, the quantized layers serving ``bits`` by name, and per layer (input, output, output of the BN that
    reads that output, or None) of a ``bits`` forward."""
    serving = _serving(model, bits)
    layers = {n: m for n, m in serving.named_modules() if isinstance(m, QuantizedLayer)}
    seen: dict[str, tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]] = {}
    produced: dict[int, tuple[str, torch.Tensor]] = {}  # id of a layer's output -> (layer, the output: kept alive)

    def layer_hook(name):
        def fn(module, inputs, output):
            if name not in seen:
                seen[name] = (inputs[0].detach().clone(), output.detach().clone(), None)
                produced[id(output)] = (name, output)
        return fn

    def norm_hook(module, inputs, output):
        # The BN that follows a layer reads that layer's output tensor itself (the same object).
        name, _ = produced.pop(id(inputs[0]), (None, None))
        if name is not None:
            seen[name] = (*seen[name][:2], output.detach().clone())

    norms = [m for m in serving.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    handles = [m.register_forward_hook(layer_hook(n)) for n, m in layers.items()]
    handles += [m.register_forward_hook(norm_hook) for m in norms]
    try:
        model.set_bits(bits)
        logits = model(batch)
    finally:
        for h in handles:
            h.remove()
    return logits, layers, seen


def _datapath_weight(layer: nn.Module, bits: int) -> torch.Tensor:
    """The weight at ``bits`` placed by data-path position; a layer without that view (one branch: its stored
    layout is its data path) gives its stored-layout weight."""
    view = getattr(layer, "datapath_weight", None)
    return view(bits) if view is not None else layer.quantized_weight(bits)


def _errors(layer_b: nn.Module, layer_B: nn.Module, b: int, B: int, seen_b: tuple, seen_B: tuple) -> tuple:
    """The ``KINDS`` columns of one layer at ``b`` (``seen_*``: what ``_forward`` captured of it)."""
    (_, y_b, n_b), (x_B, y_B, n_B) = seen_b, seen_B
    weight = relative_error(layer_b.quantized_weight(b), layer_B.quantized_weight(B))
    datapath = relative_error(_datapath_weight(layer_b, b), _datapath_weight(layer_B, B))
    x = layer_B.input_layout(x_B, B)
    activation = relative_error(layer_b.quantized_input(x, b), layer_B.quantized_input(x, B))
    drift = relative_error(layer_b.output_layout(y_b, b), layer_B.output_layout(y_B, B))
    bn = math.nan if n_b is None or n_B is None else relative_error(layer_b.output_layout(n_b, b),
                                                                      layer_B.output_layout(n_B, B))
    return weight, datapath, activation, drift, bn


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
                    errors = (math.nan,) * len(KINDS)  # not run at b
                    if name in seen_b:
                        errors = _errors(layers_b[name], layers_B[name], b, B, seen_b[name], seen_B[name])
                    rows.append(dict(zip(COLUMNS, (name, depth, b, *errors))))
                rows.append({"layer": "logits", "depth": len(order), "bits": b,
                             "output_drift": relative_error(logits_b, logits_B)})
    finally:
        for m, v in saved_bits.items():
            m.active_bits = v
        for m, v in saved_mode.items():
            m.training = v
        if saved_current is not None:
            model.current = saved_current
    return pd.DataFrame(rows, columns=COLUMNS)


def measure(model: nn.Module, bits: list[int], batch: torch.Tensor) -> tuple[dict[str, float], pd.DataFrame]:
    """The quant_error analysis (suite.analyses): the per-bit means and the per-layer table."""
    table = measure_switching_error(model, bits, batch)
    return summarize(table), table


def summarize(table: pd.DataFrame) -> dict[str, float]:
    """Per-bit means over the layers, ``qerr_{kind}_b{b}`` for each kind of ``KINDS`` (a mean over the layers
    where it is defined), and the logits' drift ``qerr_logits_b{b}``."""
    out: dict[str, float] = {}
    layers = table[table["layer"] != "logits"]
    for b, group in layers.groupby("bits"):
        for column, kind in KINDS.items():
            out[f"qerr_{kind}_b{b}"] = float(group[column].mean())
    for _, row in table[table["layer"] == "logits"].iterrows():
        out[f"qerr_logits_b{int(row['bits'])}"] = float(row["output_drift"])
    return out
