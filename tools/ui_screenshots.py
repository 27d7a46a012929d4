"""Screenshots of MLflow's UI as a researcher meets it, from a run store: the experiments list, an experiment's runs
table, a run's overview and metrics, a compare of two runs, and the costs' runs table and parent run.

    .tox/suite/bin/python tools/ui_screenshots.py [--results results] [--out reports/ui] [--experiment NAME]

Starts `mlflow ui` as `tox -e ui` does (127.0.0.1, a free port, one worker, no job consumers, the training view
by default), drives headless Chromium
(/usr/bin/chromium; Debian's `chromium` package) with a virtual-time budget so the single-page app renders, writes
one PNG per page, and stops the server. Nothing leaves the machine.
"""
from __future__ import annotations

import argparse
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from mlflow.tracking import MlflowClient

CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--hide-scrollbars", "--window-size=1600,1000",
                  "--run-all-compositor-stages-before-draw"]  # else charts stay spinners however long they wait
# Virtual milliseconds a page gets to render; charts load their series after the page itself.
BUDGET_MS, CHARTS_BUDGET_MS = 15_000, 30_000


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_ui(results: Path, port: int) -> subprocess.Popen:
    mlflow = Path(sys.executable).with_name("mlflow")
    env = os.environ | {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    server = subprocess.Popen([str(mlflow), "ui", "--app-name", "suite", "--backend-store-uri", f"sqlite:///{results.resolve()}/mlflow.db",
                               "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env, start_new_session=True)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2).close()
            return server
        except OSError:
            time.sleep(0.5)
    server.kill()
    raise SystemExit(f"mlflow ui did not answer on 127.0.0.1:{port} within 60 s")


def pages(results: Path, base: str, experiment: str | None) -> dict[str, str]:
    """name -> URL of the pages a researcher opens from the README's link: those of ``experiment`` (default: the
    newest with training runs), and the runs table and parent run of the costs (Table 4) if the store has them."""
    client = MlflowClient(f"sqlite:///{results.resolve()}/mlflow.db")
    exps = [e for e in client.search_experiments() if e.name not in ("Default", "reports")]

    def kind(exp, name, n):
        return client.search_runs([exp.experiment_id], f"tags.`suite.kind` = '{name}'", max_results=n)

    trained = [e for e in exps if kind(e, "arm-run", 1)]
    exp = next((e for e in exps if e.name == experiment), trained[0] if trained else None)
    out = {"1-experiments": f"{base}/#/experiments?workflowType=machine_learning"}
    if exp is not None:
        out["2-runs-table"] = f"{base}/#/experiments/{exp.experiment_id}"
        children, parents = kind(exp, "arm-run", 2), kind(exp, "invocation", 1)
        if parents:
            out["3-parent-overview"] = f"{base}/#/experiments/{exp.experiment_id}/runs/{parents[0].info.run_id}"
        if children:
            run = children[0].info.run_id
            out["4-run-overview"] = f"{base}/#/experiments/{exp.experiment_id}/runs/{run}"
            out["5-run-metrics"] = f"{base}/#/experiments/{exp.experiment_id}/runs/{run}/model-metrics"
        if len(children) == 2:
            ids = ",".join(f'"{r.info.run_id}"' for r in children)
            out["6-compare"] = f"{base}/#/compare-runs?runs=[{ids}]&experiments=[\"{exp.experiment_id}\"]"
    costs = next((e for e in exps if kind(e, "cost-run", 1)), None)
    if costs is not None:
        out["7-costs-runs-table"] = f"{base}/#/experiments/{costs.experiment_id}"
        parent = kind(costs, "invocation", 1)
        if parent:
            out["8-costs-parent"] = f"{base}/#/experiments/{costs.experiment_id}/runs/{parent[0].info.run_id}"
    return out


def screenshot(url: str, png: Path) -> None:
    """A fresh browser profile per page: what a new browser shows (no view saved yet)."""
    chromium = shutil.which("chromium") or "/usr/bin/chromium"
    budget = CHARTS_BUDGET_MS if url.endswith("model-metrics") or "compare-runs" in url else BUDGET_MS
    with tempfile.TemporaryDirectory() as profile:
        subprocess.run([chromium, *CHROMIUM_FLAGS, f"--virtual-time-budget={budget}", f"--user-data-dir={profile}",
                        f"--screenshot={png}", url],
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=120, check=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--results", type=Path, default=Path("results"), help="the run store (default: results)")
    parser.add_argument("--out", type=Path, default=Path("reports/ui"), help="PNG folder (default: reports/ui)")
    parser.add_argument("--experiment", default=None,
                        help="the experiment to open (default: the newest with training runs)")
    args = parser.parse_args()
    if not (args.results / "mlflow.db").exists():
        raise SystemExit(f"no run store at {args.results / 'mlflow.db'}: run `tox -e quickstart` first")
    args.out.mkdir(parents=True, exist_ok=True)
    port = free_port()
    server = start_ui(args.results, port)
    try:
        for name, url in pages(args.results, f"http://127.0.0.1:{port}", args.experiment).items():
            screenshot(url, args.out / f"{name}.png")
            print(f"{args.out / name}.png  {url}")
    finally:
        os.killpg(server.pid, 15)
        server.wait(timeout=30)
    return 0


if __name__ == "__main__":
    sys.exit(main())
