"""A manifest's claims checked on its own results: holds, fails or inconclusive, with the deciding comparison, on
the front page and beside the section's tables."""
from __future__ import annotations

import pytest
import yaml
from helpers import EXPERIMENTS, copy_store
from pypdf import PdfReader
from report_store import Arm, Invocation, write

from suite.collect import collect
from suite.manifest import load_manifest, read_manifest_file
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


def checked(tmp_path, empty_store, seeds, profile="paper", arms=ARMS, claims=CLAIMS,
            **invocation) -> dict[str, tuple[str, str]]:
    results = copy_store(empty_store, tmp_path / "results")
    write(Tracker(results), Invocation("claimed", profile, arms, seeds, manifest_yaml=claims, **invocation))
    store = collect(results)
    (section,) = build_sections(store.runs, None, costs=store.costs, children=store.children,
                                invocations=store.invocations)
    return {r.text: (r.label, r.detail) for r in check_claims(section)}


def test_claims_hold_or_fail_on_the_results_and_name_the_deciding_comparison(tmp_path, empty_store):
    results = checked(tmp_path, empty_store, [0, 1, 2])
    accuracy, baseline_vs_worse, storage_vs_base, storage_vs_all = results.values()
    assert accuracy[0] == "top-1: holds" and "2-bit vs base: +1.00" in accuracy[1]  # paired: no spread at all
    assert list(results)[0].startswith("mine is not below base in top-1")
    assert baseline_vs_worse[0] == "top-1 (base): holds" and "vs worse: +3.00" in baseline_vs_worse[1]
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
    ("claims: [{check: top1_not_below, bits: [3]}]", "claims[0].bits"),  # not a bit-width of the method
    ("claims: [{check: storage_at_most, bits: [2]}]", "claims[0].bits"),
    ("claims: [{check: switching_error_below, measure: bn-drift}]", "claims.0.measure"),
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


def test_a_pipeline_check_checks_no_accuracy_claim_and_a_claim_can_name_its_bit_widths(tmp_path, empty_store):
    pipeline = checked(tmp_path / "a", empty_store, [0, 1, 2], pipeline_check=True)
    assert [label for label, _ in pipeline.values()] == ["storage: holds", "storage: fails"]  # chance-level top-1
    at_two = checked(tmp_path / "b", empty_store, [0, 1, 2], claims="claims: [{check: top1_not_below, bits: [2]}]")
    ((text, (label, detail)),) = at_two.items()
    assert "at 2 bits" in text and label == "top-1: holds" and "2-bit vs" in detail and "4-bit" not in detail


TABLE7 = EXPERIMENTS / "table7_quantization_error.yaml"


def table7_arms(clean: list[float], release: list[float]) -> list[Arm]:
    """Table 7's arms with the given BN-output drift at 2, 4 and 6 bits (the baselines' from the audit's run)."""
    def arm(name, method, drift):
        return Arm(name, method, qerr={"bn_drift": dict(zip((2, 4, 6), drift))})
    return [arm("mbquant", "mbquant", release), arm("mbquant-clean", "mbquant", clean),
            arm("anyprecision", "anyprecision", [0.48, 0.18, 0.11]), arm("adabits", "adabits", [0.40, 0.11, 0.03])]


def test_table7_claims_get_a_verdict_per_variant_from_the_measured_drift(tmp_path, empty_store):
    claims = yaml.safe_dump({"claims": read_manifest_file(TABLE7)["claims"]})  # the shipped claims
    below = checked(tmp_path / "a", empty_store, [0], "smoke", table7_arms([0.25, 0.08, 0.03], [0.28, 0.92, 0.93]),
                    claims)
    (clean_text, clean), (release_text, release) = below.items()
    assert clean_text.startswith("mbquant-clean switches bit-width with less BN-output drift than anyprecision")
    assert release_text.startswith("mbquant switches") and "(tolerance 0.01)" in release_text
    assert clean[0] == "switching error (mbquant-clean): holds"  # 6 bits: 0.03, within 0.01 of AdaBits' 0.03
    assert release == ("switching error (mbquant): fails", "4-bit: 0.920 vs 0.180 (anyprecision); 6-bit: 0.930 vs 0.110 "
                       "(anyprecision); 4-bit: 0.920 vs 0.110 (adabits); 6-bit: 0.930 vs 0.030 (adabits) (models "
                       "trained at the smoke profile)")
    above = checked(tmp_path / "b", empty_store, [0], "smoke", table7_arms([0.25, 0.08, 0.05], [0.28, 0.92, 0.93]),
                    claims)
    assert list(above.values())[0] == ("switching error (mbquant-clean): fails", "6-bit: 0.050 vs 0.030 (adabits) (models trained "
                                       "at the smoke profile)")


def test_every_shipped_manifest_states_its_claim_as_checks_over_its_own_arms():
    """A manifest whose every profile is a pipeline check has nothing its claims could be checked on."""
    for path in sorted(EXPERIMENTS.glob("*.yaml")):
        profiles = [load_manifest(path, p) for p in read_manifest_file(path)["profiles"]]
        if all(loaded.manifest.pipeline_check for loaded in profiles):
            continue
        for loaded in profiles:
            arms = {a.name: a.config.method.name for a in loaded.arms}
            assert loaded.manifest.claim and loaded.manifest.claims, f"{path.name}: no structured claims"
            for claim in loaded.manifest.claims:
                assert claim.arm is None or claim.arm in arms, (path.name, claim)
                compared = {a for a, m in arms.items() if a != claim.arm and (a in claim.against or m in claim.against)}
                assert compared or not claim.against, (path.name, loaded.profile, claim)
                assert set(claim.against) <= set(arms) | set(arms.values()), (path.name, claim)
