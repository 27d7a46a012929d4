"""Helpers the tests share: run stores each test owns, copied from stores filled once per session or module."""
from __future__ import annotations

import shutil
import sqlite3
from pathlib import Path

SHIPPED = Path(__file__).resolve().parents[1]
EXPERIMENTS = SHIPPED / "experiments"


def copy_store(source: Path, target: Path) -> Path:
    """A full, independent copy of a run store (MLflow SQLite database, artifacts, checkpoints): the experiments'
    and runs' artifact locations are rewritten to point into the copy."""
    shutil.copytree(source, target)
    old, new = Path(source).resolve().as_uri(), Path(target).resolve().as_uri()
    db = sqlite3.connect(target / "mlflow.db")
    try:
        with db:
            db.execute("UPDATE experiments SET artifact_location = replace(artifact_location, ?, ?)", (old, new))
            db.execute("UPDATE runs SET artifact_uri = replace(artifact_uri, ?, ?)", (old, new))
    finally:
        db.close()
    return target
