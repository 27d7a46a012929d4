"""End to end through the real entry point: manifest -> trainer -> MLflow runs -> PDF report."""
import io
from contextlib import redirect_stdout
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from helpers import EXPERIMENTS, copy_store
from suite.analyses import QUANT_ERROR
from suite.cli import main
from suite.report import count_pdf_pages
from suite.manifest import load_manifest
from suite.titles import experiment_name
from suite.tracking import series_key, tracking_uri

MANIFEST = str(EXPERIMENTS / "table3_cifar100_resnet20_2468.yaml")
FIG3 = str(EXPERIMENTS / "fig3_selection_x_distillation.yaml")
TABLE7 = str(EXPERIMENTS / "table7_quantization_error.yaml")
FAST = ["--set", "recipe.epochs=2", "--set", "recipe.steps_per_epoch=2", "--no-progress"]

# Stores filled once per module, in the order a user would run the manifests; every test works on its own copy.


def run_smoke(manifest, results, capsys) -> str:
    assert main(["run", manifest, "--profile", "smoke", "--results", str(results), *FAST]) == 0
    return capsys.readouterr().out


@pytest.fixture(scope="module")
def table3_store(tmp_path_factory, empty_store):
    results = copy_store(empty_store, tmp_path_factory.mktemp("table3") / "results")
    assert main(["run", MANIFEST, "--profile", "smoke", "--results", str(results), *FAST]) == 0
    return results


@pytest.fixture(scope="module")
def fig3_store(tmp_path_factory, table3_store):
    """Table 3, then Fig. 3 (which reuses one of Table 3's runs); with Fig. 3's output."""
    results = copy_store(table3_store, tmp_path_factory.mktemp("fig3") / "results")
    out = io.StringIO()
    with redirect_stdout(out):
        assert main(["run", FIG3, "--profile", "smoke", "--results", str(results), *FAST]) == 0
    return results, out.getvalue()


@pytest.fixture(scope="module")
def table7_store(tmp_path_factory, fig3_store):
    """Table 3, Fig. 3, then Table 7 (error analysis on reused and new runs); with Table 7's output."""
    results = copy_store(fig3_store[0], tmp_path_factory.mktemp("table7") / "results")
    out = io.StringIO()
    with redirect_stdout(out):
        assert main(["run", TABLE7, "--profile", "smoke", "--results", str(results), *FAST]) == 0
    return results, out.getvalue()


@pytest.fixture
def smoke_run(table3_store, tmp_path):
    return copy_store(table3_store, tmp_path / "results")


def arm_runs(results_dir, manifest=MANIFEST):
    """The (arm, seed) runs of the smoke profile of ``manifest``, from its experiment."""
    client = MlflowClient(tracking_uri(results_dir))
    exp = client.get_experiment_by_name(experiment_name(load_manifest(manifest, "smoke")))
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
    assert (tags["suite.precision"], tags["suite.deterministic"]) == ("fp32", "true")
    assert params["recipe.epochs"] == "2" and params["method.options.selection"] == "amortization"
    history = client.get_metric_history(run.info.run_id, series_key("val_top1_b4"))
    assert [m.step for m in history] == [0, 1]
    for b in (2, 4, 6, 8):
        assert 0 <= run.data.metrics[f"final_top1_b{b}"] <= 100
        assert run.data.metrics[f"bitops_b{b}"] == b * b * run.data.metrics["macs_b2"]  # one b-bit network
    assert run.data.metrics["storage_mib"] > 0
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"resolved_manifest.yaml", "final_metrics.csv", "training_curves.png", "history.csv"} <= artifacts
    parent = client.get_run(tags["mlflow.parentRunId"])
    assert parent.info.status == "FINISHED" and parent.data.tags["suite.kind"] == "invocation"
    # One row of the runs table shows the result: per arm, the final top-1 averaged over seeds.
    assert parent.data.metrics["mbquant.top1_b4"] == run.data.metrics["final_top1_b4"]
    assert "summary.csv" in {a.path for a in client.list_artifacts(parent.info.run_id)}
    experiment = client.get_experiment(run.info.experiment_id)
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"  # opens on the runs table


@pytest.mark.e2e
def test_report_is_written(smoke_run, tmp_path, capsys):
    out = tmp_path / "report.pdf"
    assert main(["report", "--results", str(smoke_run), "--out", str(out)]) == 0
    assert out.stat().st_size > 10_000
    # front page, accuracy, curves, accuracy vs storage, table, its claims (continued), appendix: environment,
    # resolved manifest
    assert count_pdf_pages(out) == 8
    assert (tmp_path / "figures" / "table3_cifar100_resnet20_2468__smoke.png").exists()
    assert "8 pages" in capsys.readouterr().out


@pytest.mark.e2e
def test_finished_run_is_not_run_twice(smoke_run, capsys):
    assert "not run again" in run_smoke(MANIFEST, smoke_run, capsys)
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
def test_identical_run_of_another_manifest_is_reused_not_retrained(fig3_store, tmp_path):
    results, out = fig3_store
    results = copy_store(results, tmp_path / "results")
    assert "its results are reused" in out  # amortization-kd = table 3's mbquant
    client, runs = arm_runs(results, FIG3)
    assert len(runs) == 4
    reused = [r for r in runs if "suite.reused_from" in r.data.tags]
    assert len(reused) == 1 and reused[0].data.tags["suite.arm"] == "amortization-kd"
    original = client.get_run(reused[0].data.tags["suite.reused_from"])
    assert original.data.tags["suite.manifest"] == "table3_cifar100_resnet20_2468"
    assert reused[0].data.metrics["final_top1_b4"] == original.data.metrics["final_top1_b4"]
    # Unmistakably a reuse: named and described so, pointing at the run and its artifacts, no training curve.
    assert reused[0].info.run_name.endswith("(reused)")
    assert "Reuse record" in reused[0].data.tags["mlflow.note.content"] and original.info.run_id in \
        reused[0].data.tags["mlflow.note.content"]
    assert reused[0].data.tags["suite.reused_artifacts"].endswith(f"{original.info.run_id}/artifacts")
    assert not any(k.startswith(("val_", "train_")) or "/" in k for k in reused[0].data.metrics)


@pytest.mark.e2e
def test_quant_error_analysis_runs_on_reused_and_new_checkpoints(table7_store, tmp_path):
    results, out = table7_store
    results = copy_store(results, tmp_path / "results")
    client, runs = arm_runs(results, TABLE7)
    assert {r.data.tags["suite.arm"] for r in runs} == {"mbquant", "mbquant-clean", "anyprecision", "adabits"}
    for run in runs:
        assert 0 <= run.data.metrics["qerr_logits_b2"] < float("inf")
        assert {f"qerr_{kind}_b4" for kind in QUANT_ERROR.kinds} <= run.data.metrics.keys()
        assert "quant_error.csv" in {a.path for a in client.list_artifacts(run.info.run_id)}
    # Table 3's mbquant run was last reused by Fig. 3: Table 7 names and points at the run that trained.
    assert "mbquant seed 0: identical to a run of table3_cifar100_resnet20_2468" in out
    sources = [client.get_run(r.data.tags["suite.reused_from"]) for r in runs if "suite.reused_from" in r.data.tags]
    assert sources and all("suite.reused_from" not in s.data.tags for s in sources)
    clean = next(r for r in runs if r.data.tags["suite.arm"] == "mbquant-clean")
    assert clean.data.metrics["qerr_weight_b4"] == 0  # branch-indexed bounds: fixed 2-bit weights
    out = tmp_path / "report.pdf"
    assert main(["report", "--results", str(results), "--out", str(out)]) == 0
    assert (tmp_path / "figures" / "table7_quantization_error__smoke__quant_error.png").exists()


@pytest.mark.e2e
def test_rerunning_after_other_manifests_reused_the_runs(table7_store, tmp_path, capsys):
    """After Fig. 3 and Table 7 reused Table 3's runs, Table 3 and Fig. 3 run again: each finds its own runs (no new
    record, none of Table 7's analysis results leak into it), whatever characters its arm names hold."""
    results = copy_store(table7_store[0], tmp_path / "results")
    for manifest in (MANIFEST, FIG3):
        out = run_smoke(manifest, results, capsys)
        assert "its results are reused" not in out and out.count("not run again") >= 4
    client, runs = arm_runs(results)
    assert len(runs) == 5 and not any(k.startswith("qerr_") for r in runs for k in r.data.metrics)


def test_every_argument_has_help_and_import_checkpoint_names_every_released_model(capsys, monkeypatch):
    """Every argument of every subcommand explains itself in `--help`; the released models listed are the ones
    that load."""
    import argparse

    from suite.release import RELEASE_MODELS

    undocumented, real = [], argparse.ArgumentParser.add_argument

    def recording(parser, *names, **kwargs):
        if not kwargs.get("help") and names != ("-h", "--help"):
            undocumented.append((parser.prog, names))
        return real(parser, *names, **kwargs)

    monkeypatch.setattr(argparse.ArgumentParser, "add_argument", recording)
    with pytest.raises(SystemExit):
        main(["import-checkpoint", "--help"])
    assert not undocumented
    out = " ".join(capsys.readouterr().out.split())
    assert all(name in out.split("--model MODEL")[-1].split("--dataset")[0] for name in RELEASE_MODELS)


@pytest.mark.parametrize("argv, expect", [
    (["plan", "M", "--step-time", "-1"], "argument --step-time: must be a finite number above 0, got -1"),
    (["plan", "M", "--step-time", "nan"], "argument --step-time: must be a finite number above 0, got nan"),
    (["plan", "M", "--step-time", "inf"], "argument --step-time: must be a finite number above 0, got inf"),
    (["plan", "M", "--probe-batch", "0"], "argument --probe-batch: must be 1 or more, got 0"),
    (["plan", "M", "--probe-batch", "-3"], "argument --probe-batch: must be 1 or more, got -3"),
    (["plan", "M", "--gain", "x"], "argument --gain: expected a number, got 'x'"),
    (["run", "M", "--cpu-slots", "0"], "argument --cpu-slots: must be 1 or more, got 0"),
    (["run", "M", "--no-such-flag"], "unrecognized arguments: --no-such-flag"),
])
def test_bad_command_line_values_are_one_line_before_anything_runs(argv, expect, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and err.startswith("error: suite") and expect in err and err.count("\n") == 1, err
    assert not any(tmp_path.iterdir())
