"""MLflow's UI opening on its training view: ``mlflow ui --app-name suite`` (``tox -e ui``).

MLflow's web app remembers the view a browser last chose (GenAI or model training) in its local storage and starts
new browsers on GenAI, so a run page reached from the runs table switches to the GenAI layout. This app is MLflow's
own server with one addition: its page sets the remembered view to model training where the browser has none yet.
A researcher who picks GenAI keeps it. Likewise the assistant panel, which opens by itself on a first visit from
127.0.0.1 and covers a third of the runs table, starts closed. Only the UI imports this module.
"""
from __future__ import annotations

import json

from mlflow.server import app as flask_app
from mlflow.server.fastapi_app import app  # the ASGI app `mlflow ui` serves: MLflow's, unchanged

__all__ = ["app"]

# The web app's local-storage keys (its useLocalStorage hook stores `${key}_v${version}` as JSON) and the values a
# new browser starts with here.
DEFAULTS = {"mlflow.workflowType_v1": "machine_learning", "mlflow.assistant.fab.autoOpenedOnFirstLoad_v1": True}
SCRIPT = "<script>try{%s}catch(e){}</script>" % "".join(
    f'if(!localStorage.getItem("{k}"))localStorage.setItem("{k}",{json.dumps(json.dumps(v))});'
    for k, v in DEFAULTS.items())


@flask_app.after_request
def _training_view_by_default(response):
    if response.mimetype == "text/html" and response.status_code == 200:
        response.direct_passthrough = False  # the page is served as a file: read it to edit it
        page = response.get_data(as_text=True)
        if "<head>" in page and SCRIPT not in page:
            response.set_data(page.replace("<head>", "<head>" + SCRIPT, 1))
    return response
