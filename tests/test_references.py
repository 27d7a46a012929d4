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


@pytest.mark.parametrize("profile,tolerance,mean,verdict", [  # two seeds 1 apart: the interval is +-6.35
    ("paper", 7.0, 70.0, "reproduced"), ("paper", 7.0, 57.0, "not reproduced"), ("paper", 1.0, 70.0, "inconclusive"),
    ("paper", float("nan"), 70.0, "no tolerance"), ("smoke", 1.0, 70.0, "–"),
])
def test_verdict_against_tolerance(tmp_path, profile, tolerance, mean, verdict):
    runs = pd.DataFrame([dict(manifest="m", profile=profile, arm="a", model="net", bits=4, seed=s, top1=mean + d,
                              top5=90.0, tolerance=tolerance) for s, d in enumerate((-0.5, 0.5))])
    table = summary_table(runs, reference_for_report(registry(tmp_path)))
    assert table.loc[0, "paper_top1"] == 70.5
    assert table.loc[0, "verdict"] == verdict


# -- entering the paper's numbers: template, import -----------------------------------------------------------------

def blank_registry(tmp_path):
    """Two registered cells, blank, and one context row that no experiment reproduces."""
    rows = [dict.fromkeys(COLUMNS, "") | dict(table="Table 3", row="MBQuant", column=f"{b}-bit", bits=str(b),
                                              source_kind="paper", manifest="m", arm="mbquant") for b in (2, 4)]
    rows.append(dict.fromkeys(COLUMNS, "") | dict(table="README", bits="4", value="93.9", source="a README",
                                                  source_kind="released-model"))
    path = tmp_path / "refs.csv"
    pd.DataFrame(rows).to_csv(path, index=False)
    return path


def filled(tmp_path, registry, **changes):
    """The template of ``registry`` with both cells filled (``changes`` maps a column to its values)."""
    from suite.references import template

    cells = template(registry)
    cells = cells.assign(value=["51.5", "60.25"], source="the paper", page="7")
    for column, values in changes.items():
        cells[column] = values
    path = tmp_path / "cells.csv"
    cells.to_csv(path, index=False)
    return path


def test_template_lists_the_missing_cells_and_import_fills_them(tmp_path, capsys):
    from suite.cli import main

    registry = blank_registry(tmp_path)
    assert main(["references", "template", "--references", str(registry)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "table,row,column,manifest,arm,bits,unit,value,source,page" and len(lines) == 3
    cells = filled(tmp_path, registry)
    assert main(["references", "import", str(cells), "--references", str(registry)]) == 0
    out = capsys.readouterr().out
    assert "m / mbquant / 2-bit (Table 3, MBQuant, 2-bit): 51.5 from the paper, p. 7" in out
    assert "2 cell(s) filled" in out
    reported = reference_for_report(registry)
    assert sorted(zip(reported["bits"], reported["top1"])) == [(2, 51.5), (4, 60.25)]
    # A second import of the same values changes nothing; the template is then empty.
    assert main(["references", "import", str(cells), "--references", str(registry)]) == 0
    assert "nothing to fill" in capsys.readouterr().out
    assert main(["references", "template", "--references", str(registry)]) == 0
    assert len(capsys.readouterr().out.splitlines()) == 1
    assert main(["references", "--references", str(registry)]) == 0
    assert "m: 2 of 2 cell(s) transcribed" in capsys.readouterr().out


@pytest.mark.parametrize("changes,message", [
    ({"value": ["51.5", "101"]}, "cells.csv:3: column value: 101 is outside [0, 100]"),
    ({"value": ["51.5", "nan"]}, "cells.csv:3: column value: nan is outside"),
    ({"value": ["51.5", "high"]}, "cells.csv:3: column value: 'high' is not a number"),
    ({"page": ["7", ""]}, "cells.csv:3: column page: a value needs its page"),
    ({"source": ["", "the paper"]}, "cells.csv:2: column source: a value needs its source"),
    ({"arm": ["mbquant", "mine"]}, "cells.csv:3: columns manifest, arm, bits: ('m', 'mine', '4') is not a registered"),
    ({"table": ["Table 3", "Table 4"]}, "cells.csv:3: column table: 'Table 4', but the registry's cell is 'Table 3'"),
    ({"unit": ["top-1 %", "top-5 %"]}, "cells.csv:3: column unit"),
])
def test_an_invalid_row_changes_nothing_and_names_the_row_and_field(tmp_path, capsys, changes, message):
    from suite.cli import main

    registry = blank_registry(tmp_path)
    before = registry.read_bytes()
    assert main(["references", "import", str(filled(tmp_path, registry, **changes)),
                 "--references", str(registry)]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert registry.read_bytes() == before


def test_import_never_overwrites_a_different_value(tmp_path, capsys):
    from suite.cli import main

    registry = blank_registry(tmp_path)
    cells = filled(tmp_path, registry)
    changed = tmp_path / "changed.csv"
    pd.read_csv(cells, dtype=str).assign(value=["51.5", "61.0"]).to_csv(changed, index=False)
    assert main(["references", "import", str(cells), "--references", str(registry)]) == 0
    before = registry.read_bytes()
    assert main(["references", "import", str(changed), "--references", str(registry)]) == 2
    assert "61.0 would overwrite 60.25" in capsys.readouterr().err
    assert registry.read_bytes() == before
