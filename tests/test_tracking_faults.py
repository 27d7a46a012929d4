"""Tracking stores that fail: each failure is one line naming the store and what failed, within 30 s, before
anything is written when it can be seen up front; runs whose closing failed are closed by the next invocation."""
import importlib.util
import time

import pytest

from fake_server import fake_server
from suite import tracking
from suite.cli import main
from suite.tracking import StoreError, Tracker, lock_is_free
from test_launch import write_manifest

BOUND_S = 30  # the longest a failing store may take to be reported


def refused(tmp_path, monkeypatch, capsys, uri: str) -> tuple[str, float]:
    """Run a tiny manifest against ``uri``: it must exit 2 with one line, having written nothing; (line, seconds)."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    results = tmp_path / "results"
    started = time.monotonic()
    assert main(["run", str(write_manifest(tmp_path)), "--results", str(results), "--no-progress"]) == 2
    seconds = time.monotonic() - started
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and err.startswith("error: ") and "Traceback" not in err, err
    assert not results.exists()
    return err, seconds


@pytest.mark.parametrize("mode, reason", [
    ("503", "it answered HTTP 503 to every try"), ("404", "it answered HTTP 404, not an MLflow API answer"),
    ("html", "its answer is not JSON"), ("hang", "no answer within 3 s")])
def test_a_server_whose_api_fails_is_refused_in_one_line(mode, reason, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(tracking, "PREFLIGHT_DEADLINE_S", 3)  # the suite's own deadline: test_..._own_limits
    with fake_server(mode) as server:
        err, seconds = refused(tmp_path, monkeypatch, capsys, server.uri)
    assert f"the tracking store {server.uri} cannot be used: {reason}" in err and seconds < BOUND_S


@pytest.mark.parametrize("uri, reason", [
    ("foo://somewhere", "unknown scheme 'foo'"), ("file:///tmp/mlruns", "is a file store"),
    ("mlruns", "is a file store"), ("postgresql://suite@127.0.0.1:1/runs", "cannot be used")])
def test_a_store_of_an_unknown_kind_or_without_its_driver_is_one_line(uri, reason, tmp_path, monkeypatch, capsys):
    err, _ = refused(tmp_path, monkeypatch, capsys, uri)
    assert f"the tracking store {uri} " in err and reason in err
    if uri.startswith("postgresql") and not any(map(importlib.util.find_spec, ("psycopg", "psycopg2"))):
        assert "is not installed" in err


@pytest.mark.parametrize("mode", ["503", "hang"])
def test_a_server_failing_later_fails_each_call_within_its_limits_then_at_once(mode, tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "1")  # MLflow's own setting, read at every request
    with fake_server("mlflow") as server:
        tracker = Tracker(tmp_path / "results", server.uri)
        server.mode = mode
        started = time.monotonic()
        with pytest.raises(StoreError) as failed:
            tracker.log_metrics("0" * 32, {"val_top1_b2": 1.0}, 0)
        assert time.monotonic() - started < 3 * 1 + 3  # 3 tries of 1 s, 2-2.5 s apart
        message = str(failed.value)
        assert message.startswith(f"the tracking store {server.uri} failed (log_batch): ") and "\n" not in message
        assert "run the same command again" in message
        asked = server.requests
        with pytest.raises(StoreError, match="log_batch"):  # closing the run: the same line, no more waiting
            tracker.finish("0" * 32, "FAILED")
        assert server.requests == asked


@pytest.mark.slow
def test_a_hanging_server_is_reported_within_30_s_with_the_suites_own_limits(tmp_path):
    """The suite's settings as shipped: the preflight's deadline, then one later call's timeouts and retries."""
    with fake_server("hang") as server:
        started = time.monotonic()
        with pytest.raises(StoreError, match=f"no answer within {tracking.PREFLIGHT_DEADLINE_S} s"):
            Tracker(tmp_path / "results", server.uri)
        preflight = time.monotonic() - started
        server.mode = "mlflow"
        tracker = Tracker(tmp_path / "results", server.uri)
        server.mode = "hang"
        started = time.monotonic()
        with pytest.raises(StoreError, match="no answer within the request timeout"):
            tracker.set_tags("0" * 32, {"a": "b"})
        later = time.monotonic() - started
    print(f"hanging server reported after {preflight:.1f} s (preflight), {later:.1f} s (a later call)")
    assert preflight < BOUND_S and later < BOUND_S


# -- orphans -------------------------------------------------------------------------------------------------------


def statuses(tracker: Tracker, *run_ids: str) -> list[str]:
    return [tracker.client.get_run(r).info.status for r in run_ids]


def test_a_missing_lock_is_free(tmp_path):
    assert lock_is_free(tmp_path / "never-written.lock")


def test_runs_whose_closing_failed_are_closed_by_the_next_invocation(results_dir, monkeypatch):
    tracker = Tracker(results_dir)
    experiment = tracker.experiment_id("orphans")

    def full_disk(*args, **kwargs):
        raise OSError(28, "No space left on device")

    with pytest.raises(OSError, match="No space left"):
        with tracker.invocation(experiment, "closing fails", {}, {}) as parent:
            child, _ = tracker.start_child(experiment, parent, "child", "key-0", {}, {})
            monkeypatch.setattr(tracker.client, "set_terminated", full_disk)
            with tracker.running(child):
                pass
    monkeypatch.undo()
    lock = tracker.invocation_lock(parent)
    assert lock.exists() and statuses(tracker, parent, child) == ["RUNNING", "RUNNING"]

    assert sorted(Tracker(results_dir).close_orphans()) == sorted([parent, child])
    assert statuses(tracker, parent, child) == ["KILLED", "KILLED"] and not lock.exists()


def test_runs_of_a_live_invocation_elsewhere_are_left_running(results_dir, tmp_path):
    """One store, two results folders on this machine (their own lock files), and an invocation of another
    machine (its lock file out of sight)."""
    here = Tracker(results_dir)
    there = Tracker(tmp_path / "there", here.uri)
    experiment = here.experiment_id("shared")
    remote = here.client.create_run(experiment).info.run_id
    here.set_tags(remote, {tracking.TAG_OWNER: remote, "suite.host": "another-machine"})
    with there.invocation(experiment, "alive", {}, {}) as parent:
        assert here.close_orphans() == []
        assert statuses(here, parent, remote) == ["RUNNING", "RUNNING"]
    assert statuses(here, parent) == ["FINISHED"] and not there.invocation_lock(parent).exists()


def test_creating_an_experiment_another_process_just_created_reads_it(results_dir, monkeypatch):
    tracker, other = Tracker(results_dir), Tracker(results_dir)
    read = tracker.client.get_experiment_by_name

    def raced(name):  # the first read misses it; the other process creates it right after
        monkeypatch.setattr(tracker.client, "get_experiment_by_name", read)
        other.experiment_id(name)
        return None

    monkeypatch.setattr(tracker.client, "get_experiment_by_name", raced)
    assert tracker.experiment_id("raced") == other.experiment_id("raced")


def test_an_experiment_tag_another_process_set_at_the_same_moment_is_written_again(results_dir, monkeypatch):
    """The genuine error of MLflow's SQL store: the other process's row is inserted between our read and insert."""
    from mlflow.store.tracking.dbmodels.models import SqlExperimentTag

    tracker, other = Tracker(results_dir), Tracker(results_dir)
    experiment = tracker.experiment_id("tagged")
    write = tracker.client.client.set_experiment_tag

    def raced(experiment_id, key, value):  # the other process wins; our insert then breaks the key's uniqueness
        monkeypatch.setattr(tracker.client.client, "set_experiment_tag", write)
        other.set_experiment_tags(experiment_id, {key: "theirs"})
        store = tracker.client.client._tracking_client.store
        with store.ManagedSessionMaker(read_only=False) as session:
            session.add(SqlExperimentTag(experiment_id=int(experiment_id), key=key, value=value))

    monkeypatch.setattr(tracker.client.client, "set_experiment_tag", raced)
    tracker.set_experiment_tags(experiment, {"suite.note": "ours"})
    assert tracker.client.client.get_experiment(experiment).tags["suite.note"] == "ours"


def test_a_server_answering_a_lost_tag_race_is_written_again_not_reported_as_failed(tmp_path):
    with fake_server("tag-race") as server:
        tracker = Tracker(tmp_path / "results", server.uri)
        tracker.set_experiment_tags("1", {"suite.note": "ours"})
        assert server.tag_writes == 2 and tracker.client.failed is None
        tracker.set_tags("run", {"a": "b"})  # the client still works
