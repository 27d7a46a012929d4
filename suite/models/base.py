"""The one bit-width switch every model of the suite exposes: ``model.set_bits(b)``."""
from __future__ import annotations

from torch import nn


class BitSwitchable(nn.Module):
    """A model serving the bit-widths in ``self.bits``; ``set_bits`` sets ``active_bits`` on every layer having one."""

    bits: list[int]

    def set_bits(self, bits: int) -> None:
        if bits not in self.bits:
            raise ValueError(f"bit-width {bits} cannot be served by this model (built for bits {self.bits})")
        for m in self.modules():
            if hasattr(m, "active_bits"):
                m.active_bits = bits

    def serving(self, bits: int) -> nn.Module:
        """The module whose layers run at ``bits`` (the model itself unless it routes between sub-models)."""
        return self
