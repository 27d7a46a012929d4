"""Figures drawn for a single run (logged with it) and the drawing vocabulary the report shares: one fixed colour
and marker per method, on every page."""
from __future__ import annotations

import hashlib
from dataclasses import dataclass

import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure


def new_figure(size: tuple[float, float], layout: str | None = None) -> Figure:
    # A bare Figure on an Agg canvas, not pyplot: no global backend switch and no figure registry to leak.
    fig = Figure(figsize=size, layout=layout)
    FigureCanvasAgg(fig)
    return fig


@dataclass(frozen=True)
class Style:
    """How one arm is drawn: its method's colour and marker; arms sharing a method differ by line style and fill."""

    color: str
    marker: str
    linestyle: str = "-"
    filled: bool = True

    def line_kwargs(self) -> dict:
        return {"color": self.color, "marker": self.marker, "linestyle": self.linestyle,
                "markerfacecolor": self.color if self.filled else "white", "markeredgecolor": self.color}


# The shipped methods; the colours are the tab10 palette, fixed here so a method never changes colour.
METHOD_STYLES = {
    "mbquant": Style("#d62728", "o"),       # red circle: the method under test
    "dedicated": Style("#7f7f7f", "s"),     # grey square
    "anyprecision": Style("#1f77b4", "^"),  # blue triangle
    "adabits": Style("#2ca02c", "D"),       # green diamond
    "bitmixer": Style("#9467bd", "v"),      # purple inverted triangle
}
# Methods not known in advance (plugins) draw from what the shipped ones leave free, by a stable hash of the name
# (not Python's hash(), which changes per process): the same plugin gets the same style in every report.
PLUGIN_COLORS = ("#ff7f0e", "#8c564b", "#e377c2", "#bcbd22", "#17becf", "#393b79", "#637939", "#843c39")
PLUGIN_MARKERS = ("P", "X", "*", "h", "<", ">", "p")
ARM_LINESTYLES = ("-", "--", ":", "-.")  # further arms of one method within a figure


def method_style(method: str) -> Style:
    """The fixed colour and marker of a method, deterministic for any name."""
    if method in METHOD_STYLES:
        return METHOD_STYLES[method]
    digest = int.from_bytes(hashlib.sha256(method.encode()).digest()[:8], "big")
    color = PLUGIN_COLORS[digest % len(PLUGIN_COLORS)]
    marker = PLUGIN_MARKERS[digest // len(PLUGIN_COLORS) % len(PLUGIN_MARKERS)]
    return Style(color, marker)


def arm_styles(arm_methods: dict[str, str]) -> dict[str, Style]:
    """Styles for the arms of one figure, {arm: method} in display order: each keeps its method's colour and
    marker; the second, third... arm of the same method gets a dashed, dotted... line and hollow markers."""
    seen: dict[str, int] = {}
    styles = {}
    for arm, method in arm_methods.items():
        k = seen[method] = seen.get(method, -1) + 1
        base = method_style(method)
        styles[arm] = Style(base.color, base.marker, ARM_LINESTYLES[k % len(ARM_LINESTYLES)], filled=k == 0)
    return styles


def training_curves_figure(history: pd.DataFrame, bits: list[int], title: str) -> Figure:
    """Validation top-1 per bit-width and mean training loss over epochs, for one run's artifacts."""
    fig = new_figure((9.0, 4.0))
    acc, loss = fig.subplots(1, 2)
    for b in bits:
        acc.plot(history["epoch"] + 1, history[f"val_top1_b{b}"], marker="o", label=f"{b}-bit")
        loss.plot(history["epoch"] + 1, history[f"train_loss_b{b}"], marker="o", label=f"{b}-bit")
    acc.set(xlabel="epoch", ylabel="val top-1 (%)")
    loss.set(xlabel="epoch", ylabel="train loss")
    acc.legend(fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig
