"""The architecture registry: ``model.arch`` in a manifest -> the builder of its network, imported on first use.

Every model builds from its name plus kwargs and exposes ``model.set_bits(b)``, the one bit-width switch used
by the trainer, evaluation and users. An architecture belongs to a topology: ``single_branch`` ones build their
body layers from a method's ``conv`` / ``norm`` factories (every baseline runs on them); a method with networks
of its own (MBQuant's multi-branch ones) registers them under its topology, as ``<topology>_<arch>``. A
method accepts every architecture of its topology registered when it is asked (``archs``).

Architectures from outside the tree register with ``@register_model("name")`` in a module given as
``--plugin``, or through the entry-point group ``suite.models`` (``name = my_package.nets:builder``, a
single-branch builder taking ``num_classes``, ``bits``, ``conv`` and ``norm``).
"""
from __future__ import annotations

from typing import Any, Callable

from suite.contract import SINGLE_BRANCH
from suite.registry import EntryPoints, Lazy, Registry

ENTRY_POINT_GROUP = "suite.models"


def _is_builder(name: str, builder: Any) -> None:
    if not callable(builder):
        raise ValueError(f"architecture {name!r}: expected a callable building the model, got "
                         f"{type(builder).__name__}")


MODELS = Registry("architecture", {}, _is_builder)
TOPOLOGY: dict[str, tuple[str, str]] = {}  # registered name -> (topology, arch)


def model_name(arch: str, topology: str = SINGLE_BRANCH) -> str:
    """The registered name of ``arch`` in ``topology``: the arch itself, else ``<topology>_<arch>``."""
    return arch if topology == SINGLE_BRANCH else f"{topology}_{arch}"


def register_model(arch: str, builder: Callable | str | Lazy | None = None, *, topology: str = SINGLE_BRANCH):
    """Register ``builder`` (or a ``"module:attr"`` string, imported on first use) as ``arch`` of ``topology``;
    without a builder, a decorator: ``@register_model("my_net")``."""
    if builder is None:
        return lambda fn: register_model(arch, fn, topology=topology)
    name = model_name(arch, topology)
    MODELS.register(name, Lazy.target(builder) if isinstance(builder, str) else builder)
    TOPOLOGY[name] = (topology, arch)
    return builder


for _arch, _target in {
    "resnet20": "suite.models.resnet:resnet20",
    "resnet8": "suite.models.resnet:resnet8",
    "resnet18": "suite.models.resnet:resnet18",  # ImageNet, torchvision topology
    "resnet34": "suite.models.resnet:resnet34",
    "mobilenetv1": "suite.models.mobilenet:mobilenetv1",
}.items():
    register_model(_arch, _target)
for _arch, _target in {  # MBQuant's multi-branch networks
    "resnet20": "suite.models.mbquant_resnet:mbquant_resnet20",
    "resnet8": "suite.models.mbquant_resnet:mbquant_resnet8",
    "resnet18": "suite.models.mbquant_resnet:mbquant_resnet18",  # ImageNet (imagenet-models.md)
    "resnet34": "suite.models.mbquant_resnet:mbquant_resnet34",
    "mobilenetv1": "suite.models.mbquant_mobilenet:mbquant_mobilenetv1",
}.items():
    register_model(_arch, _target, topology="mbquant")

load_entry_points = EntryPoints(ENTRY_POINT_GROUP, register_model)  # installed architectures


def archs(topology: str = SINGLE_BRANCH) -> list[str]:
    """The architectures registered (so far) in ``topology``, in registration order."""
    load_entry_points()
    return [arch for name, (t, arch) in TOPOLOGY.items() if t == topology and name in MODELS]


def create_model(name: str, **kwargs):
    load_entry_points()
    if name not in MODELS:
        raise KeyError(f"unknown model {name!r}; registered: {', '.join(sorted(MODELS))}")
    return MODELS[name](**kwargs)
