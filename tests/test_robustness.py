"""Runs nothing can poison: the run store holds data, not code; damaged files are named and skipped; a stopped or
killed run resumes to exactly the uninterrupted result; two processes never train one run twice."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from mlflow.tracking import MlflowClient

from helpers import copy_store, stop_after_epoch, tiny_manifest
from suite import interrupts
from suite.checkpoints import CheckpointSeries, sha256_file
from suite.cli import main
from suite.data import DataConfig, build_data
from suite.manifest import load_manifest
from suite.methods import mbquant
from suite.trainer import Recipe, fit, seed_everything
from suite.tracking import series_key, tracking_uri

TINY = Recipe(epochs=3, batch_size=32, lr=0.1, steps_per_epoch=5, eval_batch_size=96)
MANIFEST = tiny_manifest("tiny", "a tiny run", epochs=3, steps_per_epoch=6)


def tiny_data():
    return build_data(DataConfig(dataset="digits", image_size=8, train_limit=192, val_limit=96), 32, 0)


def tiny_trainable():
    seed_everything(0)
    return mbquant.build("resnet8", 10, [2, 4], mbquant.Options())


def write_manifest(folder: Path, **changes) -> Path:
    path = folder / "tiny.yaml"
    path.write_text(yaml.safe_dump({**MANIFEST, **changes}))
    return path


def run_dir_of(manifest: Path, results: Path) -> Path:
    arm = load_manifest(manifest).arms[0]
    return results / "runs" / "resnet8-mbquant" / f"{arm.run_key(0)}-seed0"


# -- the run store holds data, not code ----------------------------------------------------------------------

class PlantedCode:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_a_planted_pickle_in_the_run_store_is_refused_never_run(tmp_path, results_dir, capsys):
    manifest, marker = write_manifest(tmp_path), tmp_path / "code-ran"
    planted = run_dir_of(manifest, results_dir) / "last-0000000001.pt"
    planted.parent.mkdir(parents=True)
    torch.save({"model": PlantedCode(marker)}, planted)
    (planted.parent / (planted.name + ".sha256")).write_text(sha256_file(planted))  # even with a valid checksum
    assert main(["run", str(manifest), "--results", str(results_dir), "--no-progress"]) == 0
    assert not marker.exists()
    out = capsys.readouterr().out
    assert f"{planted}: holds objects other than tensors" in out and "moved aside" in out
    assert planted.with_name(planted.name + ".corrupt").exists()


def test_a_damaged_checkpoint_is_named_moved_aside_and_the_one_before_it_used(tmp_path):
    data = tiny_data()
    straight = fit(tiny_trainable(), data.train, data.val, TINY, seed=0, run_dir=tmp_path / "a", progress=False)
    with pytest.raises(KeyboardInterrupt):
        fit(tiny_trainable(), data.train, data.val, TINY, seed=0, run_dir=tmp_path / "b", progress=False,
            log=stop_after_epoch(1))
    newest = CheckpointSeries(tmp_path / "b", "last").files()[-1]
    newest.write_bytes(newest.read_bytes()[:1000])  # truncated, as by a full disk
    warnings = []
    resumed = fit(tiny_trainable(), data.train, data.val, TINY, seed=0, run_dir=tmp_path / "b", progress=False,
                  warn=warnings.append)
    assert resumed.resumed_from == 1  # from the end of the first epoch, the checkpoint before the damaged one
    assert any(str(newest) in w and "damaged" in w for w in warnings)
    assert resumed.history == straight.history and resumed.final == straight.final

    (tmp_path / "b" / "result.json").write_text("{not json")
    again = fit(tiny_trainable(), data.train, data.val, TINY, seed=0, run_dir=tmp_path / "b", progress=False,
                warn=warnings.append)
    assert again.final == straight.final and (tmp_path / "b" / "result.json.corrupt").exists()


def test_sigterm_finishes_the_step_checkpoints_mid_epoch_and_resumes_exactly(tmp_path):
    """In-process and deterministic: the signal arrives during a step of the second epoch."""
    data = tiny_data()
    straight = fit(tiny_trainable(), data.train, data.val, TINY, seed=0, run_dir=tmp_path / "a", progress=False)
    trained = {k: v.clone() for k, v in tiny_trainable().model.state_dict().items()}  # the untrained start
    trainable, calls = tiny_trainable(), []
    loss = trainable.loss

    def signalling_loss(logits, targets, earlier):
        calls.append(1)
        if len(calls) == 2 * (TINY.steps_per_epoch + 2) + 1:  # 2 losses a step: in the 3rd step of the 2nd epoch
            os.kill(os.getpid(), signal.SIGTERM)
        return loss(logits, targets, earlier)

    trainable.loss = signalling_loss
    with interrupts.installed(), pytest.raises(interrupts.Interrupted, match="SIGTERM in epoch 2 after step 3"):
        fit(trainable, data.train, data.val, TINY, seed=0, run_dir=tmp_path / "b", progress=False)
    saved, _ = CheckpointSeries(tmp_path / "b", "last").latest()
    assert (saved["progress"]["epoch"], saved["progress"]["step"]) == (1, 3)
    resumed_model = tiny_trainable()
    assert all(torch.equal(trained[k], v) for k, v in resumed_model.model.state_dict().items())
    resumed = fit(resumed_model, data.train, data.val, TINY, seed=0, run_dir=tmp_path / "b", progress=False)
    assert resumed.history == straight.history and resumed.final == straight.final


# -- stores ---------------------------------------------------------------------------------------------------

def test_a_corrupt_tracking_store_is_named_and_its_checkpoints_left_alone(tmp_path, capsys):
    results = tmp_path / "results"
    checkpoint = results / "runs" / "resnet8-mbquant" / "abc-seed0" / "last-0000000006.pt"
    checkpoint.parent.mkdir(parents=True)
    checkpoint.write_bytes(b"checkpoint bytes")
    (results / "mlflow.db").write_bytes(b"this is not a database" * 100)
    assert main(["run", str(write_manifest(tmp_path)), "--results", str(results), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert f"{results.resolve() / 'mlflow.db'} is not an intact MLflow SQLite store" in err
    assert checkpoint.read_bytes() == b"checkpoint bytes"
    assert sorted(p.name for p in results.iterdir()) == ["mlflow.db", "runs"]


def test_an_unreachable_tracking_server_fails_within_seconds_naming_it(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:9")  # the discard port: nothing listens
    started = time.monotonic()
    assert main(["run", str(write_manifest(tmp_path)), "--results", str(tmp_path / "results"), "--no-progress"]) == 2
    assert time.monotonic() - started < 15
    assert "the tracking store http://127.0.0.1:9 cannot be used: connection refused" in capsys.readouterr().err


# -- real processes -------------------------------------------------------------------------------------------

def suite_process(manifest: Path, results: Path) -> subprocess.Popen:
    env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE", "PYTHONUNBUFFERED": "1"}
    env.pop("MLFLOW_TRACKING_URI", None)
    return subprocess.Popen([sys.executable, "-m", "suite", "run", str(manifest), "--results", str(results),
                             "--no-progress"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)


def finished(proc: subprocess.Popen, timeout: float = 240) -> tuple[int, str]:
    out, _ = proc.communicate(timeout=timeout)
    return proc.returncode, out


def final_state(results: Path, manifest: Path) -> tuple[dict, dict]:
    saved, _ = CheckpointSeries(run_dir_of(manifest, results), "last").latest()
    result = json.loads((run_dir_of(manifest, results) / "result.json").read_text())
    result.pop("resumed_from")  # where this run resumed, if it did: the one thing allowed to differ
    return saved["model"], result


def killed_after_first_epoch(manifest: Path, results: Path, sig: int) -> tuple[int, str]:
    proc = suite_process(manifest, results)
    run_dir = run_dir_of(manifest, results)
    deadline = time.monotonic() + 180
    while not list(run_dir.glob("last-*.pt")) and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.3)  # into the second epoch
    proc.send_signal(sig)
    return finished(proc)


@pytest.mark.e2e
@pytest.mark.slow  # three CLI processes, each killed or run to the end
def test_sigterm_and_sigkill_resume_to_the_uninterrupted_result(tmp_path, empty_store):
    manifest = write_manifest(tmp_path)
    code, out = finished(suite_process(manifest, copy_store(empty_store, tmp_path / "straight")))
    assert code == 0, out
    straight_model, straight_result = final_state(tmp_path / "straight", manifest)

    for sig, expected in ((signal.SIGTERM, 128 + signal.SIGTERM), (signal.SIGKILL, -signal.SIGKILL)):
        results = copy_store(empty_store, tmp_path / signal.Signals(sig).name)
        code, out = killed_after_first_epoch(manifest, results, sig)
        assert code == expected, out
        if sig == signal.SIGTERM:
            assert "stopped by SIGTERM" in out and "closed as KILLED" in out
            client = MlflowClient(tracking_uri(results))
            assert {r.info.status for r in client.search_runs(["1"])} == {"KILLED"}  # parent and child
        code, out = finished(suite_process(manifest, results))
        assert code == 0 and "resuming" in out, out
        if sig == signal.SIGKILL:
            assert "as KILLED: the process running it is gone" in out  # the orphaned parent, closed
        model, result = final_state(results, manifest)
        assert result == straight_result
        assert model.keys() == straight_model.keys() and all(torch.equal(model[k], straight_model[k]) for k in model)


@pytest.mark.e2e
@pytest.mark.slow  # two CLI processes racing on one store
def test_two_processes_on_one_fresh_store_never_train_a_run_twice(tmp_path):
    manifest = write_manifest(tmp_path, arms=[{"name": "release"}, {"name": "clean", "set": {
        "method.options": {"variant": "clean"}}}], seeds=[0, 1])
    results = tmp_path / "results"
    procs = [suite_process(manifest, results) for _ in range(2)]
    outputs = [finished(p) for p in procs]
    assert all(code == 0 for code, _ in outputs), outputs
    client = MlflowClient(tracking_uri(results))
    runs = client.search_runs(["1"], "tags.`suite.kind` = 'arm-run'")
    assert sorted((r.data.tags["suite.arm"], r.data.tags["suite.seed"]) for r in runs) == [
        ("clean", "0"), ("clean", "1"), ("release", "0"), ("release", "1")]
    for run in runs:
        assert run.info.status == "FINISHED"
        assert [m.step for m in client.get_metric_history(run.info.run_id, series_key("val_top1_b2"))] == [0, 1, 2]
