"""Export: the suite's MBQuant model as a released checkpoint that the release's code loads.

A model that did not come from a checkpoint gets, for the keys the suite does not hold, the values the release's
constructor and initialisation leave there: ``output_scale`` 1.0, ``bkwd_scaling_factorW/A`` 0.0 (option.py
defaults), ``init`` 0 (cleared after the calibration pass); an imported model gets back the values it came with,
so import -> export is an exact round trip.
"""
from __future__ import annotations

import os
import warnings
from collections import OrderedDict
from pathlib import Path
from typing import Callable, Mapping

import numpy as np
import torch
from torch import nn

from suite.release.layout import IGNORED_DEFAULTS, is_quantized_conv, release_layout
from suite.release.names import DDP_PREFIX, RELEASE_MODELS, InteropError, lookup


def release_state_dict(model: nn.Module, *, rename: Callable[[str], str] | None = None,
                       prefix: str = "") -> "OrderedDict[str, torch.Tensor]":
    """The release's state dict of ``model``: every key, the release's shapes and dtypes, on CPU, in its order.

    Ignored keys take the values kept at import (``model.release_extras``), else the release's constructor and
    post-calibration values (``IGNORED_DEFAULTS``); ``init`` is always written 0 (calibrated).
    """
    state = model.state_dict()
    extras = getattr(model, "release_extras", {}) or {}
    out: OrderedDict[str, torch.Tensor] = OrderedDict()
    for e in release_layout(model, rename):
        if e.suite_key is not None:
            t = state[e.suite_key]
            t = t if e.index is None else t[e.index]
        elif e.ignored != "init" and e.key in extras and tuple(extras[e.key].shape) == e.shape:
            t = extras[e.key]
        else:
            t = torch.full(e.shape, IGNORED_DEFAULTS[e.ignored], dtype=e.dtype)
        out[prefix + e.key] = t.detach().to("cpu", e.dtype).clone().contiguous()  # own storage, not a view
    return out


def _acc1_array(acc1, bits: list[int]) -> np.ndarray:
    if isinstance(acc1, Mapping):
        acc1 = [acc1[b][0] if isinstance(acc1[b], (tuple, list)) else acc1[b] for b in bits]
    arr = np.asarray(acc1, dtype=np.float64).reshape(-1)
    if arr.shape != (len(bits),):
        raise InteropError(f"acc1 must have one value per bit-width {bits}, got {arr.shape[0]}")
    return arr


def export_release_checkpoint(model: nn.Module, path: str | os.PathLike, *, epoch: int | None = None,
                              acc1=None, best_acc1: float | None = None, arch: str | None = None,
                              ddp_prefix: bool | None = None, optimizer_m=None, optimizer_q=None,
                              scheduler_m=None, scheduler_q=None, model_name: str | None = None) -> Path:
    """Write ``model`` as a released checkpoint that the release's code can load.

    - ``state_dict``: ``release_state_dict`` (every release key, shape, dtype; ignored keys as described there),
      keys prefixed ``module.`` when ``ddp_prefix`` (default: as imported, else True, because the release wraps
      the model in DDP before ``load_state_dict`` in both ``--evaluate`` and ``--resume``).
    - ``epoch``: given, else the imported one, else 0. ``acc1``: per-bit top-1 in ``model.bits`` order (a
      sequence or a {bits: top1 | (top1, top5)} dict, as ``trainer.evaluate`` returns), else the imported
      array, else zeros (the release's own initial value); always a float64 numpy array.
      ``best_acc1``: given, else the imported one, else the mean of ``acc1`` (np.float64).
    - ``arch``: the release's name for the model (``resnet20_quant``...); when not given, the imported value,
      else the release name of ``model_name`` (default: as imported, else recognised from the model).
    - ``optimizer_*``, ``scheduler_*``: passed through, default None: the release's ``--evaluate`` reads only
      ``state_dict``; its ``--resume`` needs real optimizer states, which a suite model does not have.
    """
    meta = getattr(model, "release_meta", {}) or {}
    bits = list(model.bits)
    model_name = model_name or meta.get("model") or _guess_model(model)
    spec = lookup(RELEASE_MODELS, model_name, "model")
    arch = arch or meta.get("arch") or spec.release_arch
    rename = spec.rename
    if ddp_prefix is None:
        ddp_prefix = meta.get("prefix", DDP_PREFIX) == DDP_PREFIX
    state = release_state_dict(model, rename=rename, prefix=DDP_PREFIX if ddp_prefix else "")
    if not any(v.abs().sum() > 0 for k, v in state.items() if k.rsplit(".", 2)[-2] in ("uA", "lA")):
        warnings.warn("exporting a model whose activation bounds are all 0 (not calibrated): the release "
                      "would evaluate it to NaN", stacklevel=2)
    if acc1 is not None:
        acc1 = _acc1_array(acc1, bits)
    elif meta.get("acc1") is not None:
        acc1 = np.array(meta["acc1"], copy=True)
    else:
        acc1 = np.zeros(len(bits))
    if best_acc1 is None:
        best_acc1 = meta.get("best_acc1", np.float64(np.mean(acc1)) if len(acc1) else np.float64(0))
    checkpoint = {
        "epoch": int(epoch if epoch is not None else meta.get("epoch", 0)),
        "arch": arch,
        "state_dict": state,
        "acc1": acc1,
        "best_acc1": best_acc1 if isinstance(best_acc1, (np.generic, torch.Tensor)) else np.float64(best_acc1),
        "optimizer_m": optimizer_m, "optimizer_q": optimizer_q,
        "scheduler_m": scheduler_m, "scheduler_q": scheduler_q,
    }
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(checkpoint, tmp)
    os.replace(tmp, path)
    return path


def _guess_model(model: nn.Module) -> str:
    """The released model of a multi-branch network the suite built: its ``arch``, where the release has it."""
    arch = getattr(model, "arch", "")
    if arch in RELEASE_MODELS and any(is_quantized_conv(m) for m in model.modules()):
        return arch
    raise InteropError("cannot tell which released model this is; pass model_name= "
                       f"(one of {', '.join(RELEASE_MODELS)})")
