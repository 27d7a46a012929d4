"""The method registry: a plain dict from a manifest's ``method.name`` to the module implementing it.

Each method module defines ``Options`` (a dataclass: its ``method.options`` in a manifest), ``check_bits``
(ValueError for a bit list it cannot serve) and ``build(arch, num_classes, bits, options) -> Trainable``.
"""
from __future__ import annotations

from suite.methods import mbquant

METHODS = {
    "mbquant": mbquant,
}
