"""Figures drawn for a single run (logged with it) and reused by the report."""
from __future__ import annotations

import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure


def new_figure(size: tuple[float, float]) -> Figure:
    # A bare Figure on an Agg canvas, not pyplot: no global backend switch and no figure registry to leak.
    fig = Figure(figsize=size)
    FigureCanvasAgg(fig)
    return fig


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
