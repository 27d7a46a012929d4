"""The PDF report: ``build_report(results_dir, out_pdf, references=None) -> pages`` reads any MLflow tracking store
and writes a PDF a reviewer can check the reproduction with, logged back to the store as a "report" run.

Pages: a front page (one row per experiment and profile: paper reference, the claim it checks, runs finished /
failed / missing, the largest difference to the paper and a verdict); per (manifest, profile) the accuracy
comparison (top-1 vs bit-width with the paper's values, the reference arm minus each other arm with 95 %
intervals), validation top-1 over epochs, accuracy vs cost where the arms differ in cost, the quantization-error
analysis, and the tables; the cost analyses; the pipeline checks (no accuracy comparison); an appendix with each
invocation's environment, resolved manifest and reproducing command.

Any profile other than "paper" is labelled "<profile>-scale" on every page it touches: those runs are shortened
and their numbers must never be read as a reproduction of the paper. Published numbers come only from the
reference registry; a missing one reads "not transcribed". Modules: ``stats`` (numbers and verdicts),
``sections`` (what each (manifest, profile) holds), ``figures`` and ``pages`` (what is drawn), ``layout``.
"""
from __future__ import annotations

import os
import re
from pathlib import Path

import matplotlib
import pandas as pd
import torch
from matplotlib.backends.backend_pdf import PdfPages

from suite.collect import collect
from suite.references import REGISTRY, reference_for_report
from suite.report.figures import (accuracy_figure, cost_axes, cost_figure, curves_figure, has_curves, has_quant_error,
                                  quant_error_figure)
from suite.report.layout import SUITE_NAME, stamp
from suite.report.pages import (PageSpec, cost_pages, environment_pages, front_pages, manifest_pages, pipeline_pages,
                                section_table_pages)
from suite.report.sections import Section, build_sections
from suite.report.stats import (DASH, NOT_TRANSCRIBED, REQUIRED_COLUMNS, check_runs, format_summary,
                                paired_differences, section_verdict, summary_table)
from suite.tracking import TAG_KIND, Tracker, git_state, tracking_uri

REPORT_EXPERIMENT = "reports"
# What tests and notebooks use; build_report is the entry point (python -m suite report).
__all__ = ["DASH", "NOT_TRANSCRIBED", "REQUIRED_COLUMNS", "SUITE_NAME", "PdfPages", "Section", "accuracy_figure",
           "build_report", "build_sections", "cost_figure", "count_pdf_pages", "curves_figure", "format_summary",
           "front_pages", "paired_differences", "quant_error_figure", "section_verdict", "summary_table",
           "write_report"]


def _png_name(manifest: str, profile: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", f"{manifest}__{profile}") + ".png"


def _save_png(fig, figures_dir: Path, name: str) -> Path:
    figures_dir.mkdir(parents=True, exist_ok=True)
    path = figures_dir / name
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        fig.savefig(tmp, format="png", dpi=150)
        os.replace(tmp, path)  # a reader never sees half a PNG
    finally:
        tmp.unlink(missing_ok=True)
    return path


def _figure_page(draw, section: Section, suffix: str) -> PageSpec:
    return PageSpec(lambda: draw(section), section.scale, _png_name(section.manifest, section.profile + suffix))


def _train_pages(section: Section) -> list[PageSpec]:
    """A training section: accuracy, curves, accuracy vs cost, quantization error (each where it has data), tables."""
    pages = []
    if not section.runs.empty:
        pages.append(_figure_page(accuracy_figure, section, ""))
        if has_curves(section):
            pages.append(_figure_page(curves_figure, section, "__curves"))
        if cost_axes(section):
            pages.append(_figure_page(cost_figure, section, "__costs"))
        if has_quant_error(section.runs):
            pages.append(_figure_page(quant_error_figure, section, "__quant_error"))
    return pages + section_table_pages(section)


def plan_pages(sections: list[Section], header: dict[str, str]) -> list[PageSpec]:
    """Every page in order: front, each section (pipeline checks together after the others), appendix."""
    pages = front_pages(sections, header)
    for s in sections:
        if s.kind == "train":
            pages += _train_pages(s)
        elif s.kind == "costs":
            pages += cost_pages(s)
    pages += pipeline_pages([s for s in sections if s.kind == "pipeline"])
    return pages + environment_pages(sections) + manifest_pages(sections)


def write_report(
    runs: pd.DataFrame,
    out_pdf: Path,
    reference: pd.DataFrame | None = None,
    figures_dir: Path | None = None,
    header: dict[str, str] | None = None,
    *,
    source: str | None = None,
    costs: pd.DataFrame | None = None,
    children: pd.DataFrame | None = None,
    invocations: pd.DataFrame | None = None,
    histories: pd.DataFrame | None = None,
) -> int:
    """Write the PDF report and return its page count; PNG copies of the figures go to ``figures_dir`` if given.

    ``runs`` is the finished runs table (suite.collect.load_runs); the keyword tables (suite.collect) add what
    only the store knows: costs, every run of any status, the newest invocations (plan, claim, command,
    environment, resolved manifest) and per-epoch histories. The PDF is rendered to a temporary file beside
    ``out_pdf`` and moved into place, so a crash never leaves a half-written report. ``source`` (e.g. the
    tracking URI) names where the runs came from in the error raised when there is nothing to report.
    """
    runs = pd.DataFrame(columns=REQUIRED_COLUMNS) if runs is None else runs
    if not runs.empty or all(f is None or f.empty for f in (costs, children)):
        check_runs(runs, source)  # raises on nothing to report, missing columns, a seed counted twice
    sections = build_sections(runs, reference, costs=costs, children=children, invocations=invocations,
                              histories=histories)
    return _render(plan_pages(sections, header or {}), Path(out_pdf), figures_dir)[0]


def _render(pages: list[PageSpec], out_pdf: Path, figures_dir: Path | None) -> tuple[int, list[Path]]:
    """Draw every page into the PDF (atomically) and the figures' PNGs; returns (page count, PNG paths)."""
    out_pdf.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_pdf.with_name(f".{out_pdf.name}.{os.getpid()}.tmp")
    pngs = []
    try:
        # TrueType fonts (not Type 3) keep the PDF's text extractable and searchable.
        with matplotlib.rc_context({"pdf.fonttype": 42}), PdfPages(tmp, metadata={
                "Title": f"{SUITE_NAME} report", "Creator": SUITE_NAME}) as pdf:
            for number, spec in enumerate(pages, start=1):
                fig = spec.draw()
                if figures_dir is not None and spec.png:
                    pngs.append(_save_png(fig, Path(figures_dir), spec.png))  # before the footer: stands alone
                stamp(fig, spec.scale, number, len(pages))
                pdf.savefig(fig)
            count = pdf.get_pagecount()
        os.replace(tmp, out_pdf)
    finally:
        tmp.unlink(missing_ok=True)
    return count, pngs


# A page object is "/Type /Page"; the page tree root is "/Type /Pages", which the look-ahead excludes.
_PAGE_OBJECT = re.compile(rb"/Type\s*/Page(?![A-Za-z])")


def count_pdf_pages(path: Path) -> int:
    """Pages of a PDF by counting its page objects; exact for matplotlib's output (no object streams)."""
    return len(_PAGE_OBJECT.findall(Path(path).read_bytes()))


# ------------------------------------------------------------------------------------------- entry point

def _log_report(results_dir: Path, out_pdf: Path, figures: list[Path], pages: int) -> str:
    """The PDF and its figures as artifacts of a run in the "reports" experiment, beside the runs it reports."""
    tracker = Tracker(results_dir)
    experiment = tracker.experiment_id(REPORT_EXPERIMENT)
    run = tracker.client.create_run(experiment, run_name=f"report {out_pdf.name}", tags={
        TAG_KIND: "report", "suite.report.pages": str(pages), "suite.report.path": str(Path(out_pdf).resolve()),
        **git_state(Path(__file__).parent)})
    run_id = run.info.run_id
    with tracker.running(run_id):
        tracker.log_artifact(run_id, out_pdf)
        for png in figures:
            tracker.log_artifact(run_id, png, "figures")
    return run_id


def build_report(results_dir: Path, out_pdf: Path, references: Path | None = None) -> int:
    """Collect the tracked runs, write the PDF (figures as PNGs beside it) and log both to the store's
    "reports" experiment; returns the page count."""
    uri = tracking_uri(results_dir)
    store = collect(results_dir)
    if store.runs.empty and store.costs.empty and store.children.empty:
        check_runs(store.runs, uri)  # raises: nothing to report
    references = Path(references or REGISTRY)
    header = {"tracking URI": uri, **git_state(Path(__file__).parent), "torch": torch.__version__,
              "reference numbers": str(references) if references.exists() else f"{references} (absent)"}
    sections = build_sections(store.runs, reference_for_report(references), costs=store.costs,
                              children=store.children, invocations=store.invocations, histories=store.histories)
    pages, pngs = _render(plan_pages(sections, header), Path(out_pdf), Path(out_pdf).parent / "figures")
    _log_report(results_dir, Path(out_pdf), pngs, pages)
    return pages
