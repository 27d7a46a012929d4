"""The runs-table view MLflow's UI opens an experiment on: which metric columns it shows, which parent runs it
opens expanded, and where that is stored. Imports nothing heavy: the UI (``suite.mlflow_ui``) reads it too.

The view is the experiment tag MLflow's own "share view" link reads (``#/experiments/<id>?viewStateShareKey=suite``,
any MLflow server); that link applies the columns only. ``suite.mlflow_ui`` also makes the view a new browser's
saved view of the experiment, expanded parents included.
"""
from __future__ import annotations

import json

VIEW_KEY = "suite"
VIEW_TAG = f"mlflow.sharedViewState.{VIEW_KEY}"
MAX_EXPANDED = 200  # parent runs a view opens expanded (the newest); the tag stays far below MLflow's 20000 chars


def runs_view(columns: list[str], parents: list[str]) -> str:
    """The view: these metric columns, and the parent runs ``parents`` (newest first) expanded."""
    return json.dumps({"selectedColumns": [f"metrics.`{c}`" for c in columns],
                       "runsExpanded": {p: True for p in parents[:MAX_EXPANDED]}})
