"""End to end through the real entry point: manifest -> trainer -> MLflow runs -> PDF report."""
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from suite.cli import main
from suite.report import count_pdf_pages
from suite.tracking import tracking_uri

MANIFEST = str(Path(__file__).resolve().parents[1] / "experiments" / "table3_cifar100_resnet20_2468.yaml")
FAST = ["--set", "recipe.epochs=2", "--set", "recipe.steps_per_epoch=2", "--no-progress"]


@pytest.fixture(scope="module")
def smoke_run(results_dir):
    assert main(["run", MANIFEST, "--profile", "smoke", "--results", str(results_dir), *FAST]) == 0
    return results_dir


def arm_runs(results_dir):
    client = MlflowClient(tracking_uri(results_dir))
    exp = client.get_experiment_by_name("table3_cifar100_resnet20_2468")
    return client, client.search_runs([exp.experiment_id], "tags.`suite.kind` = 'arm-run'")


@pytest.mark.e2e
def test_smoke_run_is_tracked_in_mlflow(smoke_run):
    client, runs = arm_runs(smoke_run)
    assert {r.data.tags["suite.method"] for r in runs} == {"mbquant", "dedicated", "anyprecision", "adabits", "bitmixer"}
    run = next(r for r in runs if r.data.tags["suite.method"] == "mbquant")
    assert run.info.status == "FINISHED"
    tags, params = run.data.tags, run.data.params
    assert tags["suite.profile"] == "smoke" and tags["suite.scale"] == "smoke-scale"
    assert {"git.commit", "git.dirty", "torch.version", "suite.device", "suite.manifest_hash"} <= set(tags)
    assert params["recipe.epochs"] == "2" and params["method.options.selection"] == "amortization"
    history = client.get_metric_history(run.info.run_id, "val_top1_b4")
    assert [m.step for m in history] == [0, 1]
    for b in (2, 4, 6, 8):
        assert 0 <= run.data.metrics[f"final_top1_b{b}"] <= 100
        assert run.data.metrics[f"bitops_b{b}"] == b * b * run.data.metrics["macs_b2"]  # one b-bit network
    assert run.data.metrics["storage_mib"] > 0
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"resolved_manifest.yaml", "final_metrics.csv", "training_curves.png", "history.csv"} <= artifacts
    parent = client.get_run(tags["mlflow.parentRunId"])
    assert parent.info.status == "FINISHED" and parent.data.tags["suite.kind"] == "invocation"


@pytest.mark.e2e
def test_report_is_written(smoke_run, tmp_path, capsys):
    out = tmp_path / "report.pdf"
    assert main(["report", "--results", str(smoke_run), "--out", str(out)]) == 0
    assert out.stat().st_size > 10_000
    assert count_pdf_pages(out) == 4  # title, accuracy figure, storage figure, table
    assert (tmp_path / "figures" / "table3_cifar100_resnet20_2468__smoke.png").exists()
    assert "4 pages" in capsys.readouterr().out


@pytest.mark.e2e
def test_finished_run_is_not_run_twice(smoke_run, capsys):
    assert main(["run", MANIFEST, "--profile", "smoke", "--results", str(smoke_run), *FAST]) == 0
    assert "not run again" in capsys.readouterr().out
    _, runs = arm_runs(smoke_run)
    assert len(runs) == 5


def test_missing_dataset_fails_clearly_and_writes_nothing(tmp_path, capsys):
    results = tmp_path / "results"
    code = main(["run", MANIFEST, "--results", str(results), "--set", f"data.root={tmp_path / 'nowhere'}"])
    assert code == 2
    err = capsys.readouterr().err
    assert str(tmp_path / "nowhere" / "cifar-100-python") in err and "download" in err
    assert not results.exists()


def test_malformed_manifest_fails_clearly_and_writes_nothing(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text(Path(MANIFEST).read_text().replace("epochs: 200", "epochs: two hundred"))
    results = tmp_path / "results"
    assert main(["run", str(bad), "--results", str(results)]) == 2
    err = capsys.readouterr().err
    assert str(bad) in err and "recipe.epochs" in err
    assert not results.exists()


def test_list_shows_the_shipped_manifests(capsys):
    assert main(["list", "--experiments", str(Path(MANIFEST).parent)]) == 0
    out = capsys.readouterr().out
    assert "table3_cifar100_resnet20_2468" in out and "Fig. 3" in out and "not yet checked" in out


@pytest.mark.e2e
def test_identical_run_of_another_manifest_is_reused_not_retrained(smoke_run, capsys):
    fig3 = str(Path(MANIFEST).parent / "fig3_selection_x_distillation.yaml")
    assert main(["run", fig3, "--profile", "smoke", "--results", str(smoke_run), *FAST]) == 0
    assert "its results are reused" in capsys.readouterr().out  # amortization + in-place KD = table 3's mbquant
    client = MlflowClient(tracking_uri(smoke_run))
    exp = client.get_experiment_by_name("fig3_selection_x_distillation")
    runs = client.search_runs([exp.experiment_id], "tags.`suite.kind` = 'arm-run'")
    assert len(runs) == 4
    reused = [r for r in runs if "suite.reused_from" in r.data.tags]
    assert len(reused) == 1 and reused[0].data.tags["suite.arm"] == "amortization + in-place KD"
    original = client.get_run(reused[0].data.tags["suite.reused_from"])
    assert original.data.tags["suite.manifest"] == "table3_cifar100_resnet20_2468"
    assert reused[0].data.metrics["final_top1_b4"] == original.data.metrics["final_top1_b4"]


@pytest.mark.e2e
def test_quant_error_analysis_runs_on_reused_and_new_checkpoints(smoke_run, tmp_path, capsys):
    table7 = str(Path(MANIFEST).parent / "table7_quantization_error.yaml")
    assert main(["run", table7, "--profile", "smoke", "--results", str(smoke_run), *FAST]) == 0
    client = MlflowClient(tracking_uri(smoke_run))
    exp = client.get_experiment_by_name("table7_quantization_error")
    runs = client.search_runs([exp.experiment_id], "tags.`suite.kind` = 'arm-run'")
    assert {r.data.tags["suite.arm"] for r in runs} == {"mbquant", "mbquant clean", "anyprecision", "adabits"}
    for run in runs:
        assert 0 <= run.data.metrics["qerr_logits_b2"] < float("inf")
        assert "quant_error.csv" in {a.path for a in client.list_artifacts(run.info.run_id)}
    # Table 3's mbquant run was last reused by Fig. 3: Table 7 names and points at the run that trained.
    assert "mbquant seed 0: identical to a run of table3_cifar100_resnet20_2468" in capsys.readouterr().out
    sources = [client.get_run(r.data.tags["suite.reused_from"]) for r in runs if "suite.reused_from" in r.data.tags]
    assert sources and all("suite.reused_from" not in s.data.tags for s in sources)
    clean = next(r for r in runs if r.data.tags["suite.arm"] == "mbquant clean")
    assert clean.data.metrics["qerr_weight_b4"] == 0  # branch-indexed bounds: fixed 2-bit weights
    out = tmp_path / "report.pdf"
    assert main(["report", "--results", str(smoke_run), "--out", str(out)]) == 0
    assert (tmp_path / "figures" / "table7_quantization_error__smoke__quant_error.png").exists()


@pytest.mark.e2e
def test_rerunning_after_other_manifests_reused_the_runs(smoke_run, capsys):
    """After Fig. 3 and Table 7 reused Table 3's runs, Table 3 and Fig. 3 run again: each finds its own runs (no new
    record, none of Table 7's analysis results leak into it), whatever characters its arm names hold."""
    fig3 = str(Path(MANIFEST).parent / "fig3_selection_x_distillation.yaml")
    for manifest in (MANIFEST, fig3):
        assert main(["run", manifest, "--profile", "smoke", "--results", str(smoke_run), *FAST]) == 0
        out = capsys.readouterr().out
        assert "its results are reused" not in out and out.count("not run again") >= 4
    client, runs = arm_runs(smoke_run)
    assert len(runs) == 5 and not any(k.startswith("qerr_") for r in runs for k in r.data.metrics)
