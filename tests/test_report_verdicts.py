"""The report's judgements on small synthetic tables: the front-page verdict of an experiment and profile, the
paired differences and their intervals, which (arm, seed) jobs finished, failed or are missing, and the fixed
colour and marker of each method."""
from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
from matplotlib.colors import to_hex

from suite.plots import METHOD_STYLES, Style, arm_styles, method_style
from suite.report import accuracy_figure, build_sections, curves_figure, paired_differences
from suite.report.layout import text_width, wrap
from suite.report.stats import job_status, section_verdict, status_counts


def runs(manifest="m", profile="paper", arms=(("mbquant", "mbquant", 0.0), ("dedicated", "dedicated", -1.0)),
         seeds=(0, 1, 2), bits=(2, 4), tolerance=2.0) -> pd.DataFrame:
    """Top-1 = 60 + bits + offset + 0.5 x seed: MBQuant's mean at 4 bits is 64.5, SD 0.5, and the 95 % interval of
    a mean over the three seeds +-1.24 (Student t, 2 degrees of freedom)."""
    return pd.DataFrame([dict(manifest=manifest, manifest_version=1, title="T", paper_ref="Table 9",
                              paper_verified=False, profile=profile, arm=arm, method=method, seed=s, bits=b,
                              top1=60.0 + b + off + 0.5 * s, top5=90.0, dataset="d", model="net",
                              run_id=f"{manifest}-{profile}-{arm}-{s}", tolerance=tolerance)
                         for arm, method, off in arms for s in seeds for b in bits])


def reference(*cells) -> pd.DataFrame:
    return pd.DataFrame([dict(manifest="m", arm=arm, bits=b, top1=v, source="made-up test value")
                         for arm, b, v in cells])


def verdicts(frame: pd.DataFrame, ref=None) -> dict[tuple[str, str], tuple[str, str]]:
    return {(s.manifest, s.profile): (s.verdict, s.largest_diff) for s in build_sections(frame, ref)}


# ---------------------------------------------------------------------------------------------------- verdicts

def test_reproduced_when_every_cell_s_interval_lies_within_tolerance():
    v = verdicts(runs(), reference(("mbquant", 4, 64.0), ("mbquant", 2, 62.3)))
    assert v["m", "paper"] == ("reproduced", "+0.50 (mbquant, 4-bit)")  # 0.5 + 1.24 <= 2
    # The same mean with a tolerance narrower than its interval: no verdict either way.
    assert verdicts(runs(tolerance=1.0), reference(("mbquant", 4, 64.0)))["m", "paper"][0] == "inconclusive"


def test_not_reproduced_when_one_cell_s_interval_lies_outside():
    v = verdicts(runs(), reference(("mbquant", 4, 64.0), ("dedicated", 2, 65.5)))
    assert v["m", "paper"] == ("not reproduced", "-4.00 (dedicated, 2-bit)")  # 61.5 vs 65.5: 4 - 1.24 > 2


def test_inconclusive_when_an_interval_straddles_the_tolerance_or_one_seed_ran():
    assert verdicts(runs(), reference(("mbquant", 4, 63.0)))["m", "paper"][0] == "inconclusive"  # 1.5 -+ 1.24
    one_seed = verdicts(runs(seeds=(0,)), reference(("mbquant", 4, 64.0)))  # exact, but no interval
    assert one_seed["m", "paper"] == ("inconclusive", "+0.00 (mbquant, 4-bit)")


def test_no_paper_number_when_nothing_is_transcribed_for_the_manifest():
    other = pd.DataFrame([dict(manifest="other", arm="mbquant", bits=4, top1=1.0, source="s")])
    assert verdicts(runs(), other)["m", "paper"] == ("no paper number", "–")
    assert verdicts(runs())["m", "paper"] == ("no paper number", "–")


def test_smoke_only_and_smoke_beside_a_paper_profile():
    smoke = runs(profile="smoke")
    assert verdicts(smoke, reference(("mbquant", 4, 64.0)))["m", "smoke"] == ("smoke only", "–")
    both = verdicts(pd.concat([runs(), smoke]), reference(("mbquant", 4, 64.0)))
    assert both["m", "smoke"][0] == "see the paper row" and both["m", "paper"][0] == "reproduced"


def test_incomplete_when_a_transcribed_cell_has_no_finished_run():
    v = verdicts(runs(), reference(("mbquant", 4, 64.0), ("bitmixer", 4, 60.0)))
    assert v["m", "paper"] == ("incomplete (1 of 2 paper cells measured)", "+0.50 (mbquant, 4-bit)")


def test_no_tolerance_and_pipeline_check():
    v = verdicts(runs(tolerance=float("nan")), reference(("mbquant", 4, 64.0)))
    assert v["m", "paper"] == ("no tolerance set", "+0.50 (mbquant, 4-bit)")
    cells = pd.DataFrame({"arm": ["a"], "bits": [4], "paper_top1": [1.0], "top1_mean": [50.0]})
    assert section_verdict("smoke", "pipeline", 1.0, cells, False) == ("pipeline check", "–")
    assert section_verdict("smoke", "costs", 1.0, cells, False) == ("exact", "–")


# ------------------------------------------------------------------------------------------ paired differences

def test_paired_difference_interval_is_a_student_t_interval_over_common_seeds():
    frame = pd.DataFrame([dict(arm=a, seed=s, bits=4, top1=v) for a, vals in
                          (("ref", (10.0, 12.0, 14.0, 20.0)), ("other", (9.0, 10.0, 11.0, np.nan)))
                          for s, v in enumerate(vals)]).dropna()
    d = paired_differences(frame, "ref", ["other"]).iloc[0]
    # differences 1, 2, 3 over the three common seeds: mean 2, SD 1, t(0.975, 2) = 4.3027
    assert (d["n"], d["mean"]) == (3, 2.0)
    assert d["high"] - d["mean"] == pytest.approx(4.302653 / np.sqrt(3), rel=1e-5)
    assert d["mean"] - d["low"] == pytest.approx(d["high"] - d["mean"])
    one = paired_differences(frame[frame["seed"] == 0], "ref", ["other"]).iloc[0]
    assert one["n"] == 1 and one["mean"] == 1.0 and np.isnan(one["low"]) and np.isnan(one["high"])  # none at n = 1


# ---------------------------------------------------------------------------------------------- runs' status

def test_job_status_finished_failed_killed_running_missing_and_outside_the_plan():
    recorded = pd.DataFrame([dict(arm=a, seed=s, status=st, run_id=f"{a}{s}{st}", method="mbquant", model="net")
                             for a, s, st in (("x", 0, "FINISHED"), ("x", 1, "FAILED"), ("x", 1, "FINISHED"),
                                              ("x", 2, "KILLED"), ("y", 0, "RUNNING"), ("y", 9, "FINISHED"))])
    jobs = job_status([("x", 0), ("x", 1), ("x", 2), ("y", 0), ("y", 1)], recorded, {"y": ("dedicated", "net")})
    assert jobs["status"].tolist() == ["finished", "finished", "killed", "running", "missing", "finished"]
    assert jobs["planned"].tolist() == [True] * 5 + [False]
    assert status_counts(jobs) == {"finished": "2 of 5 (+1 outside the newest plan)", "failed": "1 killed, 1 running",
                                   "missing": "1"}


# ------------------------------------------------------------------------------------------ colours, markers

def test_each_shipped_method_has_a_fixed_colour_and_marker():
    assert method_style("mbquant") == Style("#d62728", "o")
    assert method_style("dedicated") == Style("#7f7f7f", "s")
    styles = list(METHOD_STYLES.values())
    assert len({s.color for s in styles}) == len({s.marker for s in styles}) == len(styles)


def test_a_plugin_method_gets_the_same_style_in_every_process():
    code = "from suite.plots import method_style; s = method_style('my-plugin'); print(s.color, s.marker)"
    other = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                           env={**os.environ, "PYTHONHASHSEED": "12345"}).stdout  # another str hash than ours
    style = method_style("my-plugin")
    assert other == f"{style.color} {style.marker}\n"
    assert style.color not in {s.color for s in METHOD_STYLES.values()}


def test_arms_of_one_method_share_its_colour_and_differ_in_line_style():
    styles = arm_styles({"a": "mbquant", "b": "dedicated", "c": "mbquant"})
    assert styles["a"].color == styles["c"].color == "#d62728" and styles["a"].marker == styles["c"].marker
    assert (styles["a"].linestyle, styles["c"].linestyle) == ("-", "--") and not styles["c"].filled


def test_every_figure_draws_an_arm_in_its_methods_colour():
    frame = runs(arms=(("dedicated", "dedicated", 0.0), ("mbquant", "mbquant", 1.0), ("mine", "my-plugin", 0.5)))
    section = build_sections(frame)[0]
    section.histories = pd.DataFrame([dict(run_id=f"m-paper-{arm}-0", arm=arm, seed=0, method=method, model="net",
                                           status="finished", bits=b, epoch=e, val_top1=50.0 + e, train_loss=1.0)
                                      for arm, method in (("dedicated", "dedicated"), ("mbquant", "mbquant"),
                                                          ("mine", "my-plugin")) for b in (2, 4) for e in (0, 1)])
    for fig in (accuracy_figure(section), curves_figure(section)):
        colours = {line.get_label().split(" (")[0]: to_hex(line.get_color())
                   for ax in fig.axes for line in ax.get_lines() if not line.get_label().startswith("_")}
        assert colours["dedicated"] == "#7f7f7f" and colours["mbquant"] == "#d62728"
        assert colours["mine"] == method_style("my-plugin").color


# ------------------------------------------------------------------------------------------------- layout

@pytest.mark.parametrize("text", ["MBQuant matches or beats every baseline at every bit-width " * 3,
                                  "table3_cifar100_resnet20_2468_and_a_very_long_name_without_spaces"])
def test_wrapped_lines_fit_their_width(text):
    lines = wrap(text, 1.5, 8)
    assert len(lines) > 1 and all(text_width(line, 8) <= 1.5 * 72 for line in lines)
    assert "".join(lines).replace(" ", "") == text.replace(" ", "")
