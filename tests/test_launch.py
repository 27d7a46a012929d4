"""Launchers, offline bundles and the plan: each job is the same command a user would type for one (arm, seed)."""
import os
import signal
import sys
import threading
import time
from dataclasses import dataclass, fields, replace
from pathlib import Path

import pytest
import yaml
from mlflow.tracking import MlflowClient

from helpers import copy_store, dorefa_trainable, tiny_manifest
from suite import interrupts, launch
from suite._cli.run import RunOptions
from suite.cli import main, parse
from suite.cluster import ClusterSpec
from suite.launch import jobs_for, submit_to_slurm
from suite.manifest import load_manifest
from suite.methods import Method
from suite.tracking import series_key, tracking_uri

TESTS = Path(__file__).resolve().parent
MANIFEST = tiny_manifest("tiny_launch", "launched jobs", epochs=2, steps_per_epoch=4)


def write_manifest(folder: Path, **changes) -> Path:
    path = folder / "tiny.yaml"
    path.write_text(yaml.safe_dump({**MANIFEST, **changes}))
    return path


def finished_runs(results: Path) -> dict[str, str]:
    client = MlflowClient(tracking_uri(results))
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()], "tags.`suite.kind` = 'arm-run'")
    return {r.data.tags["suite.arm"]: r.info.status for r in runs}


# -- a method that fails once: what a crashed job looks like --------------------------------------------------------

@dataclass
class FlakyOptions:
    __pydantic_config__ = {"extra": "forbid"}
    marker: str = ""


def build_flaky(arch, num_classes, bits, options):
    """Fails the first time (leaving ``marker``), then trains like any single-branch method."""
    if not Path(options.marker).exists():
        Path(options.marker).touch()
        raise RuntimeError("the planned failure of a flaky job")
    return dorefa_trainable(arch, num_classes, bits)


METHOD = Method("flaky", FlakyOptions, build_flaky)


@pytest.mark.slow
def test_gpus_launcher_runs_jobs_in_parallel_slots_and_a_failed_job_resumes_on_the_next_run(
        tmp_path, empty_store, monkeypatch, capsys):
    monkeypatch.setenv("PYTHONPATH", str(TESTS))  # the jobs import this file as the flaky method's plugin
    monkeypatch.setenv("OMP_WAIT_POLICY", "PASSIVE")
    manifest = write_manifest(tmp_path, arms=[
        {"name": "mbquant"}, {"name": "flaky", "set": {"method.name": "flaky", "method.bits": [2, 4],
                                                        "method.options": {"marker": str(tmp_path / "failed-once")}}}])
    results = copy_store(empty_store, tmp_path / "results")
    argv = ["run", str(manifest), "--results", str(results), "--launcher", "gpus", "--cpu-slots", "2",
            "--plugin", "test_launch"]
    assert main(argv) == 1
    out = capsys.readouterr().out
    assert "2 job(s) on 2 slot(s)" in out and "FAILED flaky seed 0" in out and "done mbquant seed 0" in out
    assert "1 of 2 job(s) failed: flaky seed 0" in out and "run the same command again to resume" in out
    log = (results / "launch" / "tiny_launch.paper" / "flaky-seed0.log").read_text()
    assert "the planned failure of a flaky job" in log
    assert finished_runs(results) == {"mbquant": "FINISHED", "flaky": "FAILED"}

    assert main(argv) == 0
    assert "done flaky seed 0" in capsys.readouterr().out
    assert "finished earlier" in (results / "launch" / "tiny_launch.paper" / "mbquant-seed0.log").read_text()
    assert finished_runs(results) == {"mbquant": "FINISHED", "flaky": "FINISHED"}


@pytest.mark.slow
def test_submitit_job_checkpoints_on_its_time_signal_requeues_and_finishes(tmp_path, empty_store, monkeypatch):
    """submitit's local executor, as SLURM would do it: SIGUSR2 mid-run (sent by the test once the job waits at the
    start of its second epoch, its first one checkpointed), then a requeue that resumes and finishes."""
    monkeypatch.setenv("PYTHONPATH", str(TESTS))  # the job imports the held method's plugin
    monkeypatch.setenv("OMP_WAIT_POLICY", "PASSIVE")
    pid_file = tmp_path / "held.pid"
    manifest = write_manifest(tmp_path, method={"name": "held", "bits": [2, 4],
                                                "options": {"pid_file": str(pid_file), "epoch": 1}})
    results = copy_store(empty_store, tmp_path / "results")
    jobs = jobs_for([("held", 0)], parse(["run", str(manifest), "--results", str(results), "--plugin", "held_method"]))
    (job,) = submit_to_slurm(jobs, tmp_path / "slurm", ClusterSpec(time_minutes=10), executor="local")
    deadline = time.monotonic() + 240
    while not pid_file.exists() and not job.done():
        assert time.monotonic() < deadline, "the job never reached its second epoch"
        time.sleep(0.2)
    assert pid_file.exists(), job.stderr()
    os.kill(int(pid_file.read_text()), signal.SIGUSR2)  # what SLURM sends ahead of a time limit
    assert job.result() == 0
    out, err = job.stdout(), job.stderr()
    assert "stopped by SIGUSR2" in err and "Requeued job" in out, err
    assert "resuming" in out.split("Requeued job", 1)[1]  # the second attempt picked up the checkpoint
    assert finished_runs(results) == {"held": "FINISHED"}


def test_offline_bundles_merge_into_the_store_once(tmp_path, empty_store, capsys):
    manifest, bundles = write_manifest(tmp_path), tmp_path / "bundles"
    assert main(["run", str(manifest), "--results", str(tmp_path / "node"), "--offline", str(bundles),
                 "--no-progress"]) == 0
    assert not (tmp_path / "node" / "mlflow.db").exists() and len(list(bundles.glob("*/mlflow.db"))) == 1
    central = copy_store(empty_store, tmp_path / "central")
    assert main(["import-runs", str(bundles), "--results", str(central)]) == 0
    assert "imported 2 run(s)" in capsys.readouterr().out  # the invocation and its (arm, seed) run
    assert main(["import-runs", str(bundles), "--results", str(central)]) == 0
    out = capsys.readouterr().out
    assert "imported 0 run(s)" in out and "2 were there already" in out

    client = MlflowClient(tracking_uri(central))
    (run,) = client.search_runs([e.experiment_id for e in client.search_experiments()], "tags.`suite.kind` = 'arm-run'")
    (source,) = MlflowClient(f"sqlite:///{next(bundles.glob('*/mlflow.db'))}").search_runs(
        ["1"], "tags.`suite.kind` = 'arm-run'")
    assert run.info.status == "FINISHED" and run.data.metrics == source.data.metrics
    assert run.data.params == source.data.params
    parent = client.get_run(run.data.tags["mlflow.parentRunId"])  # the parent link points inside the store
    assert parent.data.tags["suite.kind"] == "invocation"
    assert [m.step for m in client.get_metric_history(run.info.run_id, series_key("val_top1_b2"))] == [0, 1]
    assert {a.path for a in client.list_artifacts(run.info.run_id)} >= {"history.csv", "final_metrics.csv"}


def test_plan_reads_each_jobs_state_and_prices_what_is_left(tmp_path, results_dir, capsys):
    manifest = write_manifest(tmp_path, seeds=[0, 1])
    assert main(["run", str(manifest), "--results", str(results_dir), "--seed", "0", "--no-progress"]) == 0
    # Seed 1 stopped after its first epoch of 4 steps: the plan reads the checkpoint's name, not its content.
    run_dirs = {seed: results_dir / "runs" / "resnet8-mbquant" / f"{load_manifest(manifest).arms[0].run_key(seed)}-seed{seed}"
                for seed in (0, 1)}
    run_dirs[1].mkdir(parents=True)
    (run_dirs[1] / "last-0000000004.pt").touch()
    other = tmp_path / "other.yaml"  # the same runs, planned from another manifest
    other.write_text(yaml.safe_dump({**MANIFEST, "name": "other", "seeds": [0, 1]}))

    def planned() -> dict[str, str]:
        capsys.readouterr()
        assert main(["plan", str(other), "--results", str(results_dir), "--step-time", "2.0"]) == 0
        out = capsys.readouterr().out
        assert "2.0 s per step (given)" in out and "total:" in out
        return {line.split()[1]: line for line in out.splitlines()[2:4]}

    lines = planned()
    assert "finished" in lines["0"] and f"{0:>11,}" in lines["0"]  # its run directory holds the result
    assert "resumable at epoch 2" in lines["1"] and f"{4:>11,}" in lines["1"]  # 8 steps, 4 done
    (run_dirs[0] / "result.json").unlink()  # only the tracking store knows it now
    assert "reused from tiny_launch" in planned()["0"]


def test_slurm_array_asks_for_what_the_cluster_block_says(tmp_path, monkeypatch):
    """The sbatch script of a real SLURM submission (sbatch and srun stand-ins on PATH record what they are given)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "srun").write_text("#!/bin/sh\nexit 0\n")
    (bin_dir / "sbatch").write_text(f'#!/bin/sh\ncp "$1" {tmp_path}/script\necho "Submitted batch job 4242"\n')
    for tool in bin_dir.iterdir():
        tool.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    jobs = jobs_for([("mbquant", 0), ("mbquant", 1)], parse(["run", "tiny.yaml"]))
    handles = submit_to_slurm(jobs, tmp_path / "slurm", ClusterSpec(partition="gpu", time_minutes=90, gpus_per_job=2,
                                                                    account="lab"), echo=lambda _: None)
    assert [h.job_id for h in handles] == ["4242_0", "4242_1"]
    script = (tmp_path / "script").read_text()
    for line in ("--array=0-1", "--partition=gpu", "--account=lab", "--time=90", "--gpus-per-node=2",
                 "--ntasks-per-node=2", "--signal=USR2@180", "--nodes=1"):
        assert f"#SBATCH {line}" in script


def test_k_jobs_share_one_slot_at_once(tmp_path):
    """--jobs-per-gpu 2 on one CPU slot: both jobs start before either ends (their commands are quick ones)."""
    from suite.launch import Job, run_on_gpus

    said = []
    jobs = [Job("list", k, ("list", "--experiments", str(tmp_path))) for k in (0, 1, 2)]
    assert run_on_gpus(jobs, tmp_path / "logs", jobs_per_gpu=2, cpu_slots=1, echo=said.append) == 0
    assert said[0].startswith("3 job(s) on 1 slot(s) x 2 job(s) each")
    events = [line.split()[0] for line in said[1:] if line.split()[0] in ("started", "done")]
    assert events[:2] == ["started", "started"] and events.count("done") == 3


def test_jobs_per_gpu_must_be_a_whole_number_of_one_or_more(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["run", "x.yaml", "--launcher", "gpus", "--jobs-per-gpu", "0"])
    assert exit_.value.code == 2 and "must be 1 or more, got 0" in capsys.readouterr().err


def test_plan_prices_the_wall_time_of_jobs_sharing_a_gpu(tmp_path, results_dir, capsys):
    manifest = write_manifest(tmp_path)
    assert main(["plan", str(manifest), "--results", str(results_dir), "--step-time", "3600",
                 "--jobs-per-gpu", "4", "--gain", "2.5"]) == 0
    out = capsys.readouterr().out  # 2 epochs x 4 steps of an hour, evaluation 96 / 32 steps x 1/3 per epoch
    assert "10.0 device-hours" in out and "4 jobs per GPU: 4.0 wall hours on one GPU (measured throughput 2.50x" in out
    assert main(["plan", str(manifest), "--results", str(results_dir), "--step-time", "1", "--jobs-per-gpu", "2"]) == 0
    assert "needs the measured throughput" in capsys.readouterr().out


@pytest.mark.parametrize("dataset, folder", [("cifar100", "cifar-100-python"), ("imagenet", "imagenet/train")])
def test_plan_warns_that_the_data_folder_is_missing(dataset, folder, tmp_path, results_dir, capsys):
    manifest = write_manifest(tmp_path, data={"dataset": dataset, "image_size": 32, "root": str(tmp_path / "data")})
    assert main(["plan", str(manifest), "--results", str(results_dir), "--step-time", "1"]) == 0
    assert f"warning: no data at {tmp_path / 'data' / folder}: `run` will stop there" in capsys.readouterr().out
    (tmp_path / "data" / folder).mkdir(parents=True)
    (tmp_path / "data" / "imagenet" / "val").mkdir(parents=True)
    assert main(["plan", str(manifest), "--results", str(results_dir), "--step-time", "1"]) == 0
    assert "warning" not in capsys.readouterr().out


@pytest.mark.parametrize("pipeline_check", [True, False])
def test_a_pipeline_check_parent_says_its_accuracies_are_not_results(pipeline_check, tmp_path, results_dir):
    manifest = write_manifest(tmp_path, pipeline_check=pipeline_check, recipe={**MANIFEST["recipe"], "epochs": 1})
    assert main(["run", str(manifest), "--results", str(results_dir), "--no-progress"]) == 0
    client = MlflowClient(tracking_uri(results_dir))
    parent, = client.search_runs([e.experiment_id for e in client.search_experiments()],
                                 "tags.`suite.kind` = 'invocation'")
    note = parent.data.tags["mlflow.note.content"]
    before_the_table, table = note.split("| mbquant |", 1)  # the caveat comes before any accuracy
    assert ("**Pipeline check, not results**" in before_the_table) == pipeline_check and table


# -- every option of `run` reaches the jobs it launches -------------------------------------------------------------

def every_run_option(tmp_path: Path) -> dict:
    """A value for every option of `run`, none of them its default. A new option fails the test below until it
    has a value here, and is then checked like the others."""
    return {
        "manifest": write_manifest(tmp_path, profiles={"paper": {}, "smoke": {}}), "launcher": "gpus",
        "gpus_per_job": 2, "jobs_per_gpu": 3, "cpu_slots": 2, "partition": "gpu", "time_minutes": 30,
        "cpus_per_task": 4, "account": "lab", "submitit_executor": "local", "offline": tmp_path / "bundles",
        "profile": "smoke", "set": ["recipe.epochs=1", "recipe.steps_per_epoch=2"], "arm": ["mbquant"], "seed": [0],
        "no_progress": True, "results": tmp_path / "results", "plugin": ["test_launch"],
    }


@pytest.mark.parametrize("launcher", ["gpus", "submitit"])
def test_a_launched_job_gets_every_run_option_but_the_launchers_own(launcher, tmp_path, monkeypatch):
    given = RunOptions(**every_run_option(tmp_path) | {"launcher": launcher})
    defaults = RunOptions(manifest=given.manifest)
    assert [f.name for f in fields(RunOptions) if getattr(given, f.name) == getattr(defaults, f.name)] == ["manifest"]
    assert parse(given.argv()) == given  # what a user types, written back: the same options

    launched = {}
    monkeypatch.setattr(launch, "run_on_gpus", lambda jobs, folder, **kw: launched.update(jobs=jobs, **kw) or 0)
    monkeypatch.setattr(launch, "submit_to_slurm",
                        lambda jobs, folder, cluster, **kw: launched.update(jobs=jobs, cluster=cluster, **kw) or [])
    assert main(given.argv()) == 0
    (job,) = launched.pop("jobs")
    assert (job.arm, job.seed) == ("mbquant", 0) and job.argv[0] == "run"
    own = [f.name for f in fields(RunOptions) if f.metadata["arg"].launcher_only]
    assert parse(list(job.argv)) == replace(given, **{name: getattr(defaults, name) for name in own})
    if launcher == "gpus":
        assert launched == {"gpus_per_job": 2, "jobs_per_gpu": 3, "cpu_slots": 2}
    else:
        assert launched["executor"] == "local" and launched["cluster"] == ClusterSpec(
            partition="gpu", time_minutes=30, gpus_per_job=2, cpus_per_task=4, account="lab", jobs_per_gpu=3)


def test_the_launcher_options_override_the_manifests_cluster_block_one_by_one(tmp_path):
    block = ClusterSpec(partition="long", time_minutes=600, account="lab")
    options = parse(["run", "m.yaml", "--launcher", "submitit", "--time", "20", "--cpus-per-task", "2"])
    assert options.cluster(block) == ClusterSpec(partition="long", time_minutes=20, cpus_per_task=2, account="lab")
    assert options.cluster(None) == ClusterSpec(time_minutes=20, cpus_per_task=2)


def test_a_slurm_job_passes_its_time_signal_on_to_the_suite_it_runs(tmp_path, monkeypatch):
    """The job runs `python -m suite` as a child; the SIGUSR2 the job gets reaches the child, whose exit code the
    job reports (the stand-in child exits 140 on SIGUSR2, as the suite does after checkpointing)."""
    ready = tmp_path / "ready"
    child = (f"import pathlib, signal, sys, time; signal.signal(signal.SIGUSR2, lambda *_: sys.exit(140)); "
             f"pathlib.Path({str(ready)!r}).touch(); time.sleep(60)")
    monkeypatch.setattr(launch, "torchrun_prefix", lambda processes: [sys.executable, "-c", child])

    def signal_once_ready():
        while not ready.exists():
            time.sleep(0.05)
        os.kill(os.getpid(), signal.SIGUSR2)

    previous = signal.signal(signal.SIGUSR2, lambda *_: pytest.fail("the job kept the signal instead of passing it on"))
    try:
        threading.Thread(target=signal_once_ready, daemon=True).start()
        assert launch.run_suite(("run", "m.yaml")) == 140
    finally:
        signal.signal(signal.SIGUSR2, previous)


def test_the_same_stop_signal_again_is_the_same_stop():
    """SLURM signals every process of a job and the job passes the signal on too: the suite may get it twice."""
    with interrupts.installed():
        with pytest.raises(interrupts.Interrupted):
            os.kill(os.getpid(), signal.SIGUSR2)
            time.sleep(5)
        try:
            os.kill(os.getpid(), signal.SIGUSR2)  # while the first stop is being handled (runs closed, ...)
            time.sleep(0.1)
        except interrupts.Interrupted:
            pytest.fail("the second signal interrupted the handling of the first")
        assert interrupts.requested() == signal.SIGUSR2
