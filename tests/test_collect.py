"""suite.collect on a store written like the runner writes it: every run of any status, the newest invocation's
plan and resolved manifest, per-epoch histories, and a reuse record's history taken from its original run."""
from __future__ import annotations

import pytest
from helpers import copy_store
from report_store import Arm, Invocation, write

from suite.collect import collect, load_children, load_histories, load_invocations, load_runs
from suite.tracking import Tracker

ARMS = [Arm("mbquant", "mbquant", offset=1.0), Arm("dedicated", "dedicated", storage_mib=4.0)]


@pytest.fixture(scope="module")
def store(tmp_path_factory, empty_store):
    results = copy_store(empty_store, tmp_path_factory.mktemp("collect") / "results")
    tracker = Tracker(results)
    ids = write(tracker, Invocation("alpha", "paper", ARMS, [0, 1], status={("dedicated", 1): "FAILED"}))
    write(tracker, Invocation("alpha", "paper", ARMS, [0, 1, 2], status={("dedicated", 1): "KILLED",
                                                                         ("dedicated", 2): None}))
    write(tracker, Invocation("beta", "smoke", ARMS[:1], [0]), reuse={("mbquant", 0): ids["mbquant", 0]})
    return results, ids


def test_children_hold_every_status_and_invocations_the_newest_plan(store):
    results, _ = store
    children = load_children(results)
    alpha = children[children["manifest"] == "alpha"]
    # the failed run of dedicated seed 1 was reopened by the second invocation (as the runner does) and killed
    assert sorted(alpha["status"].value_counts().items()) == [("FINISHED", 7), ("KILLED", 1)]
    invocations = load_invocations(results).set_index("manifest")
    assert len(invocations) == 2  # the newest invocation of each (manifest, profile) only
    newest = invocations.loc["alpha"]
    assert newest["jobs"] == [(a, s) for a in ("mbquant", "dedicated") for s in (0, 1, 2)]
    assert newest["claim"] == "the claim under test" and newest["tolerance"] == 1.0
    assert newest["command"] == "python -m suite run experiments/alpha.yaml --profile paper"
    assert newest["resolved_from"] == "artifact alpha.paper.resolved.yaml"
    assert "seeds: [0, 1, 2]" in newest["resolved_yaml"] and newest["torch"] and newest["gpu_count"]


def test_runs_keep_the_newest_finished_run_per_seed(store):
    results, ids = store
    runs = load_runs(results)
    alpha = runs[runs["manifest"] == "alpha"]
    assert sorted(alpha.groupby("arm")["seed"].nunique().items()) == [("dedicated", 1), ("mbquant", 3)]
    assert not alpha["run_id"].isin(ids.values()).any()  # the second invocation's runs, not the first's
    assert alpha["top1"].notna().all() and alpha["storage_mib"].notna().all()


def test_a_reuse_record_takes_its_history_from_the_run_that_trained(store):
    results, ids = store
    children = load_children(results)
    record = children[children["manifest"] == "beta"].iloc[0]
    assert record["reused_from"] == ids["mbquant", 0]
    history = load_histories(results, children[children["run_id"] == record["run_id"]])
    assert sorted(history["epoch"].unique()) == [0, 1]  # the original's two epochs, not the record's final point
    original = load_histories(results, children[children["run_id"] == ids["mbquant", 0]])
    assert history["val_top1"].tolist() == original["val_top1"].tolist()


def test_collect_reads_the_histories_of_finished_and_unfinished_runs(store):
    results, _ = store
    everything = collect(results)
    shown = set(everything.histories["run_id"])
    assert set(everything.runs["run_id"]) <= shown
    unfinished = everything.children[everything.children["status"] != "FINISHED"]
    assert set(unfinished["run_id"]) <= shown  # a failed run's partial history, for the pipeline table
