"""The release's names: its models, its two bit-width settings, the datasets it trained on, its DDP prefix."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Mapping

DDP_PREFIX = "module."  # state-dict keys of a model saved under DistributedDataParallel
RELEASE_SLOTS = 4  # the release always allocates 4 bound slots per conv, whatever G is


class InteropError(ValueError):
    """A checkpoint, name or option the release format cannot use; the message says which and why."""


@dataclass(frozen=True)
class ReleaseModel:
    suite_arch: str  # the suite builds it as ``create_model(f"mbquant_{suite_arch}")``
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


def lookup(table: Mapping[str, Any], name: str, what: str) -> Any:
    """``table[name]``, or an ``InteropError`` listing the known names."""
    if name not in table:
        raise InteropError(f"unknown {what} {name!r}; known: {', '.join(table)}")
    return table[name]


def setting_of(bits: list[int]) -> str:
    """The release setting (``SETTINGS``) that serves exactly ``bits``."""
    for name, (setting_bits, _) in SETTINGS.items():
        if list(bits) == setting_bits:
            return name
    raise InteropError(f"no released setting serves bits {bits}; known: "
                       + ", ".join(f"{k} = {v[0]}" for k, v in SETTINGS.items()))
