import pytest
import torch

torch.set_num_threads(2)


@pytest.fixture(scope="session")
def results_dir(tmp_path_factory):
    """One MLflow SQLite store for the whole session: creating one costs seconds (schema migrations)."""
    return tmp_path_factory.mktemp("results")


@pytest.fixture(autouse=True)
def _local_tracking(monkeypatch):
    # Tests always use their own store, never a team server configured in the environment.
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
