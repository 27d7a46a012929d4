"""Import: a released checkpoint (or a bare release state dict) into the suite's MBQuant model.

Every checkpoint key must be either loaded (shape-checked) or one of the ignored ones, and every suite tensor
must be filled; anything else is a ``CheckpointMismatch`` naming the key and both shapes. The ignored values are
kept on the imported model (``model.release_extras``) so that export writes them back unchanged.
"""
from __future__ import annotations

import os
import warnings
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np
import torch
from torch import nn

from suite.checkpoints import UnsafeCheckpoint, load_data
from suite.data import NUM_CLASSES
from suite.models import create_model
from suite.release.layout import IGNORED_WHY, ReleaseEntry, release_layout
from suite.release.names import DDP_PREFIX, RELEASE_MODELS, RELEASE_SLOTS, SETTINGS, InteropError, lookup


class CheckpointMismatch(InteropError):
    """The checkpoint's state dict does not match the release layout of the requested model."""


def build_release_model(model: str = "resnet20", dataset: str = "cifar100", setting: str = "2468") -> nn.Module:
    """The suite's MBQuant model in the release's configuration (variant release, G = 4), not yet filled."""
    spec = lookup(RELEASE_MODELS, model, "model")
    num_classes = lookup(NUM_CLASSES, dataset, "dataset")
    bits, selection = lookup(SETTINGS, setting, "setting")
    # What MBQuant's method builds for ``variant: release`` with G = 4 and its default grouped convs.
    return create_model(f"mbquant_{spec.suite_arch}", num_classes=num_classes, bits=bits, branches=RELEASE_SLOTS,
                        strategy=selection, release_quirks=True, conv_impl="grouped")


@dataclass
class ImportReport:
    """What ``load_release_checkpoint`` did with every key."""

    loaded: dict[str, str]  # release key -> suite target, e.g. "layer1.0.conv1.uA.2" -> "layer1.0.conv1.a_upper[2]"
    ignored: dict[str, str]  # release key -> why it is not loaded
    prefix: str  # "module." when the checkpoint was saved under DDP, else ""
    metadata: dict[str, Any]  # epoch, arch, acc1, best_acc1 (absent for a bare state dict)
    warnings: list[str] = field(default_factory=list)


def _numpy_safe_globals() -> list:
    """What a release checkpoint's ``acc1`` (ndarray) and ``best_acc1`` (numpy scalar) need under weights_only."""
    try:
        from numpy._core.multiarray import _reconstruct, scalar  # numpy >= 2
    except ImportError:
        from numpy.core.multiarray import _reconstruct, scalar

    names = []
    for mod in ("numpy._core.multiarray", "numpy.core.multiarray"):  # numpy 2 / numpy 1 pickles
        names += [(_reconstruct, f"{mod}._reconstruct"), (scalar, f"{mod}.scalar")]
    dtypes = {type(np.dtype(c)) for c in ("f2", "f4", "f8", "i1", "i2", "i4", "i8", "u1", "b1")}
    return names + [np.ndarray, np.dtype, *dtypes]


def read_checkpoint(path: str | os.PathLike, *, trusted: bool = False) -> dict:
    """A checkpoint file loaded on the CPU as data only (tensors, containers, numpy arrays/scalars);
    ``trusted=True`` allows arbitrary pickles: only for files from a source you trust."""
    path = Path(path)
    if not path.is_file():
        raise InteropError(f"checkpoint not found: {path}")
    try:
        return load_data(path, safe_globals=_numpy_safe_globals(), trusted=trusted)
    except UnsafeCheckpoint as err:
        raise InteropError(f"{err}. If you trust the file, load it with trusted=True (CLI: --trust-checkpoint).") \
            from None


def split_checkpoint(obj: Mapping) -> tuple[dict[str, torch.Tensor], dict[str, Any], str]:
    """(state dict without the DDP prefix, top-level metadata, prefix) of a release checkpoint or a bare state dict."""
    if not isinstance(obj, Mapping):
        raise InteropError(f"a checkpoint must be a dict, got {type(obj).__name__}")
    if "state_dict" in obj:
        state, metadata = obj["state_dict"], {k: v for k, v in obj.items() if k != "state_dict"}
    else:
        state, metadata = obj, {}
    bad = [k for k, v in state.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise InteropError(f"state-dict entries that are not tensors: {', '.join(map(str, bad[:10]))}")
    prefix = DDP_PREFIX if state and all(k.startswith(DDP_PREFIX) for k in state) else ""
    return {k[len(prefix):]: v for k, v in state.items()}, metadata, prefix


def _fmt_shape(shape) -> str:
    return str(tuple(shape))


def _problems(entries: list[ReleaseEntry], state: Mapping[str, torch.Tensor], limit: int = 25) -> list[str]:
    expected = {e.key: e for e in entries}
    out: list[str] = []
    mismatched = [f"shape mismatch: {e.key}: expected {_fmt_shape(e.shape)}, found {_fmt_shape(state[e.key].shape)}"
                  for e in entries if e.key in state and tuple(state[e.key].shape) != e.shape]
    # Floating tensors may come in another floating type (cast on load); integer ones must match exactly.
    dtype = [f"dtype mismatch: {e.key}: expected {e.dtype}{' (or another floating type)' * e.dtype.is_floating_point}"
             f", found {state[e.key].dtype}"
             for e in entries if e.key in state and tuple(state[e.key].shape) == e.shape
             and (state[e.key].is_floating_point() != e.dtype.is_floating_point
                  or (not e.dtype.is_floating_point and state[e.key].dtype != e.dtype))]
    missing = [f"missing key: {e.key} (expected shape {_fmt_shape(e.shape)}, {e.dtype})"
               for e in entries if e.key not in state]
    unknown = [f"unknown key: {k} (found shape {_fmt_shape(v.shape)}, {v.dtype})"
               for k, v in state.items() if k not in expected]
    for group in (mismatched, dtype, missing, unknown):
        out += group[:limit] + ([f"... and {len(group) - limit} more like the above"] if len(group) > limit else [])
    return out


def fill_from_release_state_dict(model: nn.Module, state: Mapping[str, torch.Tensor], *,
                                 rename: Callable[[str], str] | None = None, what: str = "checkpoint"
                                 ) -> ImportReport:
    """Load a (prefix-free) release state dict into ``model`` through ``release_layout``; all-or-nothing."""
    entries = release_layout(model, rename)
    problems = _problems(entries, state)
    if problems:
        raise CheckpointMismatch(f"{what} does not match the release layout ({len(entries)} keys expected, "
                                 f"{len(state)} found):\n  " + "\n  ".join(problems))
    targets = model.state_dict(keep_vars=True)
    loaded, ignored, extras, notes = {}, {}, OrderedDict(), []
    with torch.no_grad():
        for e in entries:
            src = state[e.key]
            if e.suite_key is None:
                ignored[e.key] = IGNORED_WHY[e.ignored]
                extras[e.key] = src.detach().clone().to(e.dtype)
                continue
            dst = targets[e.suite_key]
            (dst if e.index is None else dst[e.index]).copy_(src)
            loaded[e.key] = e.target
    flagged = [k for k, v in extras.items() if k.endswith(".init") and int(v.flatten()[0]) != 0]
    if flagged:
        notes.append(f"{len(flagged)} conv(s) have init != 0 (e.g. {flagged[0]}): the release would re-calibrate "
                     "their bounds on its next forward; the suite uses the stored bounds as they are")
    model.release_extras = extras  # plain attribute, not state: export writes these back unchanged
    return ImportReport(loaded=loaded, ignored=ignored, prefix="", metadata={}, warnings=notes)


def _check_trained_bits(state: Mapping[str, torch.Tensor], bits: list[int], setting: str, what: str) -> None:
    """Every bit-width of the setting must have been calibrated in every quantized conv: its upper activation
    bound (column b-2 of ``uA``) is non-zero in some slot. Both settings store identical keys and shapes, so this
    is what tells a 2-4-6-8 checkpoint from a 2-3-4 one."""
    convs = list(dict.fromkeys(k.rsplit(".uA.", 1)[0] for k in state if ".uA." in k))  # in checkpoint order
    for conv in convs:
        slots = sorted(k for k in state if k.startswith(f"{conv}.uA."))
        for b in bits:
            if all(float(state[k][b - 2]) == 0 for k in slots):
                raise CheckpointMismatch(f"{what} does not serve setting {setting} (bits {bits}): {slots[0]}"
                                         f"[{b - 2}] and the other slots' upper activation bounds for {b} bits are 0, "
                                         f"so {b} bits were never calibrated or trained in it")


def load_release_checkpoint(path: str | os.PathLike | Mapping, model: str = "resnet20", dataset: str = "cifar100",
                            setting: str = "2468", *, return_report: bool = False, trusted: bool = False):
    """The suite model filled from a released checkpoint (or a bare release state dict), in eval mode.

    ``path`` may also be an already loaded checkpoint dict. The model serves the setting's bit-widths
    (``model.set_bits(b)``, b in ``model.bits``); it starts at the largest. With ``return_report`` the result is
    ``(model, ImportReport)``.
    """
    net = build_release_model(model, dataset, setting)
    obj = path if isinstance(path, Mapping) else read_checkpoint(path, trusted=trusted)
    state, metadata, prefix = split_checkpoint(obj)
    what = "checkpoint" if isinstance(path, Mapping) else f"checkpoint {path}"
    report = fill_from_release_state_dict(net, state, rename=RELEASE_MODELS[model].rename,
                                          what=f"{what} (read as {model}, setting {setting}, dataset {dataset}: "
                                               f"{NUM_CLASSES[dataset]} classes)")
    _check_trained_bits(state, net.bits, setting, what)
    report.prefix = prefix
    report.metadata = {k: v for k, v in metadata.items() if k in ("epoch", "arch", "acc1", "best_acc1")}
    net.release_meta = {**report.metadata, "prefix": prefix, "model": model}
    for note in report.warnings:
        warnings.warn(note, stacklevel=2)
    net.eval()
    net.set_bits(max(net.bits))
    return (net, report) if return_report else net
