"""MLflow's UI opening on its training view: ``mlflow ui --app-name suite`` (``tox -e ui``).

MLflow's web app remembers the view a browser last chose (GenAI or model training) in its local storage and starts
new browsers on GenAI, so a run page reached from the runs table switches to the GenAI layout. This app is MLflow's
own server with two additions to its page, both local-storage values set only where the browser has none of its own:
the remembered view is model training (a researcher who picks GenAI keeps it), and the assistant panel, which opens
by itself on a first visit from 127.0.0.1 and covers a third of the runs table, starts closed. And each experiment's
saved runs-table view starts as the one the suite stored on the experiment (``suite.ui_view``: each arm's final
top-1 per bit-width as columns, every invocation's runs expanded); a parent run that arrived since is expanded
too, unless the researcher collapsed it. Only the UI imports this module.
"""
from __future__ import annotations

import json
import logging

from mlflow.server import app as flask_app
from mlflow.server.fastapi_app import app  # the ASGI app `mlflow ui` serves: MLflow's, unchanged
from mlflow.server.handlers import _get_tracking_store

from suite.ui_view import VIEW_TAG

__all__ = ["app"]

# The web app's local-storage keys (its useLocalStorage hook stores `${key}_v${version}` as JSON) and the values a
# new browser starts with here.
DEFAULTS = {"mlflow.workflowType_v1": "machine_learning", "mlflow.assistant.fab.autoOpenedOnFirstLoad_v1": True}
# Where the web app saves an experiment page's state (its LocalStorageUtils: scope "ExperimentPage-" + the JSON of
# the sorted experiment ids).
SAVED_VIEW = 'MLflowLocalStorage-1.1-ExperimentPage-["%s"]-ReactComponentState'
MARK = "<!-- suite defaults -->"
SEED_VIEWS = """var views=%s;for(var id in views){var k=%s.replace("%%s",id),v=views[id],s=localStorage.getItem(k);
if(!s){localStorage.setItem(k,JSON.stringify(v));continue}s=JSON.parse(s);var e=s.runsExpanded||{};
for(var p in v.runsExpanded)if(!(p in e))e[p]=true;s.runsExpanded=e;localStorage.setItem(k,JSON.stringify(s))}"""


def views() -> dict[str, dict]:
    """experiment id -> the runs-table view the suite stored on it, for every active experiment that has one."""
    try:
        experiments = _get_tracking_store().search_experiments(max_results=1000)
    except Exception:  # noqa: BLE001  (the page is served anyway; a browser keeps MLflow's own default view)
        logging.getLogger(__name__).warning("runs-table views not read from the store", exc_info=True)
        return {}
    out = {}
    for exp in experiments:
        try:
            out[exp.experiment_id] = json.loads(exp.tags[VIEW_TAG])
        except (KeyError, ValueError):
            continue
    return out


def script() -> str:
    defaults = "".join(f'if(!localStorage.getItem("{k}"))localStorage.setItem("{k}",{json.dumps(json.dumps(v))});'
                       for k, v in DEFAULTS.items())
    seed = SEED_VIEWS % (json.dumps(views()).replace("</", "<\\/"), json.dumps(SAVED_VIEW))
    return f"{MARK}<script>try{{{defaults}{seed}}}catch(e){{}}</script>"


@flask_app.after_request
def _training_view_by_default(response):
    if response.mimetype == "text/html" and response.status_code == 200:
        response.direct_passthrough = False  # the page is served as a file: read it to edit it
        page = response.get_data(as_text=True)
        if "<head>" in page and MARK not in page:
            response.set_data(page.replace("<head>", "<head>" + script(), 1))
    return response
