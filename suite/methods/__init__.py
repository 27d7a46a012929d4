"""The method registry: a plain dict from a manifest's ``method.name`` to the module implementing it.

Each method module defines ``Options`` (a dataclass: its ``method.options`` in a manifest), ``check_bits``
(ValueError for a bit list it cannot serve), ``build(arch, num_classes, bits, options) -> Trainable`` and
``storage_bits(model)`` (stored bits by component).
"""
from __future__ import annotations

from suite.methods import adabits, anyprecision, bitmixer, dedicated, mbquant

METHODS = {
    "mbquant": mbquant,
    "dedicated": dedicated,
    "anyprecision": anyprecision,
    "adabits": adabits,
    "bitmixer": bitmixer,
}
