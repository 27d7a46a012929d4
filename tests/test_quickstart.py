"""The quickstart through the real entry point on a fresh store, every manifest included (``quickstart --all``, a
superset of the default selection), and what it must show: every method learning on the CIFAR-architecture
manifests, pipeline checks kept apart, a report whose front page answers for every manifest. Slow (every smoke
run of every manifest: a quarter of an hour on two cores): ``-m slow``."""
from __future__ import annotations

import subprocess
import sys

import pytest
import yaml
from pypdf import PdfReader

from helpers import EXPERIMENTS, SHIPPED
from suite.collect import load_children, load_runs

pytestmark = pytest.mark.slow
LEARNS = 90.0  # top-1 (%) on the digits' validation split


@pytest.fixture(scope="module")
def quickstart(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("quickstart")
    results, pdf = tmp / "results", tmp / "report.pdf"
    done = subprocess.run([sys.executable, "-m", "suite", "quickstart", "--all", "--results", str(results), "--out", str(pdf),
                           "--no-progress"], cwd=SHIPPED, capture_output=True, text=True, timeout=1800)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return results, pdf, done.stdout


def shipped_manifests() -> dict[str, dict]:
    return {doc["name"]: doc for doc in (yaml.safe_load(p.read_text()) for p in sorted(EXPERIMENTS.glob("*.yaml")))}


def test_every_planned_run_finished(quickstart):
    results, _, _ = quickstart
    children = load_children(results)
    assert not children.empty and set(children["status"]) == {"FINISHED"}, children[children["status"] != "FINISHED"]
    assert set(children["manifest"]) == set(shipped_manifests())


def test_cifar_architecture_arms_learn(quickstart):
    """Every arm at its largest bit-width, and the MBQuant headline arm (each manifest's first) at every bit-width."""
    results, _, _ = quickstart
    runs = load_runs(results)
    trained = runs[~runs["pipeline_check"] & runs["top1"].notna()]
    assert set(trained["manifest"]) >= {"table3_cifar100_resnet20_2468", "fig3_selection_x_distillation",
                                        "table5_branch_selection", "table6_inplace_distillation",
                                        "table7_quantization_error"}
    for (manifest, arm), rows in trained.groupby(["manifest", "arm"]):
        largest = rows.loc[rows["bits"].idxmax()]
        assert largest["top1"] >= LEARNS, f"{manifest} / {arm}: {largest['top1']:.1f}% at {largest['bits']} bits"
    for manifest, doc in shipped_manifests().items():
        rows = trained[(trained["manifest"] == manifest) & (trained["arm"] == doc["arms"][0]["name"])]
        if doc["model"]["arch"] == "resnet20" and not rows.empty:
            assert (rows["top1"] >= LEARNS).all(), rows[["manifest", "arm", "bits", "top1"]]


def test_imagenet_architectures_are_pipeline_checks(quickstart):
    results, _, _ = quickstart
    runs = load_runs(results)
    imagenet = runs[runs["model"].isin(["resnet18", "mobilenetv1"]) & runs["top1"].notna()]
    assert not imagenet.empty and imagenet["pipeline_check"].all()


def test_front_page_answers_for_every_manifest(quickstart):
    _, pdf, out = quickstart
    pages = PdfReader(pdf).pages
    assert f"({len(pages)} pages)" in out
    front = " ".join(pages[0].extract_text().split())
    for name in shipped_manifests():
        if name != "table4_storage_cost":  # costs only: its own pages, no accuracy claim
            assert name in front
    assert "smoke only" in front and "pipeline check" in front  # no smoke row can claim a reproduction
    assert "exact" in front  # Table 4's costs: no profile shortens them


def test_pages_name_what_ran_before_what_it_stands_in_for(quickstart):
    _, pdf, _ = quickstart
    text = " ".join(" ".join(p.extract_text().split()) for p in PdfReader(pdf).pages[1:])
    assert "ResNet-8 on digits 8×8, smoke profile — stand-in for Table 3" in text
    assert "ResNet-18 on digits 32×32, MobileNetV1 on digits 32×32, smoke profile — stand-in for Table 1" in text
