"""A full disk: one line naming the path and the free space, nothing half-written, and the same command resumes once
there is space. On a small tmpfs where this machine lets the test mount one (root), else skipped with the reason."""
import errno
import shutil
import subprocess
from collections import namedtuple

import pytest
from mlflow.tracking import MlflowClient

from suite.checkpoints import CheckpointSeries
from suite.cli import main
from suite.paths import DiskFull, disk_full
from suite.tracking import tracking_uri
from test_launch import write_manifest

Usage = namedtuple("Usage", "total used free")


@pytest.fixture
def small_disk(tmp_path):
    """A 2 MiB tmpfs: room for the store, not for a run's checkpoints."""
    folder = tmp_path / "disk"
    folder.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(folder)], capture_output=True,
                             text=True)
    if mounted.returncode:
        pytest.skip(f"cannot mount a tmpfs here: {(mounted.stderr or mounted.stdout).strip()}")
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=True)


def test_a_run_on_a_full_disk_stops_in_one_line_and_resumes_once_there_is_space(small_disk, tmp_path, capsys):
    results, argv = small_disk / "results", ["run", str(write_manifest(tmp_path)), "--no-progress"]
    assert main([*argv, "--results", str(small_disk / "results")]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: no space left to write {results}/") and " MiB free on its disk)" in err, err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert not [p for p in results.rglob("*") if ".tmp" in p.name]  # no partial checkpoint or checksum left

    subprocess.run(["mount", "-o", "remount,size=64m", str(small_disk)], check=True)  # space freed
    assert main([*argv, "--results", str(results)]) == 0
    client = MlflowClient(tracking_uri(results))
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert {r.data.tags["suite.kind"]: r.info.status for r in runs if r.info.status == "FINISHED"}.keys() == {
        "invocation", "arm-run"}
    assert "RUNNING" not in {r.info.status for r in runs}  # the stopped ones were closed by the rerun


@pytest.mark.parametrize("error", [OSError(errno.ENOSPC, "No space left on device"),
                                   RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 7 vs 5")])
def test_a_checkpoint_that_finds_no_space_names_its_path_and_leaves_nothing(error, tmp_path, monkeypatch):
    monkeypatch.setattr(shutil, "disk_usage", lambda path: Usage(2**21, 2**21 - 2048, 2048))

    def short_write(obj, path):
        open(path, "wb").write(b"half")
        raise error

    monkeypatch.setattr("torch.save", short_write)
    with pytest.raises(DiskFull) as full:
        CheckpointSeries(tmp_path, "last").save({"w": 1}, 8)
    assert str(full.value).startswith(f"no space left to write {tmp_path}/last-0000000008.pt (0.0 MiB free")
    assert list(tmp_path.iterdir()) == []


def test_an_error_on_a_disk_with_space_is_not_called_a_full_disk(tmp_path):
    assert disk_full(RuntimeError("unexpected pos 7 vs 5"), tmp_path) is None  # this disk has room
    assert disk_full(ValueError("something else"), tmp_path) is None


def test_a_sqlite_store_whose_disk_is_full_is_one_line_naming_it(results_dir, monkeypatch):
    from mlflow.exceptions import MlflowException

    from suite.tracking import StoreError, Tracker

    tracker = Tracker(results_dir)

    def full(*args, **kwargs):
        raise MlflowException("(sqlite3.OperationalError) database or disk is full\n[SQL: INSERT INTO metrics ...]")

    monkeypatch.setattr(tracker.client.client, "log_batch", full)
    monkeypatch.setattr(shutil, "disk_usage", lambda path: Usage(2**21, 2**21, 0))
    with pytest.raises(StoreError) as failed:
        tracker.log_metrics("0" * 32, {"val_top1_b2": 1.0}, 0)
    message = str(failed.value)
    assert message.startswith(f"the tracking store {tracker.uri} failed (log_batch): no space left to write ")
    assert "(0.0 MiB free on its disk)" in message and "\n" not in message
