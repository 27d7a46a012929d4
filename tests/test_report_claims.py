"""A manifest's claims checked on its own results: holds, fails or inconclusive, with the deciding comparison, on
the front page and beside the section's tables."""
from __future__ import annotations

import pytest
from helpers import copy_store
from pypdf import PdfReader
from report_store import Arm, Invocation, write

from suite.collect import collect
from suite.report import build_report, build_sections
from suite.report.claims import check_claims
from suite.tracking import Tracker

# top-1 = 60 + bits + offset + 0.5 x seed (report_store): "mine" is 1.0 above "base" at every seed, "worse" 3 below.
ARMS = [Arm("mine", "my-plugin", offset=1.0, storage_mib=1.0), Arm("base", "dedicated", storage_mib=2.0),
        Arm("worse", "anyprecision", offset=-3.0, storage_mib=0.5)]
CLAIMS = """headline: mine
claims:
  - {check: top1_not_below, against: [base], tolerance: 0.5}
  - {check: top1_not_below, against: [worse], arm: base}
  - {check: storage_at_most, against: [base]}
  - {check: storage_at_most}
"""


def checked(tmp_path, empty_store, seeds, profile="paper") -> dict[str, tuple[str, str]]:
    results = copy_store(empty_store, tmp_path / "results")
    write(Tracker(results), Invocation("claimed", profile, ARMS, seeds, manifest_yaml=CLAIMS))
    store = collect(results)
    (section,) = build_sections(store.runs, None, costs=store.costs, children=store.children,
                                invocations=store.invocations)
    return {r.text: (r.label, r.detail) for r in check_claims(section)}


def test_claims_hold_or_fail_on_the_results_and_name_the_deciding_comparison(tmp_path, empty_store):
    results = checked(tmp_path, empty_store, [0, 1, 2])
    accuracy, baseline_vs_worse, storage_vs_base, storage_vs_all = results.values()
    assert accuracy[0] == "top-1: holds" and "2-bit vs base: +1.00" in accuracy[1]  # paired: no spread at all
    assert list(results)[0].startswith("mine is not below base in top-1")
    assert baseline_vs_worse[0] == "top-1: holds" and "vs worse: +3.00" in baseline_vs_worse[1]
    assert storage_vs_base == ("storage: holds", "resnet20: 1.00 vs 2.00 MiB (base)")
    assert storage_vs_all == ("storage: fails", "resnet20: 1.00 vs 0.50 MiB (worse)")  # only the failing comparison


def test_one_seed_leaves_an_accuracy_claim_inconclusive_and_a_smoke_check_says_its_scale(tmp_path, empty_store):
    results = list(checked(tmp_path, empty_store, [0], profile="smoke").values())
    assert results[0][0] == "top-1: inconclusive (smoke-scale check)" and "one seed: no interval" in results[0][1]
    assert results[2][0] == "storage: holds"  # a cost is no estimate: no scale, no seeds needed


def test_a_contradicted_claim_fails_on_the_front_page(tmp_path, empty_store):
    results = copy_store(empty_store, tmp_path / "results")
    contradicted = [Arm("mine", "my-plugin", offset=-2.0), Arm("base", "dedicated")]
    write(Tracker(results), Invocation("claimed", "paper", contradicted, [0, 1, 2], manifest_yaml=CLAIMS))
    out = tmp_path / "report.pdf"
    build_report(results, out)
    front = " ".join(PdfReader(out).pages[0].extract_text().split())
    assert "top-1: fails" in front
    tables = " ".join(" ".join(p.extract_text().split()) for p in PdfReader(out).pages[1:])
    assert "Claims, checked on this profile's own results" in tables and "2-bit vs base: -2.00" in tables


@pytest.mark.parametrize("claims,field", [
    ("headline: nobody", "headline"),
    ("claims: [{check: storage_at_most, against: [nobody]}]", "claims[0].against"),
    ("claims: [{check: storage_at_most, arm: nobody}]", "claims[0].arm"),
    ("claims: [{check: faster}]", "claims.0.check"),
    ("claims: [{check: top1_not_below, tolerance: -1}]", "claims.0.tolerance"),
])
def test_a_claim_that_names_what_is_not_there_is_refused_with_its_field(tmp_path, claims, field):
    import yaml

    from suite.manifest import ManifestError, load_manifest

    doc = {"name": "claimed", "version": 1, "title": "t", "paper": {"ref": "none"},
           "data": {"dataset": "digits", "image_size": 8}, "model": {"arch": "resnet8"},
           "method": {"name": "mbquant", "bits": [2, 4]}, "recipe": {"epochs": 1}, "seeds": [0],
           "arms": [{"name": "mbquant"}, {"name": "dedicated", "set": {"method.name": "dedicated"}}],
           "profiles": {"paper": {}}} | yaml.safe_load(claims)
    path = tmp_path / "claimed.yaml"
    path.write_text(yaml.safe_dump(doc))
    with pytest.raises(ManifestError, match=field.replace("[", r"\[").replace("]", r"\]")):
        load_manifest(path)
