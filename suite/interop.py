"""Interop with the authors' released checkpoints (zysxmu/MBQuant): their format, import and export.

A released checkpoint is a ``torch.save``d dict ``{epoch, arch, state_dict, acc1, best_acc1, optimizer_m,
optimizer_q, scheduler_m, scheduler_q}`` whose state-dict keys carry a ``module.`` prefix when it was saved
under DDP (docs/spec/reference-checkpoint.md). The suite's MBQuant models mirror the release's module paths,
so the mapping between the two state dicts is generic over module paths and is built from the suite model itself
(``release_layout``), one entry per release key, in the release's own key order:

===============================================  ==========================================================
release key (per module path ``P``)              suite tensor
===============================================  ==========================================================
quantized conv ``P.weight``  [G·co, ci, k, k]     ``P.weight`` (same layout: branch g = rows g·co..(g+1)·co)
quantized conv ``P.uW.{g}`` / ``P.lW.{g}``  ()     ``P.w_upper[g]`` / ``P.w_lower[g]``
quantized conv ``P.uA.{g}`` / ``P.lA.{g}``  (7,)   ``P.a_upper[g]`` / ``P.a_lower[g]``  (column b−2)
quantized conv ``P.output_scale.{0..6}``  ()      ignored: never read by the release's forward (quirk 4)
quantized conv ``P.bkwd_scaling_factorW/A``  ()   ignored: registered buffers the release never reads
quantized conv ``P.init``  (1,) int64             ignored: the release's "calibrate on next forward" flag
every other tensor (stem conv, BN incl. the       the same key: ``bn1.*``, ``P.bn.{i}.*`` (bit-width i+2),
switchable ``P.bn.{i}.*`` and the unused          ``layer3.2.bn2.bn.7.*``, ``fc.*``
``bn.7``, classifier)
===============================================  ==========================================================

Every checkpoint key must be either loaded (shape-checked) or one of the ignored ones, and every suite tensor
must be filled; anything else is a ``CheckpointMismatch`` naming the key and both shapes.

The ignored values are kept on the imported model (``model.release_extras``) so ``export_release_checkpoint``
writes them back unchanged: import -> export is an exact round trip. A model that did not come from a
checkpoint gets the values the release's constructor and initialisation leave there: ``output_scale`` 1.0,
``bkwd_scaling_factorW/A`` 0.0 (option.py defaults), ``init`` 0 (cleared after the calibration pass).

``checkpoint_manifest`` describes the evaluation of one released checkpoint as a ``task: evaluate`` manifest,
which the runner runs like any other (CLI ``python -m suite import-checkpoint``).
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

from suite.checkpoints import UnsafeCheckpoint, load_data, sha256_file
from suite.data import NUM_CLASSES
from suite.layers.branch_selection import BN_SLOTS
from suite.layers.multibranch import BOUND_NAMES as SUITE_BOUNDS
from suite.methods import mbquant
from suite.paths import to_identifier
from suite.models.mbquant_resnet_cifar import MBQuantResNetCIFAR

DDP_PREFIX = "module."
EXPERIMENT = "release-checkpoints"  # MLflow experiment of imported-checkpoint evaluations
RELEASE_SLOTS = 4  # the release always allocates 4 bound slots per conv, whatever G is


class InteropError(ValueError):
    """A checkpoint, name or option the interop layer cannot use; the message says which and why."""


class CheckpointMismatch(InteropError):
    """The checkpoint's state dict does not match the release layout of the requested model."""


# ----------------------------------------------------------------------------------------------------------
# Names: models, settings, datasets
# ----------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ReleaseModel:
    suite_arch: str  # ``mbquant.build(suite_arch, ...)`` builds ``create_model(f"mbquant_{suite_arch}")``
    release_arch: str  # the release's ``--arch`` (option.py), written as the checkpoint's ``arch``
    # suite module path -> release module path where the suite does not mirror the release (None: identical)
    rename: Callable[[str], str] | None = None


RELEASE_MODELS: dict[str, ReleaseModel] = {
    "resnet20": ReleaseModel("resnet20", "resnet20_quant"),
    "resnet8": ReleaseModel("resnet8", "resnet8_quant"),
    "resnet18": ReleaseModel("resnet18", "resnet18_quant"),
    "mobilenetv1": ReleaseModel("mobilenetv1", "mv1_quant"),
}

# setting -> (bit list, branch selection); both settings store all G = 4 branches and identical keys.
SETTINGS: dict[str, tuple[list[int], str]] = {
    "2468": ([2, 4, 6, 8], "amortization"),
    "234": ([2, 3, 4], "serial"),
}

RELEASE_DATASETS = {"cifar10", "cifar100", "imagenet"}  # datasets the release trained on (digits: suite demo)


def _lookup(table: Mapping[str, Any], name: str, what: str) -> Any:
    if name not in table:
        raise InteropError(f"unknown {what} {name!r}; known: {', '.join(table)}")
    return table[name]


def build_release_model(model: str = "resnet20", dataset: str = "cifar100", setting: str = "2468") -> nn.Module:
    """The suite's MBQuant model in the release's configuration (variant release, G = 4), not yet filled."""
    spec = _lookup(RELEASE_MODELS, model, "model")
    num_classes = _lookup(NUM_CLASSES, dataset, "dataset")
    bits, selection = _lookup(SETTINGS, setting, "setting")
    options = mbquant.Options(selection=selection, variant="release", branches=RELEASE_SLOTS)
    return mbquant.build(spec.suite_arch, num_classes, bits, options).model


# ----------------------------------------------------------------------------------------------------------
# The mapping
# ----------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ConvLayout:
    """Release-only tensors of one kind of quantized conv (besides weight and the uW/lW/uA/lA slots)."""

    output_scales: int  # ``output_scale.{0..n-1}`` scalars
    bkwd: bool  # ``bkwd_scaling_factorW`` / ``bkwd_scaling_factorA`` scalar buffers


QCONV = ConvLayout(output_scales=BN_SLOTS, bkwd=True)  # release QConv (CIFAR and ImageNet ResNets)
DEPTHWISE = ConvLayout(output_scales=0, bkwd=False)  # release QConv_Tra_Mulit (MobileNetV1 depthwise)

# Suite quantized-conv class name -> release layout. A quantized conv = a module with its own
# w_lower/w_upper/a_lower/a_upper parameters; an unlisted class is an error, never a guess.
CONV_LAYOUTS: dict[str, ConvLayout] = {
    "MultiBranchConv": QCONV,
    "MultiBranchDepthwiseConv": DEPTHWISE,  # MobileNetV1's depthwise conv (suite.methods.mbquant)
}

# Where each bound lives in the suite (release name -> suite parameter); slot g of the release = row g here.
BOUND_NAMES = {"uW": "w_upper", "lW": "w_lower", "uA": "a_upper", "lA": "a_lower"}

IGNORED_WHY = {
    "output_scale": "never read by the release's forward (mbquant.md quirk 4; it only sits in Adam's list)",
    "bkwd_scaling_factorW": "buffer the release registers but never reads",
    "bkwd_scaling_factorA": "buffer the release registers but never reads",
    "init": "the release's 'calibrate on the next forward' flag (0 once calibrated); the suite calibrates "
            "explicitly (mbquant.calibrate)",
}
IGNORED_DEFAULTS = {"output_scale": 1.0, "bkwd_scaling_factorW": 0.0, "bkwd_scaling_factorA": 0.0, "init": 0}


@dataclass(frozen=True)
class ReleaseEntry:
    """One key of the release's state dict and where it lives in the suite (or why it does not)."""

    key: str
    shape: tuple[int, ...]
    dtype: torch.dtype
    suite_key: str | None = None  # suite state-dict key; None: ignored
    index: int | None = None  # row of ``suite_key`` (bound slot), None: the whole tensor
    ignored: str | None = None  # IGNORED_WHY key

    @property
    def target(self) -> str:
        if self.suite_key is None:
            return f"ignored ({IGNORED_WHY[self.ignored]})"
        return self.suite_key if self.index is None else f"{self.suite_key}[{self.index}]"


def _release_dtype(t: torch.Tensor) -> torch.dtype:
    # The release trains in FP32; counters and flags are int64.
    return torch.float32 if t.is_floating_point() else torch.int64


def _is_quantized_conv(module: nn.Module) -> bool:
    return all(name in module._parameters for name in SUITE_BOUNDS)


def release_layout(model: nn.Module, rename: Callable[[str], str] | None = None) -> list[ReleaseEntry]:
    """Every key of the release's state dict for ``model``, in the release's order, with its suite target.

    Also checks the converse: every suite parameter and buffer is covered (every bound row included).
    """
    rename = rename or (lambda path: path)
    state = model.state_dict()
    entries: list[ReleaseEntry] = []
    covered: set[str] = set()

    def key(path: str, name: str) -> str:
        p = rename(path)
        return f"{p}.{name}" if p else name

    def plain(path: str, module: nn.Module, names) -> None:
        for name in names:
            suite_key = f"{path}.{name}" if path else name
            if suite_key in state:
                t = state[suite_key]
                entries.append(ReleaseEntry(key(path, name), tuple(t.shape), _release_dtype(t), suite_key))
                covered.add(suite_key)

    for path, module in model.named_modules():
        own_params = [n for n, p in module._parameters.items() if p is not None]
        own_buffers = [n for n, b in module._buffers.items()
                       if b is not None and n not in module._non_persistent_buffers_set]
        if not _is_quantized_conv(module):
            plain(path, module, own_params + own_buffers)  # identity rule: stem, BN (incl. bn.{i}), fc, ...
            continue
        cls = type(module).__name__
        if cls not in CONV_LAYOUTS:
            raise InteropError(f"{path}: no release layout for quantized conv class {cls}; add it to "
                               f"suite.interop.CONV_LAYOUTS (known: {', '.join(CONV_LAYOUTS)})")
        layout = CONV_LAYOUTS[cls]
        # The release's order: the conv's own parameters (weight), own buffers (bkwd W/A, init), then the
        # ParameterLists uW, lW, uA, lA, output_scale.
        plain(path, module, [n for n in own_params if n not in SUITE_BOUNDS] + own_buffers)
        extra = (["bkwd_scaling_factorW", "bkwd_scaling_factorA"] if layout.bkwd else []) + ["init"]
        for name in extra:
            shape, dtype = ((1,), torch.int64) if name == "init" else ((), torch.float32)
            entries.append(ReleaseEntry(key(path, name), shape, dtype, ignored=name))
        for release_name, suite_name in BOUND_NAMES.items():
            suite_key = f"{path}.{suite_name}"
            t = state[suite_key]
            if t.shape[0] != RELEASE_SLOTS:
                raise InteropError(f"{suite_key}: {t.shape[0]} slots, the release always stores {RELEASE_SLOTS}")
            for g in range(RELEASE_SLOTS):
                entries.append(ReleaseEntry(key(path, f"{release_name}.{g}"), tuple(t.shape[1:]), _release_dtype(t),
                                            suite_key, g))
            covered.add(suite_key)
        for i in range(layout.output_scales):
            entries.append(ReleaseEntry(key(path, f"output_scale.{i}"), (), torch.float32, ignored="output_scale"))

    uncovered = [k for k in state if k not in covered]
    if uncovered:  # a module kind the mapping does not know: fail loudly rather than leave it unfilled
        raise InteropError(f"suite tensors without a release counterpart: {', '.join(uncovered)}")
    return entries


def mapping_table(model: nn.Module, rename: Callable[[str], str] | None = None) -> list[dict[str, str]]:
    """The mapping as rows (release key, shape, dtype, suite target or 'ignored (why)'), for humans and MLflow."""
    return [{"release_key": e.key, "shape": str(e.shape), "dtype": str(e.dtype).replace("torch.", ""),
             "suite": e.target} for e in release_layout(model, rename)]


# ----------------------------------------------------------------------------------------------------------
# Import
# ----------------------------------------------------------------------------------------------------------


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


# ----------------------------------------------------------------------------------------------------------
# Export
# ----------------------------------------------------------------------------------------------------------


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
    spec = _lookup(RELEASE_MODELS, model_name, "model")
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
    """CIFAR ResNet-n has n - 2 quantized body convs plus 2 quantized shortcut convs: n in all."""
    convs = sum(1 for m in model.modules() if _is_quantized_conv(m))
    if isinstance(model, MBQuantResNetCIFAR) and f"resnet{convs}" in RELEASE_MODELS:
        return f"resnet{convs}"
    raise InteropError("cannot tell which released model this is; pass model_name= "
                       f"(one of {', '.join(RELEASE_MODELS)})")


# ----------------------------------------------------------------------------------------------------------
# Evaluate and track
# ----------------------------------------------------------------------------------------------------------


def setting_of(bits: list[int]) -> str:
    """The release setting (``SETTINGS``) that serves exactly ``bits``."""
    for name, (setting_bits, _) in SETTINGS.items():
        if list(bits) == setting_bits:
            return name
    raise InteropError(f"no released setting serves bits {bits}; known: "
                       + ", ".join(f"{k} = {v[0]}" for k, v in SETTINGS.items()))


def checkpoint_manifest(path: str | os.PathLike, *, model: str = "resnet20", dataset: str = "cifar100",
                        setting: str = "2468", data_root: str | None = None,
                        data_overrides: Mapping[str, Any] | None = None, eval_batch_size: int = 256,
                        device: str = "auto", trusted: bool = False) -> tuple[dict, str]:
    """A ``task: evaluate`` manifest for one released checkpoint, and the profile to run it at.

    The runs go to the MLflow experiment ``release-checkpoints`` as manifest ``release_<dataset>_<model>_<setting>``,
    arm ``<file name> (<sha256[:8]>)``, seed 0; profile ``paper`` on a release dataset's full validation split,
    ``smoke`` otherwise (digits demo, val_limit). ``suite.collect.load_runs`` and the report pick them up like
    any trained run.
    """
    _lookup(RELEASE_MODELS, model, "model")
    _lookup(NUM_CLASSES, dataset, "dataset")
    bits, selection = _lookup(SETTINGS, setting, "setting")
    path = Path(path).resolve()
    if not path.is_file():
        raise InteropError(f"checkpoint not found: {path}")
    data: dict[str, Any] = {"dataset": dataset} | ({"root": str(data_root)} if data_root is not None else {})
    for dotted, value in (data_overrides or {}).items():
        if not dotted.startswith("data.") or dotted.count(".") != 1:
            raise InteropError(f"--set {dotted}: import-checkpoint only takes data.* overrides "
                               f"(e.g. data.val_limit=500)")
        if dotted == "data.dataset":
            raise InteropError("set the dataset with --dataset, not --set data.dataset")
        data[dotted.split(".", 1)[1]] = value
    digest = sha256_file(path)
    doc = {
        "name": f"release_{dataset}_{model}_{setting}", "version": 1, "task": "evaluate", "experiment": EXPERIMENT,
        "title": f"Released MBQuant checkpoint: {dataset} {model}, {'-'.join(map(str, bits))} bits",
        "paper": {"ref": "release checkpoint", "verified": False},
        "data": data, "model": {"arch": model},
        "method": {"name": "mbquant", "bits": bits,
                   "options": {"selection": selection, "variant": "release", "branches": RELEASE_SLOTS}},
        "recipe": {"batch_size": eval_batch_size, "eval_batch_size": eval_batch_size, "device": device},
        "checkpoint": {"path": str(path), "sha256": digest, "trusted": trusted},
        "seeds": [0], "arms": [{"name": f"{to_identifier(path.name, 48)}-{digest[:8]}"}],
        "profiles": {"paper": {}, "smoke": {}},
    }
    full = dataset in RELEASE_DATASETS and data.get("val_limit") is None
    return doc, "paper" if full else "smoke"


def format_results(results: dict[int, tuple[float, float]], stored: Mapping[int, float] | None = None) -> str:
    """The printed table: one line per bit-width (and the checkpoint's own stored acc1 where it has one)."""
    stored = stored or {}
    lines = [f"{'bits':>4}  {'top-1 %':>8}  {'top-5 %':>8}" + ("  checkpoint acc1 %" if stored else "")]
    for b, (t1, t5) in sorted(results.items()):
        lines.append(f"{b:>4}  {t1:>8.2f}  {t5:>8.2f}" + (f"  {stored[b]:>17.2f}" if stored else ""))
    return "\n".join(lines)


