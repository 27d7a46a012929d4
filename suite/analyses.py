"""The analysis registry: ``analyses`` in a manifest -> what each measures on a trained model (its best checkpoint).

An analysis names its metric prefix and the kinds it measures: it logs ``<prefix><kind>_b<bits>`` to the run (and
``<name>.csv``, its per-layer table), the runs table has a column ``<prefix><kind>`` per kind (suite.collect), and
a manifest's claims and the report read them from here. Its ``measure(model, bits, batch) -> (metrics, table)`` is
a ``"module:attr"`` imported on first use, so this registry loads no torch.

A new analysis is one module with its ``measure`` and one ``register(Analysis(...))`` line (here, or in a plugin).
"""
from __future__ import annotations

from dataclasses import dataclass

from suite.registry import Lazy, Registry


@dataclass(frozen=True)
class Analysis:
    name: str
    prefix: str  # of every metric it logs, e.g. "qerr_": a reuse record of another manifest's run carries none
    kinds: tuple[str, ...]  # per-bit measures, logged as <prefix><kind>_b<bits>
    target: str  # "module:attr" of measure(model, bits, batch) -> (metrics, per-layer table)
    description: str = ""

    def measure(self, model, bits: list[int], batch):
        return Lazy.target(self.target).load()(model, bits, batch)

    @property
    def columns(self) -> list[str]:
        """Its columns in the runs table (one value per run and bit-width)."""
        return [f"{self.prefix}{kind}" for kind in self.kinds]

    def measured(self, metrics: dict) -> bool:
        """Whether ``metrics`` hold every kind it measures (an older version may have logged fewer)."""
        return all(any(k.startswith(f"{self.prefix}{kind}_b") for k in metrics) for kind in self.kinds)


def _is_analysis(name: str, analysis: object) -> None:
    if not isinstance(analysis, Analysis):
        raise ValueError(f"expected a suite.analyses.Analysis, got {type(analysis).__name__}")
    if analysis.name != name:
        raise ValueError(f"analysis {analysis.name!r} registered under another name, {name!r}")


ANALYSES = Registry("analysis", {}, _is_analysis)


def register(analysis: Analysis) -> Analysis:
    """Add ``analysis``; a different one under a taken name is an error."""
    return ANALYSES.register(analysis.name, analysis)


def analysis(name: str) -> Analysis:
    """The registered analysis ``name``; a ValueError naming the known ones otherwise."""
    return ANALYSES[ANALYSES.known(name)]


def metric_prefixes() -> tuple[str, ...]:
    """The prefixes of every registered analysis's metrics."""
    return tuple(a.prefix for a in ANALYSES.values())


def run_columns() -> list[str]:
    """Every registered analysis's columns in the runs table."""
    return [column for a in ANALYSES.values() for column in a.columns]


QUANT_ERROR = register(Analysis(
    "quant_error", "qerr_", ("weight", "weight_datapath", "act", "drift", "bn_drift", "logits"),
    "suite.quant_error:measure", "weight / activation switching error per layer and bit-width"))
