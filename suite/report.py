"""PDF report of finished runs: an accuracy-vs-bit-width figure and a summary table per manifest and profile.

The caller queries the tracking store and passes a DataFrame with one row per (finished run, evaluated
bit-width); this module only aggregates and draws, so it needs no mlflow and is easy to test.

Any profile other than "paper" is labelled "<profile>-scale" (e.g. "smoke-scale") on every page it touches:
those runs are shortened for speed and their numbers must never be read as a reproduction of the paper.
Published numbers come only from the optional ``reference`` frame; a missing one reads "not transcribed".
"""
from __future__ import annotations

import os
import re
import textwrap
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd
import seaborn as sns
import torch
from matplotlib.backends.backend_pdf import PdfPages
from matplotlib.figure import Figure

from suite.plots import new_figure
from suite.records import PAPER_PROFILE, RUN_COLUMNS, scale_label
from suite.references import REGISTRY, reference_for_report
from suite.collect import load_costs, load_runs
from suite.tracking import git_state, tracking_uri

SUITE_NAME = "MBQuant reproducibility suite"
PAPER_CITATION = "MBQuant, Zhong et al., arXiv:2305.08117"
NOT_TRANSCRIBED = "not transcribed"
DASH = "–"

REQUIRED_COLUMNS = RUN_COLUMNS[:RUN_COLUMNS.index("run_id") + 1]  # what a runs table must have to be reported
REFERENCE_COLUMNS = ("manifest", "arm", "bits", "top1", "source")
KEYS = ["manifest", "profile", "arm", "bits"]

PAGE_SIZE = (11.69, 8.27)  # A4 landscape, inches: title and table pages
FIGURE_SIZE = (9.0, 5.5)  # accuracy figure, same in the PDF and the PNG
TABLE_ROWS_PER_PAGE = 22  # fits A4 landscape at 9 pt with a title and footnotes


# ---------------------------------------------------------------------------------------------- input checks

def _check_runs(runs: pd.DataFrame | None, source: str | None = None) -> None:
    """Fail before anything is written: empty input, missing columns, or one seed counted twice."""
    if runs is None or runs.empty:
        raise ValueError(f"no finished runs found in {source or 'the runs table'}; nothing to report")
    missing = [c for c in REQUIRED_COLUMNS if c not in runs.columns]
    if missing:
        raise ValueError(f"runs table lacks columns {missing}")
    # Two finished runs of the same seed would be double-counted in the mean and the SD; the caller must pick one.
    dup = runs.duplicated(KEYS + ["seed"], keep=False)
    if dup.any():
        rows = runs.loc[dup, KEYS + ["seed", "run_id"]].to_string(index=False)
        raise ValueError(f"several runs for the same (manifest, profile, arm, bits, seed); keep one each:\n{rows}")


def _reference_frame(reference: pd.DataFrame | None) -> pd.DataFrame | None:
    """Published numbers keyed by (manifest, arm, bits), or None when nothing is transcribed."""
    if reference is None or reference.empty:
        return None
    missing = [c for c in REFERENCE_COLUMNS if c not in reference.columns]
    if missing:
        raise ValueError(f"reference table lacks columns {missing}")
    ref = reference.loc[:, list(REFERENCE_COLUMNS)].rename(columns={"top1": "paper_top1", "source": "paper_source"})
    ref["bits"] = ref["bits"].astype(int)  # a CSV may hand bits back as floats
    dup = ref.duplicated(["manifest", "arm", "bits"], keep=False)
    if dup.any():
        raise ValueError(f"reference lists some (manifest, arm, bits) twice:\n{ref[dup].to_string(index=False)}")
    return ref


# ------------------------------------------------------------------------------------------------- the table

def summary_table(runs: pd.DataFrame, reference: pd.DataFrame | None = None) -> pd.DataFrame:
    """Per (manifest, profile, arm, bits): n seeds, mean and SD of top-1, mean top-5, and the paper's top-1.

    Numbers stay numeric (NaN where undefined: SD of one seed, no paper value); ``format_summary`` turns them
    into the strings shown in the report. ``paper_source`` is the reference's source or "not transcribed".
    ``diff_top1`` (ours minus paper) is only filled for the paper profile: a smoke-scale difference means nothing.
    """
    table = (
        runs.groupby(KEYS, sort=True)
        .agg(
            n_seeds=("seed", "nunique"),
            top1_mean=("top1", "mean"),
            top1_std=("top1", "std"),  # ddof=1, the same SD seaborn draws with errorbar="sd"
            top5_mean=("top5", "mean"),
        )
        .reset_index()
    )
    # Rows of one architecture together (a section may hold several), arms alphabetical within it.
    table = table.merge(runs.groupby(["manifest", "arm"], as_index=False)["model"].first(), on=["manifest", "arm"])
    table = table.sort_values(["manifest", "profile", "model", "arm", "bits"], ignore_index=True)
    ref = _reference_frame(reference)
    if ref is None:
        table["paper_top1"] = np.nan
        table["paper_source"] = NOT_TRANSCRIBED
    else:
        table = table.merge(ref, on=["manifest", "arm", "bits"], how="left")
        table["paper_top1"] = table["paper_top1"].astype(float)
        table["paper_source"] = table["paper_source"].where(table["paper_top1"].notna(), NOT_TRANSCRIBED)
    is_paper = table["profile"] == PAPER_PROFILE
    table["diff_top1"] = (table["top1_mean"] - table["paper_top1"]).where(is_paper)
    # Verdict against the manifest's tolerance (top-1 points), only where a paper-protocol run meets a paper value.
    tolerance = runs.groupby(["manifest", "profile"])["tolerance"].first() if "tolerance" in runs else None
    table["verdict"] = [
        DASH if pd.isna(r.diff_top1) else
        "no tolerance" if tolerance is None or pd.isna(tolerance[r.manifest, r.profile]) else
        "agrees" if abs(r.diff_top1) <= tolerance[r.manifest, r.profile] else "differs"
        for r in table.itertuples()
    ]
    return table


def _fmt(value: float, fmt: str = ".2f") -> str:
    return DASH if pd.isna(value) else format(value, fmt)


def format_summary(table: pd.DataFrame) -> pd.DataFrame:
    """Display strings for rows of ``summary_table``: "–" for an undefined SD, "not transcribed" for no paper value."""
    def diff(row) -> str:
        if pd.isna(row.paper_top1):
            return DASH
        if row.profile != PAPER_PROFILE:
            return f"n/a ({scale_label(row.profile)})"
        return _fmt(row.diff_top1, "+.2f")

    return pd.DataFrame({
        "arm": table["arm"].astype(str),
        "bits": table["bits"].astype(str),
        "n seeds": table["n_seeds"].astype(str),
        "top-1 mean (%)": table["top1_mean"].map(_fmt),
        "top-1 SD": table["top1_std"].map(_fmt),
        "top-5 mean (%)": table["top5_mean"].map(_fmt),
        "paper top-1 (%)": [NOT_TRANSCRIBED if pd.isna(v) else _fmt(v) for v in table["paper_top1"]],
        "ours − paper": [diff(r) for r in table.itertuples()],
        "verdict": table["verdict"].astype(str),
    }).reset_index(drop=True)


# ------------------------------------------------------------------------------------------------ the figure

def _one(runs: pd.DataFrame, column: str):
    values = runs[column].unique()
    if len(values) != 1:
        raise ValueError(f"expected runs of one {column}, got {sorted(map(str, values))}")
    return values[0]


def _section_heading(runs: pd.DataFrame) -> str:
    """'<title>' on one line, '<manifest> v<version> — <profile> profile[, smoke-scale, ...]' on the next."""
    manifest, profile = _one(runs, "manifest"), _one(runs, "profile")
    versions = ", ".join(f"v{v}" for v in sorted(runs["manifest_version"].unique()))
    label = scale_label(profile)
    scale = f", {label}, not comparable to the paper" if label else ""
    return f"{runs['title'].iloc[0]}\n{manifest} {versions} — {profile} profile{scale}"


def _paper_note(runs: pd.DataFrame) -> str:
    ref = runs["paper_ref"].iloc[0]
    verified = bool(runs["paper_verified"].all())
    return f"Paper: {ref}" + ("" if verified else " (mapping to the paper not yet verified)")


def _model_panels(fig: Figure, data: pd.DataFrame):
    """One panel per model (architecture) of a section, sharing the accuracy axis: (axes, the model's rows)."""
    models = sorted(data["model"].unique())
    axes = fig.subplots(1, len(models), sharey=True, squeeze=False)[0]
    return [(ax, data[data["model"] == model]) for ax, model in zip(axes, models)]


def _panel_titles(fig: Figure, runs: pd.DataFrame, suffix: str = "") -> None:
    """The section heading on the only panel, or above several panels each titled with its model."""
    heading = _section_heading(runs) + suffix
    if len(fig.axes) == 1:
        fig.axes[0].set_title(heading, fontsize=10, wrap=True)
        return
    fig.suptitle(heading, fontsize=10, y=0.955)  # below the page's scale stamp
    for ax, model in zip(fig.axes, sorted(runs["model"].unique())):
        ax.set_title(model, fontsize=9)


def accuracy_figure(runs: pd.DataFrame) -> Figure:
    """Top-1 vs bit-width for one manifest and one profile: one line per arm, mean ± SD over seeds."""
    if runs.empty:
        raise ValueError("no runs to plot")
    profile = _one(runs, "profile")
    _one(runs, "manifest")  # arms of different experiments must never share one set of axes
    label = scale_label(profile)

    # n seeds per arm goes into the legend; a range when some bit-widths have fewer evaluated seeds.
    n = runs.groupby(["arm", "bits"])["seed"].nunique().groupby(level="arm").agg(["min", "max"])
    legend = {arm: f"{arm} (n={lo})" if lo == hi else f"{arm} (n={lo}–{hi})" for arm, (lo, hi) in n.iterrows()}
    data = runs.assign(arm_label=runs["arm"].map(legend))

    bits = sorted(int(b) for b in runs["bits"].unique())
    fig = new_figure(FIGURE_SIZE)
    for ax, panel in _model_panels(fig, data):
        arms = sorted(panel["arm"].unique())
        sns.lineplot(
            data=panel, x="bits", y="top1", hue="arm_label", hue_order=[legend[a] for a in arms],
            marker="o", errorbar="sd", err_style="bars", err_kws={"capsize": 4}, ax=ax,
        )
        ax.set_xticks(bits, [str(b) for b in bits])  # ticks only at the evaluated bit-widths
        ax.set_xlabel("bit-width")
        ax.set_ylabel("top-1 accuracy (%)" + (f" — {label}" if label else ""))
        ax.legend(title="arm (n seeds)", fontsize=8, title_fontsize=8)
        ax.grid(alpha=0.3)
    _panel_titles(fig, runs)
    caption = (f"Mean over seeds; error bars ±1 SD over seeds (none where n=1). {_paper_note(runs)}. "
               f"{runs['dataset'].iloc[0]} / {', '.join(sorted(runs['model'].unique()))}.")
    if label:
        caption += f" {label.capitalize()} numbers: not comparable to the paper."
    # Bottom-anchored so a wrapped caption grows upwards, clear of the page footer added later.
    fig.text(0.01, 0.035, caption, fontsize=7.5, va="bottom", wrap=True)
    fig.subplots_adjust(left=0.09, right=0.97, top=0.88, bottom=0.2)
    return fig


def has_storage(runs: pd.DataFrame) -> bool:
    return "storage_mib" in runs and runs["storage_mib"].notna().any()


def storage_figure(runs: pd.DataFrame) -> Figure:
    """Top-1 vs the storage needed to serve every bit-width, one point per (arm, bit-width), for one section."""
    profile = _one(runs, "profile")
    _one(runs, "manifest")
    label = scale_label(profile)
    points = runs.groupby(["arm", "bits"], as_index=False).agg(top1=("top1", "mean"), storage_mib=("storage_mib", "mean"))
    points = points.merge(runs.groupby("arm", as_index=False)["model"].first(), on="arm")
    fig = new_figure(FIGURE_SIZE)
    for ax, panel in _model_panels(fig, points):
        sns.scatterplot(data=panel, x="storage_mib", y="top1", hue="arm", style="arm", s=70, ax=ax)
        for r in panel.itertuples():
            ax.annotate(f"{r.bits}", (r.storage_mib, r.top1), textcoords="offset points", xytext=(5, 3), fontsize=7)
        ax.set_xlabel("storage to serve all bit-widths (MiB)")
        ax.set_ylabel("top-1 accuracy (%)" + (f" — {label}" if label else ""))
        ax.grid(alpha=0.3)
        ax.legend(title="arm", fontsize=8, title_fontsize=8)
    _panel_titles(fig, runs, "\naccuracy vs storage (labels: bit-width)")
    fig.text(0.01, 0.035, "Storage counts every stored tensor at its stored precision (quantized weights at their "
             "stored bits, BN / bounds / FP layers at 32 bits); one storage value per arm, whatever the bit-width.",
             fontsize=7.5, va="bottom", wrap=True)
    fig.subplots_adjust(left=0.09, right=0.97, top=0.86, bottom=0.2)
    return fig


QERR_PANELS = {"qerr_weight": "weight switching error", "qerr_act": "activation switching error (same input)",
               "qerr_drift": "accumulated drift of layer outputs", "qerr_logits": "drift of the logits"}


def has_quant_error(runs: pd.DataFrame) -> bool:
    return "qerr_weight" in runs and runs["qerr_weight"].notna().any()


def quant_error_figure(runs: pd.DataFrame) -> Figure:
    """Mean relative error per layer vs the largest bit-width, per arm: what switching bit-width costs."""
    label = scale_label(_one(runs, "profile"))
    fig = new_figure(PAGE_SIZE)
    axes = fig.subplots(2, 2).ravel()
    for ax, (column, title) in zip(axes, QERR_PANELS.items()):
        data = runs.dropna(subset=[column])
        sns.lineplot(data=data, x="bits", y=column, hue="arm", marker="o", errorbar="sd", ax=ax,
                     legend=ax is axes[0])
        ax.set_xticks(sorted(data["bits"].unique()) if not data.empty else [])
        ax.set(title=title, xlabel="bit-width (compared with the largest)", ylabel="relative L2 error")
        ax.grid(alpha=0.3)
    fig.suptitle(_section_heading(runs) + "\nquantization error when switching bit-width" +
                 (f" — {label}" if label else ""), fontsize=10)
    fig.subplots_adjust(left=0.07, right=0.98, top=0.86, bottom=0.08, hspace=0.35, wspace=0.2)
    return fig


def _png_name(manifest: str, profile: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", f"{manifest}__{profile}") + ".png"


def _save_png(fig: Figure, figures_dir: Path, manifest: str, profile: str) -> Path:
    figures_dir.mkdir(parents=True, exist_ok=True)
    path = figures_dir / _png_name(manifest, profile)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        fig.savefig(tmp, format="png", dpi=150)
        os.replace(tmp, path)  # a reader never sees half a PNG
    finally:
        tmp.unlink(missing_ok=True)
    return path


def _sections(runs: pd.DataFrame) -> list[tuple[str, str, pd.DataFrame]]:
    """(manifest, profile, rows) in report order: by manifest, the paper profile before the others."""
    keys = runs[["manifest", "profile"]].drop_duplicates()
    order = sorted(keys.itertuples(index=False), key=lambda k: (k.manifest, k.profile != PAPER_PROFILE, k.profile))
    return [(m, p, runs[(runs["manifest"] == m) & (runs["profile"] == p)]) for m, p in order]


def save_figures(runs: pd.DataFrame, figures_dir: Path) -> list[Path]:
    """Write one accuracy PNG per (manifest, profile) into ``figures_dir``; returns their paths in report order."""
    _check_runs(runs)
    return [_save_png(accuracy_figure(rows), Path(figures_dir), m, p) for m, p, rows in _sections(runs)]


# ------------------------------------------------------------------------------------------------ the report

def _stamp(fig: Figure, profile: str | None, page: int, total: int) -> None:
    """Footer with the page number; a red "<profile>-scale" banner on every page of a non-paper profile."""
    fig.text(0.99, 0.005, f"{SUITE_NAME} · page {page} of {total}", ha="right", va="bottom", fontsize=7,
             color="0.4")
    label = scale_label(profile) if profile is not None else ""
    if label:
        fig.text(0.99, 0.995, f"{label}: not comparable to the paper", ha="right", va="top",
                 fontsize=9, color="tab:red", weight="bold")


def _title_page(runs: pd.DataFrame, summary: pd.DataFrame, header: dict[str, str]) -> Figure:
    fig = new_figure(PAGE_SIZE)
    lines = [
        (SUITE_NAME, 22, "bold"),
        (f"Report of finished runs — {PAPER_CITATION}", 12, "normal"),
        (f"Generated {datetime.now(timezone.utc).isoformat(timespec='seconds')}", 10, "normal"),
        ("", 6, "normal"),
    ]
    lines += [(f"{key}: {value}", 9, "normal") for key, value in header.items()]
    lines.append(("", 6, "normal"))

    profiles = sorted(runs["profile"].unique(), key=lambda p: (p != PAPER_PROFILE, p))
    lines.append(("Profiles present: " + ", ".join(profiles), 11, "bold"))
    for p in profiles:
        rows = runs[runs["profile"] == p]
        what = ("full paper schedule; compare with the cited paper tables" if p == PAPER_PROFILE
                else f"{scale_label(p)} numbers: shortened runs, NOT comparable to the paper")
        lines.append((f"  {p}: {rows['manifest'].nunique()} manifest(s), {rows['run_id'].nunique()} run(s) — {what}",
                      10, "normal"))
    lines.append(("Any profile other than \"paper\" is a smoke-scale check that the pipeline runs; its accuracies "
                  "say nothing about the paper's numbers, and every page of such a profile is labelled so.",
                  9, "normal"))
    transcribed = int(summary["paper_top1"].notna().sum())
    lines.append((f"Paper values transcribed for {transcribed} of {len(summary)} table rows; the others read "
                  f"\"{NOT_TRANSCRIBED}\". No paper number is ever estimated.", 9, "normal"))

    y = 0.93
    for text, size, weight in lines:
        # Wrap by hand (not wrap=True) so the next line knows how far down to start.
        text = textwrap.fill(text, width=int(1200 / size), subsequent_indent="    ") if text else ""
        fig.text(0.06, y, text, fontsize=size, weight=weight, va="top")
        y -= (text.count("\n") + 1) * size / 330 + 0.012  # line height roughly proportional to the font size
    return fig


def _table_page(rows: pd.DataFrame, heading: str, note: str, part: str) -> Figure:
    fig = new_figure(PAGE_SIZE)
    fig.text(0.04, 0.95, heading + part, fontsize=11, weight="bold", va="top", wrap=True)
    cells = format_summary(rows)
    ax = fig.add_axes((0.04, 0.08, 0.92, 0.80))
    ax.axis("off")
    n = len(cells.columns)  # the arm column is the widest: arm names are free text
    table = ax.table(cellText=cells.values, colLabels=list(cells.columns), loc="upper center", cellLoc="center",
                     colWidths=[0.2] + [0.8 / (n - 1)] * (n - 1))
    table.auto_set_font_size(False)
    table.set_fontsize(9)
    table.scale(1, 1.35)
    sources = sorted(set(rows["paper_source"]) - {NOT_TRANSCRIBED})
    note += ". SD over seeds (ddof=1); \"–\" where undefined."
    if sources:
        note += " Paper values from: " + "; ".join(map(str, sources)) + "."
    fig.text(0.04, 0.04, note, fontsize=8, wrap=True)
    return fig


def cost_table_page(costs: pd.DataFrame) -> Figure:
    """Storage and BitOPs of every arm of one ``task: costs`` manifest (measured, not trained: no scale label)."""
    storage = costs.drop_duplicates("arm").set_index("arm")[["method", "model", "storage_mib"]]
    bitops = costs.pivot(index="arm", columns="bits", values="bitops") / 1e9
    table = storage.join(bitops.rename(columns=lambda b: f"{b}-bit GBitOPs")).reset_index()
    cells = [[str(v) if not isinstance(v, float) else f"{v:.3f}" for v in row] for row in table.itertuples(index=False)]
    fig = new_figure(PAGE_SIZE)
    fig.text(0.04, 0.95, f"{costs['title'].iloc[0]}\n{costs['manifest'].iloc[0]} — {_paper_note(costs)}",
             fontsize=11, weight="bold", va="top")
    ax = fig.add_axes((0.04, 0.08, 0.92, 0.78))
    ax.axis("off")
    t = ax.table(cellText=cells, colLabels=["arm", "method", "model", "storage (MiB)", *bitops.columns.map(
        lambda b: f"{b}-bit GBitOPs")], loc="upper center", cellLoc="center")
    t.auto_set_font_size(False)
    t.set_fontsize(9)
    t.scale(1, 1.35)
    fig.text(0.04, 0.04, "Storage: every tensor needed to serve all listed bit-widths at its stored precision. "
             "BitOPs per image: w_bits x a_bits x MACs over quantized layers; full-precision stem and classifier "
             "are excluded here (32x32 per MAC, the same for every method). Measured from the models, not trained.",
             fontsize=8, wrap=True)
    return fig


def write_report(
    runs: pd.DataFrame,
    out_pdf: Path,
    reference: pd.DataFrame | None = None,
    figures_dir: Path | None = None,
    header: dict[str, str] | None = None,
    *,
    source: str | None = None,
    costs: pd.DataFrame | None = None,
) -> int:
    """Write the PDF report and return its page count; PNG copies of the figures go to ``figures_dir`` if given.

    Layout: a title page, then per (manifest, profile) the accuracy figure and the summary table (split over
    pages when long). The PDF is rendered to a temporary file beside ``out_pdf`` and moved into place, so a
    crash never leaves a half-written report. ``source`` (e.g. the tracking URI) only names where the runs came
    from in the error raised for an empty ``runs``.
    """
    has_costs = costs is not None and not costs.empty
    if has_costs and (runs is None or runs.empty):  # a cost analysis alone still makes a report
        runs = pd.DataFrame(columns=REQUIRED_COLUMNS)
    else:
        _check_runs(runs, source)
    out_pdf = Path(out_pdf)
    summary = summary_table(runs, reference)
    sections = _sections(runs)
    cost_sections = [(m, costs[costs["manifest"] == m]) for m in sorted(costs["manifest"].unique())] if has_costs else []

    # Plan the pages first so every footer can say "page i of N".
    chunks = {}
    for m, p, _ in sections:
        rows = summary[(summary["manifest"] == m) & (summary["profile"] == p)]
        chunks[m, p] = [rows.iloc[i:i + TABLE_ROWS_PER_PAGE] for i in range(0, len(rows), TABLE_ROWS_PER_PAGE)]
    storage_pages = {(m, p): has_storage(rows) for m, p, rows in sections}
    qerr_pages = {(m, p): has_quant_error(rows) for m, p, rows in sections}
    total = 1 + sum(1 + storage_pages[k] + qerr_pages[k] + len(c) for k, c in chunks.items()) + len(cost_sections)

    out_pdf.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_pdf.with_name(f".{out_pdf.name}.{os.getpid()}.tmp")
    try:
        with PdfPages(tmp, metadata={"Title": f"{SUITE_NAME} report", "Creator": SUITE_NAME}) as pdf:
            page = 1
            fig = _title_page(runs, summary, header or {})
            _stamp(fig, None, page, total)
            pdf.savefig(fig)
            for m, p, rows in sections:
                # Figure pages of the section: (figure, PNG suffix); optional ones only where the data exists.
                figures = [(accuracy_figure, "")]
                figures += [(storage_figure, "__storage")] if storage_pages[m, p] else []
                figures += [(quant_error_figure, "__quant_error")] if qerr_pages[m, p] else []
                for draw, suffix in figures:
                    fig = draw(rows)
                    if figures_dir is not None:
                        _save_png(fig, Path(figures_dir), m, p + suffix)  # before the footer: the PNG stands alone
                    page += 1
                    _stamp(fig, p, page, total)
                    pdf.savefig(fig)
                heading, note = _section_heading(rows), _paper_note(rows)
                if "setup" in rows:  # what the numbers were measured on: data, model, recipe of this profile
                    note += ". Setup: " + "; ".join(sorted(rows["setup"].dropna().unique()))
                for i, chunk in enumerate(chunks[m, p], start=1):
                    part = f" — table, part {i} of {len(chunks[m, p])}" if len(chunks[m, p]) > 1 else " — table"
                    fig = _table_page(chunk, heading, note, part)
                    page += 1
                    _stamp(fig, p, page, total)
                    pdf.savefig(fig)
            for m, rows in cost_sections:
                fig = cost_table_page(rows)
                page += 1
                _stamp(fig, None, page, total)
                pdf.savefig(fig)
            pages = pdf.get_pagecount()
        os.replace(tmp, out_pdf)
    finally:
        tmp.unlink(missing_ok=True)
    return pages


# A page object is "/Type /Page"; the page tree root is "/Type /Pages", which the look-ahead excludes.
_PAGE_OBJECT = re.compile(rb"/Type\s*/Page(?![A-Za-z])")


def count_pdf_pages(path: Path) -> int:
    """Pages of a PDF by counting its page objects; exact for matplotlib's output (no object streams)."""
    return len(_PAGE_OBJECT.findall(Path(path).read_bytes()))


# ------------------------------------------------------------------------------------------- entry point

def build_report(results_dir: Path, out_pdf: Path, references: Path | None = None) -> int:
    """Collect the finished runs from the tracking store and write the PDF (figures as PNGs beside it)."""
    uri = tracking_uri(results_dir)
    runs, costs = load_runs(results_dir), load_costs(results_dir)
    references = Path(references or REGISTRY)
    header = {"tracking URI": uri, **git_state(Path(__file__).parent), "torch": torch.__version__,
              "reference numbers": str(references) if references.exists() else f"{references} (absent)"}
    return write_report(runs, out_pdf, reference=reference_for_report(references),
                        figures_dir=Path(out_pdf).parent / "figures", header=header, source=uri, costs=costs)
