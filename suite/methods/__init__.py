"""The method registry: ``method.name`` in a manifest -> its ``Method``, each imported on first use.

Methods from outside the tree register through the Python entry-point group ``suite.methods`` (``name =
my_package.my_method:METHOD``, the name being the method's) or with ``--plugin my_package.my_method`` (a module
that defines ``METHOD``, or registers architectures with ``suite.models.register_model``, or both); either way
every manifest can use them as arms. ``method(name)`` reads the entry points on first use.
"""
from __future__ import annotations

import importlib
import re

from suite.contract import Method, ParamGroup, Trainable
from suite.models import MODELS, archs
from suite.registry import EntryPoints, PluginError, Registry

ENTRY_POINT_GROUP = "suite.methods"


def _is_method(name: str, method: object) -> None:
    if not isinstance(method, Method):
        raise ValueError(f"expected a suite.methods.Method, got {type(method).__name__}")
    if method.name != name:
        raise ValueError(f"method {method.name!r} registered under another name, {name!r}")


BUILT_IN = ("mbquant", "dedicated", "anyprecision", "adabits", "bitmixer")
METHODS = Registry("method", {name: f"suite.methods.{name}:METHOD" for name in BUILT_IN}, _is_method)

load_entry_points = EntryPoints(ENTRY_POINT_GROUP, METHODS.register)  # installed methods


def register(method: Method) -> Method:
    """Add ``method`` to the registry; a different method under a taken name is an error."""
    if not isinstance(method, Method):
        raise PluginError(f"expected a suite.methods.Method, got {type(method).__name__}")
    return METHODS.register(method.name, method)


def load_plugin(module: str) -> Method | None:
    """Import ``module`` (``--plugin``): register its ``METHOD``; the architectures it defines registered
    themselves on import (``@register_model``). It must provide at least one of the two."""
    if not re.fullmatch(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*", module):
        raise PluginError(f"plugin {module!r} is not a module name: give a dotted Python name (e.g. mypackage.method) "
                          "importable from the current folder or the environment, not a file path")
    before = set(MODELS)
    try:
        found = importlib.import_module(module)
    except ImportError as err:
        raise PluginError(f"plugin {module!r} cannot be imported: {err}") from None
    except SystemExit as err:  # the plugin ended the process while being imported: nothing ran
        raise PluginError(f"plugin {module!r} called exit({err.code}) while being imported") from None
    except Exception as err:  # its own bug: name the plugin, not the suite
        raise PluginError(f"plugin {module!r} failed while being imported: {type(err).__name__}: {err}") from None
    if hasattr(found, "METHOD"):
        return register(found.METHOD)
    # What it registered now, or on an earlier import (the module is imported once per process).
    if not set(MODELS) - before and not any(getattr(b, "__module__", None) == found.__name__
                                            for b in MODELS.loaded().values()):
        raise PluginError(f"plugin {module!r} defines no METHOD (a suite.methods.Method) and registers no "
                          "architecture (suite.models.register_model)")
    return None




def build_trainable(name: str, arch: str, num_classes: int, bits: list[int], options: dict) -> Trainable:
    """Method ``name`` on model ``arch`` with its options given as a plain mapping (a manifest's)."""
    spec = method(name)
    return spec.build(arch, num_classes, bits, spec.Options(**options))


def method(name: str) -> Method:
    """The registered method ``name``; a ValueError naming the known ones otherwise."""
    load_entry_points()
    if name not in METHODS:
        raise ValueError(f"unknown method {name!r}; known: {', '.join(sorted(METHODS))}")
    return METHODS[name]


def supported_archs(name: str) -> list[str]:
    """The ``model.arch`` values method ``name`` accepts now: the architectures of its topology."""
    return archs(method(name).topology)


__all__ = ["BUILT_IN", "METHODS", "Method", "ParamGroup", "PluginError", "Trainable", "build_trainable", "load_entry_points",
           "load_plugin", "method", "register", "supported_archs"]
