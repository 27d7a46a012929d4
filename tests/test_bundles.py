"""Offline bundles carry their own proof: import-runs refuses an edited, truncated or foreign bundle before it opens
the store, imports each run once whatever its folder is called or whoever trained it first, and an import killed
half-way leaves nothing the suite reads and is completed by the next."""
import json
import shutil
import sqlite3

import pytest
import yaml
from mlflow.tracking import MlflowClient

from helpers import copy_store, tiny_manifest
from suite.bundles import IMPORTING, SEAL, seal
from suite.checkpoints import sha256_file
from suite.cli import main
from suite.manifest import load_manifest
from suite.tracking import series_key, tracking_uri

MANIFEST = tiny_manifest("tiny_bundle", "offline runs", epochs=2, steps_per_epoch=3)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One offline run: its manifest, the node's run folder and the folder of its (one) bundle."""
    folder = tmp_path_factory.mktemp("offline")
    manifest = folder / "tiny.yaml"
    manifest.write_text(yaml.safe_dump(MANIFEST))
    assert main(["run", str(manifest), "--results", str(folder / "node"), "--offline", str(folder / "bundles"),
                 "--no-progress"]) == 0
    return manifest, folder / "node", folder / "bundles"


@pytest.fixture
def bundles(trained, tmp_path):
    """A copy of the bundles folder this test may change."""
    return shutil.copytree(trained[2], tmp_path / "bundles")


def only_bundle(folder):
    (db,) = folder.glob("*/mlflow.db")
    return db.parent


def runs_of(results, kind=None):
    client = MlflowClient(tracking_uri(results))
    query = f"tags.`suite.kind` = '{kind}'" if kind else ""
    return client, client.search_runs([e.experiment_id for e in client.search_experiments()], query)


def import_runs(bundles, results, capsys):
    code = main(["import-runs", str(bundles), "--results", str(results)])
    out, err = capsys.readouterr()
    return code, out, err


def test_a_sealed_bundle_lists_every_file_with_its_sha256_and_its_run_keys(trained):
    manifest, _, bundles = trained
    bundle = only_bundle(bundles)
    record = json.loads((bundle / SEAL).read_text())
    files = {p.relative_to(bundle).as_posix(): p for p in bundle.rglob("*")
             if p.is_file() and p.name != SEAL and not p.name.endswith(".lock")}
    assert set(record["files"]) == set(files) and "mlflow.db" in files
    assert any(name.endswith("/history.csv") for name in files)
    assert all(record["files"][name] == sha256_file(path) for name, path in files.items())
    assert record["run_keys"] == [load_manifest(manifest).arms[0].run_key(0)]


# -- refused before the store is opened ------------------------------------------------------------------------

def edit_metric(bundle, value=999.0):
    with sqlite3.connect(bundle / "mlflow.db") as db:
        for table in ("metrics", "latest_metrics"):
            db.execute(f"UPDATE {table} SET value = ? WHERE key = 'final_top1_b2'", (value,))
    db.close()


def write_foreign(bundle):
    with sqlite3.connect(bundle / "mlflow.db") as db:
        db.execute("CREATE TABLE notes (text TEXT)")
        db.execute("INSERT INTO notes VALUES ('mine')")
    db.close()


REFUSED = {
    "a metric edited to 999": (edit_metric, "mlflow.db does not match its SHA-256 in bundle.json"),
    "a metric edited to 999 and sealed again": (lambda b: (edit_metric(b), seal(b)),
                                                "metric final_top1_b2 = 999.0 is not a percentage in [0, 100]"),
    "a truncated store": (lambda b: (b / "mlflow.db").write_bytes((b / "mlflow.db").read_bytes()[:4096]),
                          "mlflow.db does not match its SHA-256"),
    "a file missing": (lambda b: next(b.rglob("history.csv")).unlink(),
                       "/artifacts/history.csv is sealed in bundle.json but missing (1 file(s) missing: a truncated "),
    "a file added": (lambda b: (b / "mlflow-artifacts" / "notes.txt").write_text("added"),
                     "mlflow-artifacts/notes.txt was not there when the bundle was sealed"),
    "an unreadable seal": (lambda b: (b / SEAL).write_text("{"), "bundle.json is not a bundle seal"),
}


@pytest.mark.parametrize("case", REFUSED)
def test_an_edited_or_truncated_bundle_is_refused_and_no_store_touched(bundles, tmp_path, capsys, case):
    change, message = REFUSED[case]
    bundle = only_bundle(bundles)
    change(bundle)
    code, out, err = import_runs(bundles, tmp_path / "central", capsys)
    assert code == 2 and err.count("\n") == 1 and "Traceback" not in err
    assert err.startswith(f"error: {bundle}: ") and message in err, err
    assert not (tmp_path / "central").exists()


@pytest.mark.parametrize("case", ["sqlite, not MLflow", "not a database"])
def test_a_foreign_mlflow_db_is_refused_and_left_as_it_was(tmp_path, capsys, case):
    foreign = tmp_path / "bundles" / "someone-elses"
    foreign.mkdir(parents=True)
    if case == "not a database":
        (foreign / "mlflow.db").write_text("a text file\n" * 500)
    else:
        write_foreign(foreign)
    before = (foreign / "mlflow.db").read_bytes()
    code, _, err = import_runs(tmp_path / "bundles", tmp_path / "central", capsys)
    assert code == 2 and err.count("\n") == 1 and f"error: {foreign}: not an MLflow bundle" in err, err
    assert (foreign / "mlflow.db").read_bytes() == before and not (tmp_path / "central").exists()
    assert sorted(p.name for p in foreign.iterdir()) == ["mlflow.db"]


@pytest.mark.parametrize("case", ["no such folder", "a file", "an empty folder"])
def test_nothing_to_import_from_is_one_line_and_creates_no_store(tmp_path, capsys, case):
    given = tmp_path / "given"
    if case == "a file":
        given.write_text("not a folder")
    elif case == "an empty folder":
        given.mkdir()
    code, out, err = import_runs(given, tmp_path / "central", capsys)
    expected = {"no such folder": "no such folder", "a file": "is not a folder",
                "an empty folder": "holds no run bundles"}[case]
    assert code == 2 and err.startswith(f"error: {given}: {expected} ") and err.count("\n") == 1 and not (tmp_path / "central").exists()


def test_a_bundle_not_sealed_yet_waits_for_a_later_import(bundles, tmp_path, capsys):
    (only_bundle(bundles) / SEAL).unlink()  # its job still running, or killed before it ended
    code, out, _ = import_runs(bundles, tmp_path / "central", capsys)
    assert code == 0 and "not sealed, not imported" in out and "nothing to import" in out
    assert not (tmp_path / "central").exists()


# -- imported once, by run key ---------------------------------------------------------------------------------

def test_a_renamed_or_copied_bundle_adds_no_second_run(bundles, empty_store, tmp_path, capsys):
    bundle = only_bundle(bundles)
    moved = tmp_path / "elsewhere"
    shutil.move(bundles, moved)  # moved after sealing: its artifacts are found where the bundle is now
    shutil.copytree(moved / bundle.name, moved / "renamed-copy")
    central = copy_store(empty_store, tmp_path / "central")
    code, out, _ = import_runs(moved, central, capsys)
    assert code == 0 and "imported 2 run(s)" in out and "2 were there already" in out, out
    client, (run,) = runs_of(central, "arm-run")
    assert run.info.status == "FINISHED" and run.data.tags["suite.imported_from"]
    assert {a.path for a in client.list_artifacts(run.info.run_id)} >= {"history.csv", "final_metrics.csv"}
    assert len(runs_of(central)[1]) == 2  # the invocation and its run, once


def test_a_run_trained_online_is_not_imported_again(trained, bundles, tmp_path, capsys):
    manifest, node, _ = trained
    online = tmp_path / "online"
    shutil.copytree(node, online)  # the node's runs folder: its finished run is logged online without training
    assert main(["run", str(manifest), "--results", str(online), "--no-progress"]) == 0
    (trained_online,) = runs_of(online, "arm-run")[1]
    code, out, _ = import_runs(bundles, online, capsys)
    assert code == 0 and "imported 0 run(s)" in out, out
    assert f"finished in the store already (run {trained_online.info.run_id}), skipped" in out
    assert "its runs are all in the store already, skipped" in out  # its invocation adds nothing either
    assert [r.info.run_id for r in runs_of(online, "arm-run")[1]] == [trained_online.info.run_id]
    assert len(runs_of(online, "invocation")[1]) == 1


class Killed(BaseException):
    """The import process killed, as the code in it sees it."""


def killed_at(monkeypatch, method, call, after=False):
    """MlflowClient.``method`` killing the import at its ``call``-th call (before it acts, or ``after``)."""
    real, calls = getattr(MlflowClient, method), []

    def dying(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == call and not after:
            raise Killed
        result = real(self, *args, **kwargs)
        if len(calls) == call:
            raise Killed
        return result

    monkeypatch.setattr(MlflowClient, method, dying)


@pytest.mark.parametrize("point", ["the invocation's artifacts", "the run's artifacts", "the run's status"])
def test_an_import_killed_half_way_leaves_nothing_half_made_and_a_rerun_completes_it(bundles, empty_store, tmp_path,
                                                                                   capsys, monkeypatch, point):
    central = copy_store(empty_store, tmp_path / "central")
    with monkeypatch.context() as m:
        killed_at(m, *{"the invocation's artifacts": ("log_artifacts", 1), "the run's artifacts": ("log_artifacts", 2),
                       "the run's status": ("set_terminated", 2, True)}[point])
        with pytest.raises(Killed):
            main(["import-runs", str(bundles), "--results", str(central)])
    client, seen = runs_of(central)
    assert all("suite.imported_from" in r.data.tags for r in seen if "suite.kind" in r.data.tags)
    assert not [r for r in runs_of(central, "arm-run")[1]]  # the suite sees no half-made run
    capsys.readouterr()
    code, out, _ = import_runs(bundles, central, capsys)
    assert code == 0 and "removed the incomplete copy" in out, out
    client, runs = runs_of(central)
    assert sorted(r.data.tags["suite.kind"] for r in runs) == ["arm-run", "invocation"]
    assert not [r for r in runs if IMPORTING in r.data.tags]
    (run,) = runs_of(central, "arm-run")[1]
    source = MlflowClient(f"sqlite:///{only_bundle(bundles) / 'mlflow.db'}")
    (original,) = source.search_runs(["1"], "tags.`suite.kind` = 'arm-run'")
    assert run.info.status == "FINISHED" and run.data.metrics == original.data.metrics
    assert [m.step for m in client.get_metric_history(run.info.run_id, series_key("val_top1_b2"))] == [0, 1]
    assert {a.path for a in client.list_artifacts(run.info.run_id)} >= {"history.csv", "final_metrics.csv"}
    assert client.get_run(run.data.tags["mlflow.parentRunId"]).data.tags["suite.kind"] == "invocation"
