"""A run store that cannot lie: an intact file whose contents do not fit the run (an edited result, a checkpoint
of other shapes or beyond the recipe) is named, moved aside and the run recovers to the result it would have had;
MLflow's curves hold every epoch of the run's own history, whatever was killed when."""
import json
import math
import shutil

import pandas as pd
import pytest
import torch
import yaml
from mlflow.tracking import MlflowClient

from helpers import stop_after_epoch, tiny_manifest
from suite.checkpoints import CheckpointSeries, read_checkpoint, read_json, sha256_file, write_json
from suite.cli import main
from suite.data import DataConfig, build_data
from suite.manifest import load_manifest
from suite.methods import mbquant
from suite.tracking import Tracker, series_key, tracking_uri
from suite.trainer import Recipe, fit, seed_everything

TINY = Recipe(epochs=3, batch_size=32, lr=0.1, steps_per_epoch=5, eval_batch_size=96)


def tiny_data():
    return build_data(DataConfig(dataset="digits", image_size=8, train_limit=192, val_limit=96), 32, 0)


def tiny_trainable():
    seed_everything(0)
    return mbquant.build("resnet8", 10, [2, 4], mbquant.Options())


def tiny_fit(run_dir, **kwargs):
    data = tiny_data()
    return fit(tiny_trainable(), data.train, data.val, TINY, seed=0, run_dir=run_dir, progress=False, **kwargs)


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    """An uninterrupted run (its folder and result) and one stopped after its second epoch: what each test edits."""
    folder = tmp_path_factory.mktemp("runs")
    result = tiny_fit(folder / "straight")
    with pytest.raises(KeyboardInterrupt):
        tiny_fit(folder / "stopped", log=stop_after_epoch(1))
    return folder, result


def copied(straight, name, tmp_path):
    return shutil.copytree(straight[0] / name, tmp_path / name)


def rewritten(path, change):
    """Change a checkpoint's contents and give it the checksum of its new bytes: intact, but edited."""
    saved = read_checkpoint(path)
    change(saved)
    torch.save(saved, path)
    path.with_name(path.name + ".sha256").write_text(sha256_file(path))
    return path


def first_conv(state):
    return next(k for k, v in state.items() if v.dim() == 4)


CHECKPOINT_EDITS = {
    "wrong shape": lambda s: s["model"].__setitem__(first_conv(s["model"]), torch.zeros(1, 1, 1, 1)),
    "missing key": lambda s: s["model"].pop(first_conv(s["model"])),
    "epoch 99": lambda s: s["progress"].__setitem__("epoch", 99),
    "step 99": lambda s: s["progress"].__setitem__("step", 99),
    "top-1 999 in its history": lambda s: s["progress"]["history"][0].__setitem__("val_top1_b2", 999.0),
    "optimizer state of another shape": lambda s: s["optimizers"][0]["state"][0].__setitem__(
        "momentum_buffer", torch.zeros(3)),
}


@pytest.mark.parametrize("edit", CHECKPOINT_EDITS)
def test_an_intact_checkpoint_that_does_not_fit_is_moved_aside_and_the_one_before_it_used(straight, tmp_path, edit):
    run_dir = copied(straight, "stopped", tmp_path)
    newest = rewritten(CheckpointSeries(run_dir, "last").files()[-1], CHECKPOINT_EDITS[edit])
    warnings = []
    resumed = tiny_fit(run_dir, warn=warnings.append)
    assert resumed.resumed_from == 1  # the checkpoint before the edited one (after the first epoch)
    assert resumed.history == straight[1].history and resumed.final == straight[1].final
    assert any(str(newest) in w and "does not fit this run" in w for w in warnings), warnings
    assert newest.with_name(newest.name + ".corrupt").exists()  # kept for inspection; the resumed run rewrote it


def edit_result(field, value, checksum=True):
    def change(result):
        if field == "top1":
            result["final"]["2"][0] = value
        else:
            result[field] = value
    return change, checksum


RESULT_EDITS = {
    "top-1 999": edit_result("top1", 999.0),
    "top-1 NaN": edit_result("top1", math.nan),
    "best epoch 99": edit_result("best_epoch", 99),
    "a plausible top-1 its checkpoint disproves": edit_result("top1", 50.0),
    "edited without its checksum": edit_result("top1", 50.0, checksum=False),
}


@pytest.mark.parametrize("edit", RESULT_EDITS)
def test_an_edited_result_is_refused_and_rebuilt_from_the_last_good_checkpoint(straight, tmp_path, edit):
    run_dir = copied(straight, "straight", tmp_path)
    change, checksum = RESULT_EDITS[edit]
    path = run_dir / "result.json"
    result = read_json(path)
    change(result)
    if checksum:
        write_json(path, result)
    else:
        path.write_text(json.dumps(result))
    warnings, logged = [], []
    recovered = tiny_fit(run_dir, warn=warnings.append, log=lambda m, e: logged.append(e))
    assert recovered.resumed_from == TINY.epochs and not logged  # from the final checkpoint: nothing trained again
    assert recovered.final == straight[1].final and recovered.history == straight[1].history
    assert any(str(path) in w and "moved aside" in w for w in warnings), warnings
    assert read_json(path)["final"] == read_json(straight[0] / "straight" / "result.json")["final"]
    assert (run_dir / "result.json.corrupt").exists()


def test_an_edited_result_without_checkpoints_is_retrained(straight, tmp_path):
    run_dir = copied(straight, "straight", tmp_path)
    for checkpoint in run_dir.glob("last-*"):
        checkpoint.unlink()
    result = read_json(run_dir / "result.json")
    result["final"]["4"][1] = 999.0
    write_json(run_dir / "result.json", result)
    warnings = []
    retrained = tiny_fit(run_dir, warn=warnings.append)
    assert retrained.resumed_from is None and retrained.final == straight[1].final
    assert any("4-bit top-5 = 999.0 is not a percentage" in w for w in warnings), warnings


# -- through the command line: the tracked run ends FINISHED with the true metrics -----------------------------

MANIFEST = tiny_manifest("tiny", "a tiny run", epochs=3, steps_per_epoch=3)


def killed_once(monkeypatch, when):
    """Tracker.log_metrics raising KeyboardInterrupt (a kill, as the process sees it) the first time ``when``
    holds for its (metrics, step)."""
    real, fired = Tracker.log_metrics, []

    def log_metrics(self, run_id, metrics, step):
        if not fired and when(metrics, step):
            fired.append(step)
            raise KeyboardInterrupt
        return real(self, run_id, metrics, step)

    monkeypatch.setattr(Tracker, "log_metrics", log_metrics)
    return fired


def arm_run(results):
    client = MlflowClient(tracking_uri(results))
    (run,) = client.search_runs([e.experiment_id for e in client.search_experiments()], "tags.`suite.kind` = 'arm-run'")
    return client, run


def test_a_kill_between_an_epochs_checkpoint_and_its_logging_is_logged_on_resume(tmp_path, results_dir, monkeypatch):
    manifest = tmp_path / "tiny.yaml"
    manifest.write_text(yaml.safe_dump(MANIFEST))
    argv = ["run", str(manifest), "--results", str(results_dir), "--no-progress"]
    fired = killed_once(monkeypatch, lambda metrics, step: step == 1 and series_key("val_top1_mean") in metrics)
    assert main(argv) == 130 and fired == [1]  # epoch 1 checkpointed, never logged
    assert main(argv) == 0
    client, run = arm_run(results_dir)
    assert run.info.status == "FINISHED"
    history = pd.read_csv(client.download_artifacts(run.info.run_id, "history.csv", str(tmp_path)))
    assert list(history["epoch"]) == [0, 1, 2]
    for key in [c for c in history.columns if c != "epoch"] + ["best_val_top1_mean"]:
        logged = client.get_metric_history(run.info.run_id, series_key(key))
        assert sorted(m.step for m in logged) == [0, 1, 2], key
    logged = {m.step: m.value for m in client.get_metric_history(run.info.run_id, series_key("val_top1_mean"))}
    assert [logged[e] for e in history["epoch"]] == pytest.approx(list(history["val_top1_mean"]))
    best = [m.value for m in sorted(client.get_metric_history(run.info.run_id, series_key("best_val_top1_mean")),
                                    key=lambda m: m.step)]
    assert best == pytest.approx(list(history["val_top1_mean"].cummax()))


def test_an_edited_result_of_a_run_killed_before_its_final_logging_is_rebuilt(tmp_path, results_dir, monkeypatch,
                                                                             capsys):
    manifest = tmp_path / "tiny.yaml"
    manifest.write_text(yaml.safe_dump(MANIFEST))
    argv = ["run", str(manifest), "--results", str(results_dir), "--no-progress"]
    killed_once(monkeypatch, lambda metrics, step: "final_top1_mean" in metrics)
    assert main(argv) == 130  # trained and result.json written; the tracked run is KILLED
    path = load_manifest(manifest).arms[0].run_dir(results_dir, 0) / "result.json"
    true = read_json(path)
    edited = json.loads(json.dumps(true))
    edited["final"]["2"][0] = 999.0
    write_json(path, edited)
    capsys.readouterr()
    assert main(argv) == 0
    assert f"warning: {path}: 2-bit top-1 = 999.0 is not a percentage" in capsys.readouterr().out
    client, run = arm_run(results_dir)
    assert run.info.status == "FINISHED"
    assert run.data.metrics["final_top1_b2"] == true["final"]["2"][0] != 999.0
    assert read_json(path) | {"resumed_from": None} == true  # rebuilt from its final checkpoint, not retrained
