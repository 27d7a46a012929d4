"""``suite doctor``: it passes on a healthy machine at the smoke profile, and each of its checks fails when the
thing it checks is broken (missing data, a memory budget too small, an unreachable store, a diverging rank)."""

import pytest
import yaml

from helpers import EXPERIMENTS, free_port
from suite.cli import main
from suite.doctor import distributed, store
from suite.doctor.checks import Options
from suite.doctor.preflight import failed, render, run_doctor
from suite.manifest import load_manifest

TINY = {
    "name": "tiny_doctor", "version": 1, "title": "doctor", "paper": {"ref": "none"},
    "data": {"dataset": "digits", "image_size": 8, "train_limit": 128, "val_limit": 64},
    "model": {"arch": "resnet8"}, "method": {"name": "mbquant", "bits": [2, 4]},
    "recipe": {"epochs": 1, "batch_size": 32, "steps_per_epoch": 2}, "seeds": [0, 1], "profiles": {"paper": {}},
}


def tiny(tmp_path, **data):
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump({**TINY, "data": {**TINY["data"], **data}}))
    return load_manifest(path)


def by_area(checks, area):
    return [c for c in checks if c.area == area]


def test_a_healthy_manifest_passes_the_local_checks(tmp_path):
    checks = run_doctor(tiny(tmp_path), Options(tmp_path / "results", distributed=False), echo=lambda _: None)
    assert not failed(checks), render(checks)
    assert {c.area for c in checks} == {"environment", "step", "data", "store"}
    (step,) = [c for c in checks if c.name == "mbquant: joint step"]
    assert "img/s" in step.measured and "GiB" in step.measured and step.threshold.startswith("memory <=")
    assert not list((tmp_path / "results").glob(".doctor-*"))  # the probe checkpoint is gone


def test_missing_data_fails_naming_where_it_was_expected(tmp_path):
    loaded = tiny(tmp_path, dataset="cifar100", image_size=32, root=str(tmp_path / "nowhere"), train_limit=None,
                  val_limit=None)
    checks = run_doctor(loaded, Options(tmp_path / "results", distributed=False), echo=lambda _: None)
    (data,) = by_area(checks, "data")
    assert data.status == "fail" and str(tmp_path / "nowhere") in data.measured and failed(checks)


def test_a_memory_budget_smaller_than_the_step_fails(tmp_path):
    checks = run_doctor(tiny(tmp_path), Options(tmp_path / "results", memory_gib=0.01, distributed=False),
                        echo=lambda _: None)
    (step,) = [c for c in checks if c.name == "mbquant: joint step"]
    assert step.status == "fail" and step.threshold == "memory <= 0.0 GiB" and "batch_size" in step.note


def test_an_unreachable_tracking_store_fails_within_its_deadline(tmp_path, monkeypatch):
    port = free_port()  # a port nothing listens on
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{port}")
    check = store.tracking_check(tmp_path)
    assert check.status == "fail" and f"127.0.0.1:{port}" in check.measured


def test_a_rank_that_diverges_fails_the_distributed_check():
    """Two gloo processes under torchrun; rank 1 sees shifted images, so the world no longer trains as one."""
    checks = {c.name: c for c in distributed.checks(None, perturb_rank=1)}
    ddp = checks["DDP + SyncBN steps (2 processes vs one)"]
    assert ddp.status == "fail" and "first step's losses within" in ddp.measured
    assert checks["all-reduce (2 x gloo, cpu)"].status == "pass"


@pytest.mark.slow
def test_doctor_passes_at_the_smoke_profile_through_the_command_line(tmp_path, capsys):
    """The whole preflight of Table 3's smoke profile on this CPU, 2 gloo processes included: exit 0, a table."""
    code = main(["doctor", str(EXPERIMENTS / "table3_cifar100_resnet20_2468.yaml"), "--profile", "smoke",
                 "--results", str(tmp_path / "results"), "--json", str(tmp_path / "doctor.json")])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "DDP + SyncBN steps (2 processes vs one)" in out and "0 fail" in out
    assert "sharded evaluation" in out and "tracking store" in out and (tmp_path / "doctor.json").exists()
