import pytest
import torch

from helpers import copy_store
from suite.tracking import Tracker

torch.set_num_threads(2)


@pytest.fixture(scope="session")
def empty_store(tmp_path_factory):
    """An empty MLflow SQLite store, created once: its schema migrations take seconds."""
    path = tmp_path_factory.mktemp("empty_store")
    Tracker(path).client.search_experiments()  # creates and migrates the database
    return path


@pytest.fixture
def results_dir(empty_store, tmp_path):
    """A run store this test owns (a copy of the empty one)."""
    return copy_store(empty_store, tmp_path / "results")


@pytest.fixture(autouse=True)
def _local_tracking(monkeypatch):
    # Tests always use their own store, never a team server configured in the environment.
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
