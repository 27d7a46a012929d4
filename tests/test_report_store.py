"""``build_report`` on a tracking store written like the runner writes it (no training: seconds), read back as a
reviewer would: the PDF's text extracted with pypdf, and the report run logged beside the runs. The paper's numbers
go in as a researcher enters them: ``suite references template``, filled in, ``suite references import``."""
from __future__ import annotations

import io
from contextlib import redirect_stdout

import pandas as pd
import pytest
from helpers import copy_store
from mlflow.tracking import MlflowClient
from pypdf import PdfReader
from report_store import Arm, Invocation, write

from suite.cli import main
from suite.references import COLUMNS
from suite.report import build_report
from suite.tracking import Tracker, tracking_uri

ARMS = [Arm("mbquant", "mbquant", offset=1.0), Arm("dedicated", "dedicated", storage_mib=4.0),
        Arm("mine", "my-plugin", offset=0.3, storage_mib=1.5)]
# Made-up paper values for this test only. alpha's MBQuant means are 63.5 (2-bit) and 65.5 (4-bit) over three seeds,
# each +-1.24 (95 %): 0.5 + 1.24 within 2.0 -> reproduced. gamma reuses alpha's seeds 0 and 1 of MBQuant, 65.25 +-3.18
# at 4 bits: 4.25 above 61.0, 4.25 - 3.18 beyond 0.5 -> not reproduced.
PAPER = {("alpha", "mbquant", "2"): "63.0", ("alpha", "mbquant", "4"): "66.0", ("gamma", "mbquant", "4"): "61.0"}


def command(*argv: str) -> str:
    """What ``python -m suite ARGV`` prints; it must succeed."""
    out = io.StringIO()
    with redirect_stdout(out):
        assert main(list(argv)) == 0
    return out.getvalue()


def enter_paper_numbers(registry, folder) -> None:
    """The cells registered blank, then filled through the command line: template, values, import."""
    pd.DataFrame([dict.fromkeys(COLUMNS, "") | dict(table="Table 9", row=m, column=f"{b}-bit", bits=b,
                                                    source_kind="paper", manifest=m, arm=a) for m, a, b in PAPER]
                 ).to_csv(registry, index=False)
    template = folder / "cells.csv"
    template.write_text(command("references", "template", "--references", str(registry)))
    cells = pd.read_csv(template, dtype=str, keep_default_na=False)
    assert len(cells) == len(PAPER) and (cells["value"] == "").all()
    cells["value"] = [PAPER[r.manifest, r.arm, r.bits] for r in cells.itertuples()]
    cells[["source", "page"]] = ["made up for this test", "9"]
    cells.to_csv(template, index=False)
    assert f"{len(PAPER)} cell(s) filled" in command("references", "import", str(template), "--references", str(registry))


@pytest.fixture(scope="module")
def report(tmp_path_factory, empty_store):
    """The store (five experiments, every verdict, a failed, a killed and a missing run), its report's pages."""
    tmp = tmp_path_factory.mktemp("report_store")
    results = copy_store(empty_store, tmp / "results")
    tracker = Tracker(results)
    ids = write(tracker, Invocation("alpha", "paper", ARMS, [0, 1, 2], tolerance="2.0", status={
        ("dedicated", 2): "FAILED", ("mine", 1): "KILLED", ("mine", 2): None}))
    write(tracker, Invocation("alpha", "smoke", ARMS[:1], [0]))
    write(tracker, Invocation("beta", "smoke", ARMS[:2], [0], pipeline_check=True, epochs=1,
                              status={("dedicated", 0): "FAILED"}))
    write(tracker, Invocation("gamma", "paper", ARMS[:1], [0, 1], tolerance="0.5"),
          reuse={("mbquant", s): ids["mbquant", s] for s in (0, 1)})
    write(tracker, Invocation("delta", "paper", ARMS[:1], [0]))
    write(tracker, Invocation("epsilon", "smoke", ARMS[:1], [0]))
    references = tmp / "refs.csv"
    enter_paper_numbers(references, tmp)
    out = tmp / "out" / "report.pdf"
    pages = build_report(results, out, references)
    texts = [" ".join(p.extract_text().split()) for p in PdfReader(out).pages]
    assert len(texts) == pages
    return results, out, texts


def pages_of(texts: list[str], heading: str) -> list[str]:
    return [t for t in texts if heading in t]


def test_front_page_rows_numbers_and_verdicts(report):
    _, _, texts = report
    front = texts[0]
    for cell in ("alpha v1", "Table 9 (mapping unverified)", "the claim under test",
                 "6 of 9", "1 failed, 1 killed",  # alpha paper: 9 planned, mine seed 2 never started
                 "reproduced", "+0.50 (mbquant, 2-bit)",  # alpha paper: both cells' intervals within ±2
                 "not reproduced", "+4.25 (mbquant, 4-bit)",  # gamma: reuse records, tolerance 0.5
                 "no paper number", "smoke only", "see the paper row", "pipeline check", "±0.5"):
        assert cell in front, cell
    assert front.index("alpha v1") < front.index("beta v1") < front.index("delta v1") < front.index("gamma v1")


def test_failed_killed_and_missing_runs_render_as_such(report):
    _, _, texts = report
    alpha = " ".join(pages_of(texts, "alpha v1 — paper profile"))
    assert "seed 2: failed" in alpha and "seed 1: killed" in alpha and "Not finished (not drawn)" in alpha
    assert "mine my-plugin resnet20 seed 0 seed 1: killed seed 2" in alpha  # finished, killed, never started
    pipeline = pages_of(texts, "Pipeline checks")[0]
    assert "dedicated dedicated resnet20 0 failed" in pipeline
    assert "dedicated dedicated resnet20 0 failed 1 × 3 = 3 steps 2.000" in pipeline and "so no trend" in pipeline
    assert "no accuracy comparison" in pipeline


def test_missing_paper_values_read_not_transcribed_and_smoke_pages_say_so(report):
    _, _, texts = report
    alpha = " ".join(pages_of(texts, "alpha v1 — paper profile"))
    assert "63.00 +0.50 reproduced" in alpha and "not transcribed" in alpha
    smoke = pages_of(texts, "alpha v1 — smoke profile")
    assert len(smoke) >= 2 and all("smoke-scale: not comparable to the paper" in t for t in smoke)


def test_every_section_has_its_figures_and_the_appendix_its_commands(report):
    _, _, texts = report
    gamma = pages_of(texts, "gamma v1 — paper profile")
    assert any("validation top-1 over epochs" in t for t in gamma)  # the reuse records' history, from alpha
    alpha = pages_of(texts, "alpha v1 — paper profile")
    assert any("accuracy vs cost" in t for t in alpha)  # the arms differ in storage
    appendix = " ".join(pages_of(texts, "Appendix"))
    assert "python -m suite run experiments/alpha.yaml --profile paper" in appendix
    assert "alpha (paper)" in appendix and "torch" in appendix and "threads" in appendix


def test_the_report_is_logged_beside_the_runs(report):
    results, out, _ = report
    client = MlflowClient(tracking_uri(results))
    experiment = client.get_experiment_by_name("reports")
    run = client.search_runs([experiment.experiment_id], "tags.`suite.kind` = 'report'")[0]
    assert run.info.status == "FINISHED"
    assert {a.path for a in client.list_artifacts(run.info.run_id)} == {"report.pdf", "figures"}
    figures = {a.path for a in client.list_artifacts(run.info.run_id, "figures")}
    assert figures == {f"figures/{p.name}" for p in (out.parent / "figures").iterdir()}
    assert "figures/alpha__paper.png" in figures
