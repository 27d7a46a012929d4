"""The figure pages of a training section: top-1 vs bit-width with the reference arm's paired differences,
validation top-1 over epochs, accuracy vs BitOPs / storage (only where the arms differ in them), and the
quantization-error analysis. Every arm is drawn in its method's fixed colour and marker (suite.plots).

Each function takes a Section and returns a Figure laid out by suite.report.layout: heading and caption bands
around a body the panels share under constrained layout, so titles, labels and legends never overlap.
"""
from __future__ import annotations

import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.transforms import offset_copy

from suite.analyses import QUANT_ERROR
from suite.plots import Style, arm_styles
from suite.records import PAPER_PROFILE
from suite.report.layout import new_page
from suite.report.sections import Section
from suite.report.stats import CONFIDENCE, paired_differences

LEGEND_DROP = 0.5  # inches from the bottom of the axes to a legend below it: tick labels and axis label fit above
SPREAD = 0.3  # of the gap between bit-widths: arms at one bit-width are spread sideways so none hides another
# Hollow, so the reproduced mean under it stays visible; its edge in the arm's colour.
PAPER_MARKER = {"marker": "*", "s": 220, "facecolors": "none", "linewidths": 1.3, "zorder": 5}


# ---------------------------------------------------------------------------------------------------- helpers

def _offsets(arms: list[str], bits: list[int]) -> dict[str, float]:
    gap = min(np.diff(sorted(bits))) if len(bits) > 1 else 1.0
    step = gap * SPREAD / max(len(arms) - 1, 1)
    return {a: (i - (len(arms) - 1) / 2) * step for i, a in enumerate(arms)}


def _n_label(counts: pd.Series) -> str:
    lo, hi = int(counts.min()), int(counts.max())
    return f"n={lo}" if lo == hi else f"n={lo}–{hi}"


def _errorbars(ax: Axes, x, mean, low, high, style: Style, label: str) -> None:
    """Points joined by the arm's line, with error bars where the interval is defined (none where it is NaN)."""
    ax.plot(x, mean, label=label, markersize=6, linewidth=1.4, **style.line_kwargs())
    has = ~(np.isnan(low) | np.isnan(high))
    if has.any():
        ax.errorbar(np.asarray(x)[has], np.asarray(mean)[has], yerr=[(mean - low)[has], (high - mean)[has]],
                    fmt="none", ecolor=style.color, capsize=3, linewidth=1)


def _not_finished(section: Section) -> str:
    """'Not finished: arm seed 1 (failed), ...' for the caption, or ''."""
    bad = section.jobs[section.jobs["status"] != "finished"]
    if bad.empty:
        return ""
    return " Not finished (not drawn): " + "; ".join(f"{r.arm} seed {r.seed} ({r.status})" for r in bad.itertuples()) \
        + "."


def _bit_axis(ax: Axes, bits: list[int]) -> None:
    ax.set_xticks(bits, [str(b) for b in bits])  # ticks only at the evaluated bit-widths
    ax.set_xlabel("bit-width")
    ax.grid(alpha=0.3)


def _legend(ax: Axes, title: str | None = None, below: bool = False) -> None:
    """A legend beside (or below) the axes, never over the data: constrained layout makes room for it."""
    handles = ax.get_legend_handles_labels()[0]
    if not handles:
        return
    # Below: a fixed distance under the axes, clear of the tick labels and the axis label whatever the axes' height.
    where = ({"loc": "upper center", "bbox_to_anchor": (0.5, 0), "ncol": 2,
              "bbox_transform": offset_copy(ax.transAxes, ax.figure, y=-LEGEND_DROP, units="inches")} if below else
             {"loc": "upper left", "bbox_to_anchor": (1.01, 1.0)})
    ax.legend(title=title, fontsize=7.5, title_fontsize=7.5, borderaxespad=0, **where)


# ------------------------------------------------------------------------------------------ top-1 vs bit-width

def _accuracy_panel(ax: Axes, section: Section, model: str, bits: list[int]) -> None:
    arms = section.arms_of(model)
    styles = arm_styles(arms)
    rows = section.runs[section.runs["model"] == model]
    offset = _offsets(list(arms), bits)
    paper = section.summary.dropna(subset=["paper_top1"]) if section.profile == PAPER_PROFILE else section.summary[:0]
    for arm in arms:
        data = rows[rows["arm"] == arm]
        if data.empty:
            continue
        g = data.groupby("bits").agg(mean=("top1", "mean"), sd=("top1", "std"), n=("seed", "nunique"))
        x = g.index.to_numpy() + offset[arm]
        _errorbars(ax, x, g["mean"], g["mean"] - g["sd"], g["mean"] + g["sd"], styles[arm],
                   f"{arm} ({_n_label(g['n'])})")
        ref = paper[paper["arm"] == arm]
        if not ref.empty:
            ax.scatter(ref["bits"] + offset[arm], ref["paper_top1"], edgecolors=styles[arm].color, **PAPER_MARKER)
    if not paper[paper["arm"].isin(list(arms))].empty:  # one legend entry for every paper marker
        ax.scatter([], [], edgecolors="black", label="paper value (registered)", **PAPER_MARKER)
    _bit_axis(ax, bits)
    ax.set_ylabel("top-1 accuracy (%)" + (f" — {section.scale}" if section.scale else ""))
    ax.set_title(f"{model}: top-1 vs bit-width (mean ± SD over seeds)", fontsize=9)
    _legend(ax, "arm (n seeds)", below=True)


def _comparison_title(section: Section, model: str, ref: str) -> str:
    arms = section.arms_of(model)
    others = {m for a, m in arms.items() if a != ref}
    if arms[ref] not in others:  # the headline's method against the baselines (a plugin's too: "mine − baseline")
        return f"{model}: {arms[ref]} minus each baseline ({ref} − arm)"
    return f"{model}: {ref} minus each other arm"


def _difference_panel(ax: Axes, section: Section, model: str, bits: list[int]) -> None:
    arms = section.arms_of(model)
    styles = arm_styles(arms)
    ref = section.headline_of(model)
    others = [a for a in arms if a != ref]
    diffs = paired_differences(section.runs[section.runs["model"] == model], ref, others)
    offset = _offsets(others, bits)
    for arm in others:
        d = diffs[diffs["arm"] == arm].sort_values("bits")
        if d.empty:
            continue
        _errorbars(ax, d["bits"] + offset[arm], d["mean"], d["low"], d["high"], styles[arm],
                   f"{ref} − {arm} ({_n_label(d['n'])})")
    ax.axhline(0, color="black", linewidth=0.8)
    _bit_axis(ax, bits)
    ax.set_ylabel("Δ top-1 (points)")
    interval = f"{CONFIDENCE:.0%} CI" if (diffs["n"] > 1).any() else "one seed: no interval"
    ax.set_title(f"{_comparison_title(section, model, ref)}\npaired over common seeds, {interval}", fontsize=9)
    _legend(ax, "difference (n common seeds)", below=True)


def accuracy_figure(section: Section) -> Figure:
    """Per architecture: top-1 vs bit-width per arm (paper values as stars where registered, paper profile only)
    and the reference arm minus every other arm, paired by seed, with 95 % intervals."""
    if section.runs.empty:
        raise ValueError("no finished runs to plot")
    bits = sorted(int(b) for b in section.runs["bits"].unique())
    paper = ("Stars: the paper's value, where one is registered." if section.profile == PAPER_PROFILE else
             f"Paper values are not drawn: {section.scale} numbers are not comparable to them.")
    caption = (f"Left: mean top-1 over seeds, error bars ±1 SD over seeds (none where n = 1). {paper} "
               f"Right: per bit-width, the mean of the paired differences (same seed) over the seeds both arms "
               f"finished; error bars: {CONFIDENCE:.0%} confidence interval of the mean difference, Student t with "
               f"n − 1 degrees of freedom; where n = 1 the point is drawn without an interval (none can be "
               f"computed). Points at one bit-width are spread sideways so they do not hide one another. "
               f"Dataset: {section.runs['dataset'].iloc[0]}.{_not_finished(section)}")
    page = new_page(section.heading, section.subheading, caption, axes=True)
    axes = page.fig.subplots(len(section.models), 2, squeeze=False)
    for (left, right), model in zip(axes, section.models):
        _accuracy_panel(left, section, model, bits)
        if len(section.arms_of(model)) > 1:
            _difference_panel(right, section, model, bits)
        else:
            right.axis("off")
            right.text(0.5, 0.5, "one arm: nothing to compare", ha="center", va="center", fontsize=9)
    return page.fig


# ---------------------------------------------------------------------------------------- top-1 over epochs

def _finished_history(section: Section) -> pd.DataFrame:
    hist = section.histories
    return hist[hist["status"] == "finished"].dropna(subset=["val_top1"]) if not hist.empty else hist


def has_curves(section: Section) -> bool:
    return not _finished_history(section).empty


def curves_figure(section: Section) -> Figure:
    """Validation top-1 per bit-width over epochs, per arm (mean over its finished seeds)."""
    hist = _finished_history(section)
    bits = sorted(int(b) for b in hist["bits"].unique())
    caption = ("Validation top-1 after each epoch (the runs' per-epoch metric history, numbered from 0 like MLflow's "
               "steps and history.csv), mean over the arm's finished "
               "seeds, band ±1 SD where n > 1. A run reused from another experiment is drawn from the run that "
               "trained it." + _not_finished(section))
    page = new_page(section.heading, section.subheading + " · validation top-1 over epochs", caption, axes=True)
    axes = page.fig.subplots(len(section.models), len(bits), squeeze=False, sharey="row")
    for row, model in zip(axes, section.models):
        styles = arm_styles(section.arms_of(model))
        for ax, b in zip(row, bits):
            for arm in styles:
                data = hist[(hist["arm"] == arm) & (hist["bits"] == b)]
                if data.empty:
                    continue
                g = data.groupby("epoch")["val_top1"].agg(["mean", "std"])
                x = g.index.to_numpy()
                ax.plot(x, g["mean"], label=arm, markersize=4, linewidth=1.3, **styles[arm].line_kwargs())
                if g["std"].notna().any():
                    ax.fill_between(x, g["mean"] - g["std"], g["mean"] + g["std"], color=styles[arm].color, alpha=0.15)
            ax.set_title(f"{model}, {b}-bit", fontsize=9)
            ax.set_xlabel("epoch (from 0, as in MLflow)")
            ax.grid(alpha=0.3)
            ax.xaxis.get_major_locator().set_params(integer=True)
        row[0].set_ylabel("val top-1 (%)" + (f" — {section.scale}" if section.scale else ""))
        _legend(row[-1], "arm")
    return page.fig


# ---------------------------------------------------------------------------- accuracy vs BitOPs and storage

def _differs(values: pd.Series) -> bool:
    v = values.dropna()
    return len(v) > 1 and float(v.max() - v.min()) > 1e-9 * max(abs(float(v.max())), 1.0)


COST_LABELS = {"bitops": ("bitops", 1e9, "BitOPs per image (G)"),
               "storage": ("storage_mib", 1.0, "storage to serve every bit-width (MiB)")}


def cost_axes(section: Section) -> dict[str, list[str]]:
    """Per architecture, the cost axes on which its arms differ: "bitops" (at some bit-width), "storage".
    Where every arm costs the same, accuracy vs cost only repeats accuracy vs bit-width (or collapses into a
    vertical line), so it is not drawn."""
    out = {}
    present = {k: col for k, (col, *_) in COST_LABELS.items() if col in section.runs}
    for model in section.models:
        rows = section.runs[section.runs["model"] == model]
        per_arm = rows.groupby(["bits", "arm"])[list(present.values())].mean().reset_index()
        kinds = [k for k, col in present.items() if any(_differs(g[col]) for _, g in per_arm.groupby("bits"))]
        if kinds:
            out[model] = kinds
    return out


def _bit_labels(ax: Axes, points: pd.DataFrame, column: str, scale: float) -> None:
    """Each point's bit-width beside it; of two points close together at one x (one arm's storage serves every
    bit-width), the second label goes to the left, so no two labels print over each other."""
    span = max(points["top1"].max() - points["top1"].min(), 1e-9)
    for _, p in points.groupby(points[column]):
        previous, left = None, False
        for r in p.sort_values("top1").itertuples():
            left = previous is not None and r.top1 - previous < 0.04 * span and not left
            ax.annotate(str(r.bits), (getattr(r, column) / scale, r.top1), textcoords="offset points",
                        xytext=(-4, 3) if left else (4, 3), ha="right" if left else "left", fontsize=6.5)
            previous = r.top1


def cost_figure(section: Section) -> Figure:
    """Top-1 vs BitOPs and vs storage, one point per (arm, bit-width), only where the arms differ in them."""
    panels = cost_axes(section)
    caption = ("Mean top-1 over seeds against the cost measured on the trained model: BitOPs per image at each "
               "bit-width (w_bits × a_bits × MACs over the quantized layers) and the storage needed to serve every "
               "bit-width (every stored tensor at its stored precision); labels: bit-width. A cost on which all arms "
               "of an architecture agree is not drawn.")
    page = new_page(section.heading, section.subheading + " · accuracy vs cost", caption, axes=True)
    width = max(len(k) for k in panels.values())
    axes = page.fig.subplots(len(panels), width, squeeze=False)
    for row, (model, kinds) in zip(axes, panels.items()):
        rows = section.runs[section.runs["model"] == model]
        points = rows.groupby(["arm", "bits"], as_index=False)[["top1", "bitops", "storage_mib"]].mean()
        styles = arm_styles(section.arms_of(model))
        for ax, kind in zip(row, kinds):
            column, scale, label = COST_LABELS[kind]
            for arm in styles:
                p = points[points["arm"] == arm]
                ax.plot(p[column] / scale, p["top1"], label=arm, markersize=6, **styles[arm].line_kwargs())
            _bit_labels(ax, points, column, scale)
            ax.set(xlabel=label, ylabel="top-1 accuracy (%)" + (f" — {section.scale}" if section.scale else ""))
            ax.set_title(f"{model}: top-1 vs {label.split(' (')[0]}", fontsize=9)
            ax.grid(alpha=0.3)
            _legend(ax, "arm")
        for ax in row[len(kinds):]:
            ax.axis("off")
    return page.fig


# --------------------------------------------------------------------------------------- quantization error

# Every kind of the quant_error analysis (suite.analyses), in reading order: weights, inputs, outputs (raw, after
# BN), logits.
QERR_PANELS = {
    "weight": "weight switching error (same stored rows)",
    "weight_datapath": "weight switching error (same data-path position)",
    "act": "activation switching error (same input)", "drift": "accumulated drift of layer outputs",
    "bn_drift": "drift after each layer's BN (scale-invariant)", "logits": "drift of the logits"}


def has_quant_error(runs: pd.DataFrame) -> bool:
    column = QUANT_ERROR.columns[0]
    return column in runs and runs[column].notna().any()


def quant_error_figure(section: Section) -> Figure:
    """Mean relative error per layer vs the largest bit-width, per arm: what switching bit-width costs."""
    runs = section.runs
    styles = arm_styles(section.arms)
    caption = ("Relative L2 error of each quantity at a bit-width against the same quantity at the largest "
               "bit-width, averaged over layers; mean over seeds, error bars ±1 SD where n > 1. Measured on each "
               "run's best checkpoint and the first validation batch. MBQuant's errors cover the branches both "
               "bit-widths run; its clean variant's weight error is 0 by construction. Weights are paired by stored "
               "row, or by the output position they feed (as every other panel pairs them); the drift after BN "
               "ignores any scale the per-bit BN absorbs (suite.quant_error).")
    page = new_page(section.heading, section.subheading + " · quantization error when switching bit-width",
                    caption, axes=True)
    axes = page.fig.subplots(3, 2).ravel()
    for i, (ax, (kind, title)) in enumerate(zip(axes, QERR_PANELS.items())):
        column = QUANT_ERROR.prefix + kind
        data = runs.dropna(subset=[column])
        bits = sorted(int(b) for b in data["bits"].unique())
        for arm in section.arms:
            g = data[data["arm"] == arm].groupby("bits")[column].agg(["mean", "std"])
            if not g.empty:
                _errorbars(ax, g.index.to_numpy(), g["mean"], g["mean"] - g["std"], g["mean"] + g["std"],
                           styles[arm], arm)
        if bits:
            _bit_axis(ax, bits)
        ax.set_title(title, fontsize=9)
        if i % 2 == 0:  # one label per row: three rows leave no height for a label per panel
            ax.set_ylabel("relative L2 error" + (f"\n({section.scale})" if section.scale else ""), fontsize=9)
    _legend(axes[1], "arm")
    return page.fig

