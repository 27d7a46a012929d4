"""The reference-number registry and the verdict against a manifest's tolerance."""
from pathlib import Path

import pandas as pd
import pytest

from suite.references import COLUMNS, REGISTRY, read_registry, reference_for_report
from suite.report import summary_table

SHIPPED = Path(__file__).resolve().parents[1] / REGISTRY


def test_shipped_registry_is_valid_and_every_value_has_its_source():
    df = read_registry(SHIPPED)
    assert len(df[df["source_kind"] == "paper"])
    transcribed = df[df["value"] != ""]
    assert (transcribed["source"] != "").all()
    # The report gets exactly the transcribed cells a shipped experiment reproduces, each with its citation.
    reported = reference_for_report(SHIPPED)
    assert len(reported) == len(transcribed[(transcribed["manifest"] != "") & (transcribed["arm"] != "")])
    assert reported["source"].str.len().gt(0).all()


def test_every_accuracy_cell_of_the_shipped_experiments_has_a_row_and_every_row_an_experiment():
    """A user fills ``value``; the row must already name the (manifest, arm, bit-width) that reproduces it."""
    from suite.manifest import load_manifest

    cells = set()  # accuracy cells: training manifests (the cost table and the error analysis report other things)
    for path in sorted(SHIPPED.parents[2].glob("experiments/*.yaml")):
        loaded = load_manifest(path, "paper")
        if loaded.manifest.task == "train" and not loaded.manifest.analyses:
            cells |= {(loaded.manifest.name, arm.name, str(b)) for arm in loaded.arms for b in arm.config.method.bits}
    df = read_registry(SHIPPED)
    rows = {(r.manifest, r.arm, r.bits) for r in df.itertuples() if r.manifest}
    assert cells <= rows  # every reproduced accuracy cell can be filled in
    assert rows <= cells  # no row points at an arm, manifest or bit-width that does not exist (or is not accuracy)
    assert len(rows) == len(df[df["manifest"] != ""])  # one row per cell


def registry(tmp_path, **overrides):
    row = dict.fromkeys(COLUMNS, "") | dict(table="Table 3", bits="4", value="70.5", source="paper",
                                            source_kind="paper", manifest="m", arm="a") | overrides
    path = tmp_path / "refs.csv"
    pd.DataFrame([row]).to_csv(path, index=False)
    return path


def test_bad_rows_name_the_line_and_column(tmp_path):
    with pytest.raises(ValueError, match=r"refs.csv:2: column value"):
        read_registry(registry(tmp_path, value="seventy"))
    with pytest.raises(ValueError, match=r"refs.csv:2: column source_kind"):
        read_registry(registry(tmp_path, source_kind="blog"))


@pytest.mark.parametrize("profile,tolerance,mean,verdict", [
    ("paper", 1.0, 70.0, "agrees"), ("paper", 1.0, 68.0, "differs"), ("paper", float("nan"), 70.0, "no tolerance"),
    ("smoke", 1.0, 70.0, "–"),
])
def test_verdict_against_tolerance(tmp_path, profile, tolerance, mean, verdict):
    runs = pd.DataFrame([dict(manifest="m", profile=profile, arm="a", model="net", bits=4, seed=s, top1=mean + d,
                              top5=90.0, tolerance=tolerance) for s, d in enumerate((-0.5, 0.5))])
    table = summary_table(runs, reference_for_report(registry(tmp_path)))
    assert table.loc[0, "paper_top1"] == 70.5
    assert table.loc[0, "verdict"] == verdict
