"""The key layout of a released checkpoint, built from the suite's MBQuant model itself.

The suite's MBQuant models mirror the release's module paths, so the mapping between the two state dicts is
generic over module paths (``release_layout``), one entry per release key, in the release's own key order:

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
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

from suite.layers.branch_selection import BN_SLOTS
from suite.layers.multibranch import BOUND_NAMES as SUITE_BOUNDS
from suite.release.names import RELEASE_SLOTS, InteropError


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


def is_quantized_conv(module: nn.Module) -> bool:
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
        if not is_quantized_conv(module):
            plain(path, module, own_params + own_buffers)  # identity rule: stem, BN (incl. bn.{i}), fc, ...
            continue
        cls = type(module).__name__
        if cls not in CONV_LAYOUTS:
            raise InteropError(f"{path}: no release layout for quantized conv class {cls}; add it to "
                               f"suite.release.layout.CONV_LAYOUTS (known: {', '.join(CONV_LAYOUTS)})")
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
