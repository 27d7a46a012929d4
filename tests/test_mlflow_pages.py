"""What MLflow's pages show, read through MLflow's client on a store a tiny real invocation wrote: experiment names
and descriptions that say what ran, the runs-table view (final top-1 per bit-width as columns, parents expanded),
parent and child descriptions, per-epoch curves under sections (so a run's metrics tab opens on them), and Table 4's
costs on its parent run."""
from __future__ import annotations

import json
from pathlib import Path

import mlflow
import pandas as pd
import pytest
import yaml
from helpers import EXPERIMENTS, copy_store, tiny_manifest
from mlflow.tracking import MlflowClient

from suite import mlflow_ui
from suite.cli import main
from suite.collect import load_histories
from suite.manifest import load_manifest
from suite.run_pages import NOTE
from suite.titles import experiment_name, honest_title
from suite.tracking import Tracker, series_key, tracking_uri
from suite.ui_view import VIEW_TAG

STAND_IN = "ResNet-8 on digits 8×8, tiny profile — stand-in for Table 9"
# The paper profile names a model that never runs here: the tiny profile is a stand-in for it.
MANIFEST = tiny_manifest("tiny_pages", "Accuracy of every bit-width on CIFAR-100 ResNet-20", epochs=2,
                         steps_per_epoch=2) | {
    "paper": {"ref": "Table 9"}, "claim": "MBQuant matches every bit-width",
    "model": {"arch": "resnet20"}, "profiles": {"paper": {}, "tiny": {"model.arch": "resnet8"}}}


@pytest.fixture(scope="module")
def store(tmp_path_factory, empty_store):
    """A store after one tiny invocation (ResNet-8 on digits, 2 epochs of 2 steps) and Table 4's costs."""
    tmp = tmp_path_factory.mktemp("pages")
    manifest, results = tmp / "tiny_pages.yaml", copy_store(empty_store, tmp / "results")
    manifest.write_text(yaml.safe_dump(MANIFEST, allow_unicode=True))
    assert main(["run", str(manifest), "--profile", "tiny", "--results", str(results), "--no-progress"]) == 0
    costs = ["run", str(EXPERIMENTS / "table4_storage_cost.yaml"), "--profile", "smoke", "--results", str(results),
             "--no-progress", "--arm", "mbquant", "--arm", "dedicated"]
    assert main(costs) == 0
    return results, load_manifest(manifest, "tiny")


def runs(client, experiment, kind):
    return client.search_runs([experiment.experiment_id], f"tags.`suite.kind` = '{kind}'")


@pytest.fixture(scope="module")
def tiny(store):
    results, loaded = store
    client = MlflowClient(tracking_uri(results))
    exp = client.get_experiment_by_name(experiment_name(loaded))
    (parent,), (child,) = runs(client, exp, "invocation"), runs(client, exp, "arm-run")
    return client, loaded, exp, parent, child


def test_a_stand_in_s_experiment_is_named_by_what_ran_and_described(tiny):
    _, loaded, exp, parent, _ = tiny
    assert exp.name == f"{STAND_IN} (tiny_pages)"
    note = exp.tags[NOTE]
    assert note.startswith(f"{honest_title(loaded)}\n") and honest_title(loaded).startswith(STAND_IN)
    assert "Claim (Table 9): MBQuant matches every bit-width" in note
    assert f"`{loaded.command}`" in note and "--profile tiny" in loaded.command
    assert parent.data.tags["suite.title"] == honest_title(loaded)


def test_the_paper_setting_keeps_the_manifest_s_experiment_name():
    for name, profile in (("table3_cifar100_resnet20_2468", "paper"), ("table4_storage_cost", "smoke")):
        assert experiment_name(load_manifest(EXPERIMENTS / f"{name}.yaml", profile)) == name


def test_a_few_arms_go_where_all_of_them_go():
    """``--arm`` runs a few arms: same experiment, same title as the whole profile."""
    costs = load_manifest(EXPERIMENTS / "table4_storage_cost.yaml", "smoke")
    few = costs.subset(arms=["mbquant"])  # ResNet-20 on CIFAR-100 only: one of the paper's setups
    assert (experiment_name(few), honest_title(few)) == ("table4_storage_cost", costs.manifest.title)
    mixed = load_manifest(EXPERIMENTS / "table1_imagenet_2468.yaml", "smoke")
    assert experiment_name(mixed.subset(arms=[mixed.arms[0].name])) == experiment_name(mixed)
    assert experiment_name(mixed).startswith("ResNet-18 on digits 32×32, MobileNetV1 on digits 32×32, smoke profile")


def test_the_runs_table_opens_on_final_top1_per_bit_with_the_parent_expanded(tiny):
    _, _, exp, parent, child = tiny
    view = json.loads(exp.tags[VIEW_TAG])
    assert view["selectedColumns"] == ["metrics.`final_top1_b2`", "metrics.`final_top1_b4`"]
    assert view["runsExpanded"] == {parent.info.run_id: True}
    assert {"final_top1_b2", "final_top1_b4"} <= set(child.data.metrics)  # the columns have values


def test_the_parent_describes_its_arms_rounded(tiny):
    _, loaded, _, parent, child = tiny
    note, top1 = parent.data.tags[NOTE], child.data.metrics
    assert parent.info.run_name == "ResNet-8 on digits 8×8 [tiny] — tiny_pages"
    assert note.startswith(f"**{honest_title(loaded)}**") and "Pipeline check" not in note
    assert f"| mbquant | {top1['final_top1_b2']:.2f} | {top1['final_top1_b4']:.2f} |" in note
    assert parent.data.metrics["mbquant.top1_b2"] == round(top1["final_top1_b2"], 2)
    assert f"Reproduce: `{loaded.command}`" in note


def test_a_child_describes_what_ran_and_its_metrics_tab_opens_on_its_curves(tiny):
    client, loaded, _, _, child = tiny
    note = child.data.tags[NOTE]
    assert note.startswith(f"**{honest_title(loaded)}**")
    assert "arm **mbquant**, seed 0: method mbquant, bits 2, 4; " in note and "2 epochs x 2 steps, batch 32" in note
    assert f"| {child.data.metrics['final_top1_b2']:.2f} | {child.data.metrics['final_top1_b4']:.2f} |" in note
    assert note.endswith(f"`{loaded.command} --arm mbquant --seed 0`")
    # MLflow's metrics tab: named sections first, each sorted by key, then the unnamed one (final_*, costs).
    keys = set(child.data.metrics)
    first = sorted(k for k in keys if "/" in k)[:4]
    assert first == ["accuracy/best_val_top1_mean", "accuracy/val_top1_b2", "accuracy/val_top1_b4",
                     "accuracy/val_top1_mean"]
    assert "loss/train_loss_b2" in keys and not {"val_top1_b2", "train_loss_b2"} & keys
    assert [m.step for m in client.get_metric_history(child.info.run_id, series_key("val_top1_b2"))] == [0, 1]


def test_histories_are_read_under_sections_and_under_the_plain_names_of_older_stores(store, tmp_path):
    results, _ = store
    client = MlflowClient(tracking_uri(results))
    (child,) = client.search_runs([e.experiment_id for e in client.search_experiments()],
                                  "tags.`suite.kind` = 'arm-run'")
    old = copy_store(results, tmp_path / "old")
    tracker = Tracker(old)
    before = tracker.client.create_run(child.info.experiment_id).info.run_id
    tracker.log_metrics(before, {"val_top1_b2": 50.0, "train_loss_b2": 1.5}, 0)  # how older stores logged
    children = pd.DataFrame([{"run_id": child.info.run_id, "reused_from": None, "bits": "2,4"},
                             {"run_id": before, "reused_from": None, "bits": "2"}])
    history = load_histories(old, children)
    assert len(history[history["run_id"] == child.info.run_id]) == 4  # 2 bit-widths x 2 epochs
    assert history[history["run_id"] == before][["val_top1", "train_loss"]].values.tolist() == [[50.0, 1.5]]


def test_table4_s_parent_holds_its_costs_and_says_they_are_exact(store):
    results, _ = store
    client = MlflowClient(tracking_uri(results))
    exp = client.get_experiment_by_name("table4_storage_cost")
    (parent,) = runs(client, exp, "invocation")
    children = {r.data.tags["suite.arm"]: r for r in runs(client, exp, "cost-run")}
    metrics, note = parent.data.metrics, parent.data.tags[NOTE]
    for arm, child in children.items():
        assert metrics[f"{arm}.storage_mib"] == round(child.data.metrics["storage_mib"], 3)
        assert metrics[f"{arm}.gbitops_b2"] == round(child.data.metrics["bitops_b2"] / 1e9, 3)
        assert f"| {arm} | {child.data.metrics['storage_mib']:.2f} |" in note
        assert child.data.tags[NOTE].startswith(f"**{parent.data.tags['suite.title']}**")
    assert "exact at every profile" in note and "smoke" not in note.split("Reproduce:")[0].lower()
    assert parent.data.tags["suite.scale"] == "exact" and "| smoke | exact |" in exp.tags[NOTE]
    assert json.loads(exp.tags[VIEW_TAG])["selectedColumns"][:2] == ["metrics.`storage_mib`", "metrics.`bitops_b2`"]


def test_the_ui_makes_each_experiment_s_view_a_new_browser_s_saved_view(store, monkeypatch):
    results, loaded = store
    monkeypatch.setattr(mlflow_ui, "_get_tracking_store",
                        lambda: MlflowClient(tracking_uri(results))._tracking_client.store)
    views = mlflow_ui.views()
    exp = MlflowClient(tracking_uri(results)).get_experiment_by_name(experiment_name(loaded))
    assert views[exp.experiment_id] == json.loads(exp.tags[VIEW_TAG])
    script = mlflow_ui.script()
    assert json.dumps(mlflow_ui.SAVED_VIEW) in script and json.dumps(views) in script


def test_tags_that_name_the_view_are_what_mlflow_s_web_app_reads():
    """The key of MLflow's share links and of its saved experiment views, as its bundled web app spells them."""
    bundle = "".join(p.read_text(errors="ignore") for p in
                     (Path(mlflow.__file__).parent / "server/js/build/static/js").glob("*.js"))
    assert '"mlflow.sharedViewState."' in bundle and VIEW_TAG.startswith("mlflow.sharedViewState.")
    assert '"MLflowLocalStorage"' in bundle and '"ReactComponentState"' in bundle and '"ExperimentPage"' in bundle
