"""Tests of suite.report on synthetic runs (the numbers are fake, chosen so the means and SDs are easy to check)."""
from __future__ import annotations

import itertools
import math

import matplotlib.text
import pandas as pd
import pytest

from helpers import EXPERIMENTS
from suite import report
from suite.manifest import load_manifest

BITS = (2, 4, 6, 8)
SEEDS = (0, 1, 2)
ARMS = ("baseline", "mbquant")
# Three sections in report order: manifest A at paper then smoke scale, manifest B at smoke scale only.
SECTIONS = (("fake_a_2468", "paper"), ("fake_a_2468", "smoke"), ("fake_b_2468", "smoke"))


def fake_top1(arm: str, seed: int, bits: int) -> float:
    # seeds 0, 1, 2 add 0, 0.5, 1.0: every cell has mean = base + 0.5 and SD = 0.5 exactly
    return 50.0 + bits + (2.0 if arm == "mbquant" else 0.0) + 0.5 * seed


def make_runs(sections=SECTIONS, arms=ARMS, seeds=SEEDS, bits=BITS) -> pd.DataFrame:
    rows = []
    for (manifest, profile), arm, seed in itertools.product(sections, arms, seeds):
        run_id = f"{manifest}-{profile}-{arm}-{seed}"
        for b in bits:
            rows.append(dict(
                manifest=manifest, manifest_version=1, title=f"Fake experiment {manifest}", paper_ref="Table 3",
                paper_verified=False, profile=profile, arm=arm, method=arm, seed=seed, bits=b,
                top1=fake_top1(arm, seed, b), top5=90.0 + b + seed, dataset="fakeset", model="fakenet",
                run_id=run_id,
            ))
    return pd.DataFrame(rows)


def cell(table: pd.DataFrame, manifest: str, profile: str, arm: str, bits: int) -> pd.Series:
    sel = table[(table.manifest == manifest) & (table.profile == profile) & (table.arm == arm) & (table.bits == bits)]
    assert len(sel) == 1
    return sel.iloc[0]


REFERENCE = pd.DataFrame(dict(manifest=["fake_a_2468"], arm=["mbquant"], bits=[4], top1=[55.0], source=["fake Table 3"]))


# ----------------------------------------------------------------------------------------------- summary table

def test_summary_table_hand_checked_cell():
    table = report.summary_table(make_runs())
    assert len(table) == len(SECTIONS) * len(ARMS) * len(BITS)
    row = cell(table, "fake_a_2468", "paper", "mbquant", 4)
    # top-1 of seeds 0, 1, 2: 56.0, 56.5, 57.0; top-5: 94, 95, 96
    assert row.n_seeds == 3
    assert row.top1_mean == pytest.approx(56.5)
    assert row.top1_std == pytest.approx(0.5)
    assert row.top5_mean == pytest.approx(95.0)


def test_one_seed_has_no_sd_and_shows_a_dash():
    table = report.summary_table(make_runs(seeds=(7,)))
    assert table["n_seeds"].eq(1).all()
    assert table["top1_std"].isna().all()
    assert (report.format_summary(table)["top-1 SD"] == report.DASH).all()


@pytest.mark.parametrize("reference", [None, REFERENCE.iloc[0:0]])
def test_no_reference_reads_not_transcribed(reference):
    table = report.summary_table(make_runs(), reference)
    assert table["paper_top1"].isna().all() and table["diff_top1"].isna().all()
    assert (table["paper_source"] == "not transcribed").all()
    shown = report.format_summary(table)
    assert (shown["paper top-1 (%)"] == "not transcribed").all()
    assert (shown["ours − paper"] == report.DASH).all()


def test_reference_row_gives_paper_value_and_difference():
    table = report.summary_table(make_runs(), REFERENCE)
    row = cell(table, "fake_a_2468", "paper", "mbquant", 4)
    assert row.paper_top1 == 55.0 and row.paper_source == "fake Table 3"
    assert row.diff_top1 == pytest.approx(56.5 - 55.0)
    # the other rows stay untranscribed: no number is invented
    assert table["paper_top1"].notna().sum() == 2  # the paper and smoke rows of that (manifest, arm, bits)
    assert (table.loc[table["paper_top1"].isna(), "paper_source"] == "not transcribed").all()

    # a smoke-scale run shows the paper value but no difference against it
    smoke = cell(table, "fake_a_2468", "smoke", "mbquant", 4)
    assert smoke.paper_top1 == 55.0 and math.isnan(smoke.diff_top1)
    shown = report.format_summary(table[(table.profile == "smoke") & (table.manifest == "fake_a_2468")])
    hit = shown[(shown.arm == "mbquant") & (shown.bits == "4")].iloc[0]
    assert hit["paper top-1 (%)"] == "55.00" and hit["ours − paper"] == "n/a (smoke-scale)"
    shown = report.format_summary(table[table.profile == "paper"])
    assert "+1.50" in set(shown["ours − paper"])


def test_duplicate_seed_is_rejected(tmp_path):
    runs = make_runs()
    with pytest.raises(ValueError, match="same"):
        report.write_report(pd.concat([runs, runs.iloc[:1]]), tmp_path / "r.pdf")
    assert not any(tmp_path.iterdir())


# ---------------------------------------------------------------------------------------------------- figure

def section(runs: pd.DataFrame, manifest: str, profile: str, reference=None) -> report.Section:
    return next(s for s in report.build_sections(runs, reference) if (s.manifest, s.profile) == (manifest, profile))


def page_text(fig) -> str:
    """Every text drawn on a page, whitespace collapsed (cells and headings wrap wherever their width ends)."""
    return " ".join(" ".join(t.get_text() for t in fig.findobj(matplotlib.text.Text)).split())


def test_accuracy_figure_labels():
    runs = make_runs()
    smoke = report.accuracy_figure(section(runs, "fake_a_2468", "smoke"))
    ax = smoke.axes[0]
    assert "smoke-scale: not comparable to the paper" in page_text(smoke) and "smoke-scale" in ax.get_ylabel()
    assert "Fake experiment fake_a_2468" in page_text(smoke)
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["baseline (n=3)", "mbquant (n=3)"]
    assert list(ax.get_xticks()) == list(BITS)

    paper = report.accuracy_figure(section(runs, "fake_a_2468", "paper", REFERENCE))
    assert "-scale" not in page_text(paper) and "-scale" not in paper.axes[0].get_ylabel()
    assert "paper profile" in page_text(paper)
    assert "paper value (registered)" in [t.get_text() for t in paper.axes[0].get_legend().get_texts()]
    # the difference panel: mbquant minus baseline, 95 % interval over the three paired seeds
    diff = paper.axes[1]
    assert "mbquant minus each baseline" in diff.get_title() and "95% CI" in diff.get_title()
    assert "Student t" in page_text(paper)
    one_seed = report.accuracy_figure(section(make_runs(seeds=(7,)), "fake_a_2468", "smoke")).axes[1]
    assert "one seed: no interval" in one_seed.get_title()


def test_a_section_with_two_architectures_gets_one_row_of_panels_and_one_table_block_each():
    runs = make_runs(sections=SECTIONS[:1], arms=("mbquant big", "baseline big", "adabits small"))
    runs["model"] = runs["arm"].str.split().str[1] + "net"
    runs["method"] = runs["arm"].str.split().str[0]
    fig = report.accuracy_figure(section(runs, "fake_a_2468", "paper"))
    titles = [ax.get_title().split(":")[0] for ax in fig.axes]
    assert titles == ["bignet", "bignet", "smallnet", ""]  # smallnet has one arm: nothing to compare
    legends = [[t.get_text().split(" (")[0] for t in ax.get_legend().get_texts()] for ax in fig.axes[::2]]
    assert legends == [["baseline big", "mbquant big"], ["adabits small"]]
    table = report.summary_table(runs)
    assert list(table.drop_duplicates("arm")["arm"]) == ["baseline big", "mbquant big", "adabits small"]
    assert list(table["model"].drop_duplicates()) == ["bignet", "smallnet"]


def test_no_heading_or_caption_overlaps_a_panel():
    """Headings and captions are laid out first, panels (titles, labels, legends) in the body between them."""
    runs = make_runs(sections=SECTIONS[:1], arms=("mbquant big", "baseline big", "mbquant small", "dedicated small"))
    runs["model"] = runs["arm"].str.split().str[1] + "net"
    runs["method"] = runs["arm"].str.split().str[0]
    fig = report.accuracy_figure(section(runs, "fake_a_2468", "paper"))
    renderer = fig.canvas.get_renderer()
    fig.draw_without_rendering()
    page = [t.get_window_extent(renderer) for t in fig.texts]
    panels = [ax.get_tightbbox(renderer) for ax in fig.axes]
    assert not any(p.overlaps(t) for p in panels for t in page)
    assert not any(a.overlaps(b) for i, a in enumerate(panels) for b in panels[i + 1:])


# ---------------------------------------------------------------------------------------------------- report

class RecordingPdfPages(report.PdfPages):
    """PdfPages that also keeps every text drawn on each saved page."""
    pages: list[str] = []

    def savefig(self, figure=None, **kwargs):
        RecordingPdfPages.pages.append(page_text(figure))
        super().savefig(figure, **kwargs)


def test_write_report_pages_labels_and_pngs(tmp_path, monkeypatch):
    RecordingPdfPages.pages = []
    monkeypatch.setattr(report, "PdfPages", RecordingPdfPages)
    out, figures = tmp_path / "out" / "report.pdf", tmp_path / "figures"
    header = {"git commit": "0123abc", "torch": "2.5.1", "tracking URI": "file:///tmp/mlruns"}

    pages = report.write_report(make_runs(), out, reference=REFERENCE, figures_dir=figures, header=header)

    # front page + (accuracy page + table page) per section: no history, no cost, no invocation (no appendix)
    assert pages == 1 + 2 * len(SECTIONS)
    assert out.read_bytes().startswith(b"%PDF") and out.stat().st_size > 10_000
    assert report.count_pdf_pages(out) == pages
    assert [p.name for p in out.parent.iterdir()] == ["report.pdf"]  # no temporary file left behind

    texts = RecordingPdfPages.pages
    assert len(texts) == pages
    front = texts[0]
    assert "MBQuant reproducibility suite" in front and "Generated" in front
    assert all(f"{k}: {v}" in front for k, v in header.items())
    assert "Profiles present: paper, smoke" in front and "NOT comparable to the paper" in front
    # one row per (manifest, profile); fake_a's paper row: a transcribed cell 1.5 points off, no tolerance given
    assert "no tolerance set" in front and "+1.50 (mbquant, 4-bit)" in front and "smoke only" in front
    # section pages in order: A/paper (2 pages), A/smoke (2), B/smoke (2); every smoke page says so
    for i, (manifest, profile) in enumerate(SECTIONS):
        for text in texts[1 + 2 * i: 3 + 2 * i]:
            assert manifest in text and f"{profile} profile" in text
            assert ("smoke-scale: not comparable to the paper" in text) == (profile == "smoke")

    pngs = sorted(figures.iterdir())
    assert [p.name for p in pngs] == sorted(report._png_name(m, p) for m, p in SECTIONS)
    assert all(p.read_bytes().startswith(b"\x89PNG") for p in pngs)


def test_long_table_continues_on_the_next_page_with_its_header(tmp_path, monkeypatch):
    RecordingPdfPages.pages = []
    monkeypatch.setattr(report, "PdfPages", RecordingPdfPages)
    arms = [f"arm{i:02d}" for i in range(14)]  # 56 rows: more than a page holds
    runs = make_runs(sections=SECTIONS[1:2], arms=arms, seeds=(0, 1))
    out = tmp_path / "long.pdf"
    pages = report.write_report(runs, out)
    assert pages == report.count_pdf_pages(out) == 1 + 1 + 2
    first, second = RecordingPdfPages.pages[2:]
    assert "arm00" in first and "arm13" in second and "(continued)" in second
    assert "top-1 mean (%)" in second  # the header is repeated


def test_empty_runs_raise_and_write_nothing(tmp_path):
    out = tmp_path / "sub" / "report.pdf"
    for empty in (make_runs().iloc[0:0], pd.DataFrame()):
        with pytest.raises(ValueError, match="no finished runs found in file:///x/mlruns"):
            report.write_report(empty, out, figures_dir=tmp_path / "figs", source="file:///x/mlruns")
    assert not any(tmp_path.iterdir())


def test_crash_keeps_previous_report(tmp_path, monkeypatch):
    out = tmp_path / "report.pdf"
    out.write_bytes(b"previous report")

    def boom(_section):
        raise RuntimeError("plotting failed")

    monkeypatch.setattr(report, "accuracy_figure", boom)
    with pytest.raises(RuntimeError, match="plotting failed"):
        report.write_report(make_runs(), out)
    assert out.read_bytes() == b"previous report"
    assert [p.name for p in tmp_path.iterdir()] == ["report.pdf"]


def test_count_pdf_pages_ignores_page_tree(tmp_path):
    pdf = tmp_path / "x.pdf"
    pdf.write_bytes(b"%PDF-1.4\n1 0 obj << /Type /Pages /Kids [2 0 R 3 0 R] >>\n"
                    b"2 0 obj << /Type /Page >>\n3 0 obj <</Type/Page/Parent 1 0 R>>\n")
    assert report.count_pdf_pages(pdf) == 2


def shipped_invocations() -> pd.DataFrame:
    """Newest invocations of every shipped manifest at its paper and smoke profiles (each with one --set), none of
    whose runs started."""
    rows = []
    for path in sorted(EXPERIMENTS.glob("*.yaml")):
        for profile in ("paper", "smoke"):
            loaded = load_manifest(path, profile)
            m = loaded.manifest
            rows.append(dict(manifest=m.name, profile=profile, title=m.title, paper_ref=m.paper.ref,
                             paper_verified=m.paper.verified, pipeline_check=m.pipeline_check,
                             manifest_version=m.version, task=m.task, claim=m.claim,
                             tolerance=float("nan") if m.tolerance is None else m.tolerance,
                             command=loaded.command + " --set data.root=/data",
                             jobs=[(a.name, s) for a in loaded.arms for s in m.seeds], resolved_from=""))
    return pd.DataFrame(rows)


def test_the_front_page_holds_every_shipped_manifest_at_two_profiles():
    sections = report.build_sections(pd.DataFrame(columns=report.REQUIRED_COLUMNS), invocations=shipped_invocations())
    assert len(sections) == 16
    assert all(s.counts["missing"] == str(len(s.jobs)) and s.counts["finished"].startswith("0 of") for s in sections)
    header = {"tracking URI": "sqlite:////home/someone/projects/mbquant-suite/results/mlflow.db",
              "git.commit": "0" * 40, "git.dirty": "false", "torch": "2.14.1",
              "reference numbers": "results/paper/reference_numbers.csv"}
    assert len(report.front_pages(sections, header)) == 1
