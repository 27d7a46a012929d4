"""The suite against a real MLflow tracking server over HTTP, as a team runs it: ``mlflow server`` (SQLite backend,
artifacts served by the server) on 127.0.0.1, jobs started at once by the ``gpus`` launcher's CPU slots, the server
stopped while they run and started again."""
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from suite.cli import main
from suite.tracking import series_key
from helpers import free_port
from test_launch import write_manifest

TESTS = Path(__file__).resolve().parent
JOBS = 8
START_S = 180  # a server's start, and jobs reaching their gate, on a busy 2-core machine
EPOCH_METRICS = tuple(map(series_key, ("val_top1_b2", "val_top1_b4", "val_top1_mean", "best_val_top1_mean")))
RUN_ARTIFACTS = {"history.csv", "final_metrics.csv", "resolved_manifest.yaml", "training_curves.png"}


class MlflowServer:
    """``mlflow server`` on a free port of 127.0.0.1 with its store in ``folder``; started again on the same port
    and store after a stop."""

    def __init__(self, folder: Path):
        self.folder, self.proc = folder, None
        self.port = free_port()

    @property
    def uri(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        command = [str(Path(sys.executable).with_name("mlflow")), "server", "--host", "127.0.0.1",
                   "--port", str(self.port), "--workers", "1",
                   "--backend-store-uri", f"sqlite:///{self.folder / 'mlflow.db'}",
                   "--serve-artifacts", "--artifacts-destination", str(self.folder / "artifacts")]
        with (self.folder / "server.log").open("a") as log:  # the server holds its own copy of the descriptor
            self.proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                                         env={**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"})
        deadline = time.monotonic() + START_S
        while time.monotonic() < deadline and self.proc.poll() is None:
            try:
                urllib.request.urlopen(f"{self.uri}/health", timeout=2).close()
                return
            except OSError:
                time.sleep(0.5)
        self.stop()
        raise AssertionError(f"mlflow server did not start: {(self.folder / 'server.log').read_text()[-2000:]}")

    def stop(self) -> None:
        """Its whole process group (the server and its worker), then wait until it is gone."""
        if self.proc is None or self.proc.poll() is not None:
            return
        os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()


@pytest.fixture
def server(tmp_path):
    server = MlflowServer(tmp_path / "server")
    try:
        server.start()
        yield server
    finally:
        server.stop()


def checked_runs(client: MlflowClient, experiment: str, seeds: list[int]) -> dict[str, int]:
    """Every (arm, seed) run of ``experiment`` arrived once, finished, with each epoch's metrics once, its final
    metrics and artifacts; every invocation holds its summary. What was logged, counted."""
    exp = client.get_experiment_by_name(experiment)
    runs = client.search_runs([exp.experiment_id], max_results=1000)
    children = [r for r in runs if r.data.tags["suite.kind"] == "arm-run"]
    parents = [r for r in runs if r.data.tags["suite.kind"] == "invocation"]
    assert sorted(int(r.data.tags["suite.seed"]) for r in children) == seeds
    assert {r.info.status for r in children} == {"FINISHED"}
    values = 0
    for run in children:
        assert {"final_top1_b2", "final_top1_b4", "best_epoch"} <= set(run.data.metrics)
        for key in run.data.metrics:
            steps = [m.step for m in client.get_metric_history(run.info.run_id, key)]
            assert len(steps) == len(set(steps)), (key, steps)  # nothing twice
            assert key not in EPOCH_METRICS or steps == [0, 1], (key, steps)
            values += len(steps)
        assert run.info.artifact_uri.startswith("mlflow-artifacts:")  # served by the server, not written here
        assert {a.path for a in client.list_artifacts(run.info.run_id)} == RUN_ARTIFACTS
    arms = {r.data.tags["suite.arm"] for r in children}
    for parent in (p for p in parents if p.info.status == "FINISHED"):
        assert {f"{arm}.{m}" for arm in arms for m in ("top1_b2", "top1_mean")} <= set(parent.data.metrics)
        assert "summary.csv" in {a.path for a in client.list_artifacts(parent.info.run_id)}
    return {"runs": len(runs), "arm runs": len(children), "invocations": len(parents), "metric values": values}


@pytest.mark.slow
def test_jobs_at_once_against_a_server_that_stops_and_comes_back(server, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", server.uri)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(TESTS), os.environ.get("PYTHONPATH")])))
    monkeypatch.setenv("OMP_WAIT_POLICY", "PASSIVE")
    client, seeds, results = MlflowClient(server.uri), list(range(JOBS)), tmp_path / "results"

    def run(manifest: Path) -> list[str]:
        return ["run", str(manifest), "--results", str(results), "--launcher", "gpus", "--cpu-slots", str(JOBS),
                "--plugin", "gated_method"]

    # Eight jobs start at once: they race to create the experiment, then log side by side.
    for folder in ("one", "two", "gate"):
        (tmp_path / folder).mkdir()
    first = write_manifest(tmp_path / "one", name="server_one", seeds=seeds)
    assert main(run(first)) == 0, capsys.readouterr().out
    one = checked_runs(client, "server_one", seeds)
    assert one["invocations"] == JOBS and one["runs"] == 2 * JOBS

    # Eight more wait at their second epoch (the first checkpointed and logged); the server stops meanwhile.
    gate = tmp_path / "gate"
    second = write_manifest(tmp_path / "two", name="server_two", seeds=seeds,
                            method={"name": "gated", "bits": [2, 4], "options": {"gate": str(gate)}})
    launcher = subprocess.Popen([sys.executable, "-m", "suite", *run(second)], stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + START_S
        while len(list(gate.glob("*.waiting"))) < JOBS:
            assert time.monotonic() < deadline and launcher.poll() is None, launcher.stdout.read()
            time.sleep(0.2)
        server.stop()
        (gate / "open").touch()
        out, _ = launcher.communicate(timeout=START_S)
    finally:
        if launcher.poll() is None:
            launcher.kill()
    assert launcher.returncode == 1 and f"{JOBS} of {JOBS} job(s) failed" in out, out
    for log in (results / "launch" / "server_two.paper").glob("*.log"):
        lines = log.read_text().strip().splitlines()
        assert "Traceback" not in log.read_text() and [line for line in lines if "error" in line] == lines[-1:]
        assert lines[-1].startswith(f"error: the tracking store {server.uri} failed"), lines[-1]
    assert len(list(results.glob("runs/*/*/last-0000000008.pt"))) == 2 * JOBS  # both epochs checkpointed

    # The server comes back on the same store and port: the same command resumes every run and completes it.
    server.start()
    assert main(run(second)) == 0, capsys.readouterr().out
    for log in (results / "launch" / "server_two.paper").glob("*.log"):
        assert "resuming" in log.read_text().rsplit("error: ", 1)[1]
    two = checked_runs(client, "server_two", seeds)
    assert two["invocations"] == 2 * JOBS  # the stopped ones, closed as KILLED by the rerun
    everything = client.search_runs([e.experiment_id for e in client.search_experiments()], max_results=1000)
    assert "RUNNING" not in {r.info.status for r in everything}
    assert len(list((server.folder / "artifacts").rglob("history.csv"))) == 2 * JOBS

    report = tmp_path / "report.pdf"
    assert main(["report", "--results", str(results), "--out", str(report)]) == 0 and report.stat().st_size > 0
    print(f"\n{2 * JOBS} jobs + {JOBS} rerun against {server.uri}: round one {one}; round two {two}")
