"""The method registry: ``method.name`` in a manifest -> its ``Method``.

Methods from outside the tree register through the Python entry-point group ``suite.methods`` (a value like
``my_package.my_method:METHOD``) or with ``--plugin my_package.my_method`` (a module that defines ``METHOD``);
either way every manifest can use them as arms. ``method(name)`` loads the entry points on first use.
"""
from __future__ import annotations

import importlib
import re
from importlib.metadata import entry_points

from suite.methods import adabits, anyprecision, bitmixer, dedicated, mbquant
from suite.methods.api import Method, ParamGroup, Trainable

ENTRY_POINT_GROUP = "suite.methods"
METHODS: dict[str, Method] = {m.METHOD.name: m.METHOD for m in (mbquant, dedicated, anyprecision, adabits, bitmixer)}
_entry_points_loaded = False


class PluginError(ValueError):
    """A plugin that cannot be loaded or registered; the message names it."""


def register(method: Method) -> Method:
    """Add ``method`` to the registry; a different method under a taken name is an error."""
    if not isinstance(method, Method):
        raise PluginError(f"expected a suite.methods.Method, got {type(method).__name__}")
    known = METHODS.get(method.name)
    if known is not None and known is not method:
        raise PluginError(f"a method named {method.name!r} is already registered")
    METHODS[method.name] = method
    return method


def load_plugin(module: str) -> Method:
    """Import ``module`` (``--plugin``) and register its ``METHOD``."""
    if not re.fullmatch(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*", module):
        raise PluginError(f"plugin {module!r} is not a module name: give a dotted Python name (e.g. mypackage.method) "
                          "importable from the current folder or the environment, not a file path")
    try:
        found = importlib.import_module(module)
    except ImportError as err:
        raise PluginError(f"plugin {module!r} cannot be imported: {err}") from None
    except SystemExit as err:  # the plugin ended the process while being imported: nothing ran
        raise PluginError(f"plugin {module!r} called exit({err.code}) while being imported") from None
    except Exception as err:  # its own bug: name the plugin, not the suite
        raise PluginError(f"plugin {module!r} failed while being imported: {type(err).__name__}: {err}") from None
    if not hasattr(found, "METHOD"):
        raise PluginError(f"plugin {module!r} defines no METHOD (a suite.methods.Method)")
    return register(found.METHOD)


def load_entry_points() -> None:
    """Register every method installed under the ``suite.methods`` entry-point group (once)."""
    global _entry_points_loaded
    if _entry_points_loaded:
        return
    _entry_points_loaded = True
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        try:
            register(ep.load())
        except Exception as err:  # a broken third-party package must name itself, not break the suite
            raise PluginError(f"entry point {ep.name} = {ep.value} ({ENTRY_POINT_GROUP}) failed to load: {err}") \
                from None


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


__all__ = ["METHODS", "Method", "ParamGroup", "PluginError", "Trainable", "build_trainable", "load_entry_points",
           "load_plugin", "method", "register"]
