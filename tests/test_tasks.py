"""Tasks and analyses are plug-ins: a task registered at run time runs through ``run_manifest`` under the one run
lifecycle (lock, find a finished run, run, record), and an analysis registered at run time runs on a trained run
and reaches its metrics, its artifacts and the runs table like quant_error."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch
from helpers import tiny_manifest
from mlflow.tracking import MlflowClient

from suite import analyses, tasks
from suite.analyses import Analysis
from suite.collect import load_runs
from suite.lifecycle import claimed_run, exclusive
from suite.manifest import ManifestError, resolve_manifest
from suite.runner import run_manifest
from suite.tasks.base import Task
from suite.tracking import tracking_uri

MANIFEST = tiny_manifest("tiny_tasks", "a tiny run", epochs=1, steps_per_epoch=2)


def test_the_built_in_tasks_are_known_by_name_and_imported_on_first_use():
    code = ("import sys, suite.tasks as t\n"
            "def imported(): return sorted(m for m in sys.modules if m.removeprefix('suite.tasks.') in t.TASKS)\n"
            "print(sorted(t.TASKS), imported())\n"
            "t.task('costs')\n"
            "print(imported())")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split("\n")
    assert out[:2] == ["['costs', 'evaluate', 'train'] []", "['suite.tasks.costs']"]
    assert all(isinstance(tasks.task(name), Task) for name in tasks.BUILT_IN)


def test_an_unknown_task_is_refused_by_the_manifest_naming_the_known_ones():
    with pytest.raises(ManifestError, match=r"field `task`: unknown task 'predict'; known: costs, evaluate, train"):
        resolve_manifest(MANIFEST | {"task": "predict"}, Path("tiny_tasks.yaml"))


def arm_runs(results_dir):
    client = MlflowClient(tracking_uri(results_dir))
    experiments = [e.experiment_id for e in client.search_experiments()]
    return client, client.search_runs(experiments, "tags.`suite.kind` = 'arm-run'")


class Count:
    """A toy task: one run per arm, logging how many runs this task object has run so far."""

    seeded, all_ranks, exact, records_reuse = False, False, True, False
    busy_note = "counted by another process, skipped here"
    found_note = "counted earlier (run {run}), not counted again"

    def __init__(self):
        self.ran = 0

    def preflight(self, loaded, dist):
        return "checked"

    def run_arm(self, inv, arm, seed, state):
        key = "count-" + arm.run_key(seed)
        with claimed_run(inv, self, arm, seed, key, inv.tracker.locks / f"{key}.lock") as claim:
            if claim.to_run:
                self.ran += 1
                run_id, _ = inv.tracker.start_child(inv.experiment, inv.parent, arm.name, key,
                                                    inv.arm_tags(arm, seed), {"state": state})
                with inv.tracker.running(run_id):
                    inv.tracker.log_metrics(run_id, {"count": self.ran}, 0)
                claim.record, claim.metrics = run_id, {"count": self.ran}
        return [{"arm": arm.name, "count": claim.metrics.get("count")}]

    def summarize(self, inv, rows):
        inv.echo(f"counted {len(rows)} arm(s)")


@pytest.fixture
def count_task():
    task = tasks.register("count", Count())
    yield task
    del tasks.TASKS["count"]


def test_a_registered_task_runs_once_under_the_run_lifecycle(count_task, results_dir):
    loaded = resolve_manifest(MANIFEST | {"task": "count"}, Path("tiny_tasks.yaml"))
    lines = []
    rows = run_manifest(loaded, results_dir, echo=lines.append)
    assert count_task.ran == 1 and rows.to_dict("records") == [{"arm": "mbquant", "count": 1}]
    assert lines[0].startswith("tiny_tasks (none, profile paper): 1 arm(s); MLflow") and lines[-1] == "counted 1 arm(s)"

    client, (run,) = arm_runs(results_dir)
    assert run.info.status == "FINISHED" and run.data.params["state"] == "checked"
    assert run.data.tags["suite.scale"] == "exact"  # the task's numbers do not depend on the profile

    lines.clear()  # the finished run is found: not run again
    assert run_manifest(loaded, results_dir, echo=lines.append).to_dict("records") == [{"arm": "mbquant", "count": 1}]
    assert count_task.ran == 1
    assert f"  mbquant: counted earlier (run {run.info.run_id}), not counted again" in lines

    lock = results_dir / "locks" / f"count-{loaded.arms[0].run_key(0)}.lock"
    with exclusive(lock) as mine:  # another holder of the run's lock: skipped, nothing found or run
        assert mine
        lines.clear()
        run_manifest(loaded, results_dir, echo=lines.append)
    assert count_task.ran == 1 and "  mbquant: counted by another process, skipped here" in lines


def mean_abs_logits(model, bits, batch):
    """A toy analysis: the mean absolute logit at every bit-width (one row per bit-width)."""
    model.eval()
    rows = []
    with torch.no_grad():
        for b in bits:
            model.set_bits(b)
            rows.append({"layer": "logits", "bits": b, "mean_abs": float(model(batch).abs().mean())})
    table = pd.DataFrame(rows)
    return {f"toy_logits_b{r.bits}": r.mean_abs for r in table.itertuples()}, table


@pytest.fixture
def toy_analysis():
    toy = analyses.register(Analysis("toy", "toy_", ("logits",), f"{__name__}:mean_abs_logits"))
    yield toy
    del analyses.ANALYSES["toy"]


def test_a_registered_analysis_runs_on_a_trained_run_and_reaches_its_metrics(toy_analysis, results_dir):
    loaded = resolve_manifest(MANIFEST | {"analyses": ["toy"]}, Path("tiny_tasks.yaml"))
    lines = []
    run_manifest(loaded, results_dir, progress=False, echo=lines.append)
    assert any(line.startswith("    toy: 2 rows logged (") for line in lines), lines

    client, (run,) = arm_runs(results_dir)
    assert {"toy_logits_b2", "toy_logits_b4"} <= run.data.metrics.keys()
    assert not any(k.startswith("qerr_") for k in run.data.metrics)  # only what the manifest asked for
    assert "toy.csv" in {a.path for a in client.list_artifacts(run.info.run_id)}
    runs = load_runs(results_dir)
    assert runs.set_index("bits")["toy_logits"].to_dict() == pytest.approx(
        {b: run.data.metrics[f"toy_logits_b{b}"] for b in (2, 4)})

    lines.clear()  # measured once: a second invocation finds the run and its analysis done
    run_manifest(loaded, results_dir, progress=False, echo=lines.append)
    assert not any("toy:" in line for line in lines), lines
