"""MLflow's UI opening on its training view: ``mlflow ui --app-name suite`` (``tox -e ui``).

MLflow's web app remembers the view a browser last chose (GenAI or model training) in its local storage and starts
new browsers on GenAI, so a run page reached from the runs table switches to the GenAI layout. This app is MLflow's
own server with one addition: its page sets the remembered view to model training where the browser has none yet.
A researcher who picks GenAI keeps it. Only the UI imports this module.
"""
from __future__ import annotations

from mlflow.server import app as flask_app
from mlflow.server.fastapi_app import app  # noqa: F401  (the ASGI app `mlflow ui` serves: MLflow's, unchanged)

VIEW_KEY = "mlflow.workflowType_v1"  # the web app's local-storage key (useLocalStorage: `${key}_v${version}`)
TRAINING_VIEW = (f'<script>try{{if(!localStorage.getItem("{VIEW_KEY}"))'
                 f'localStorage.setItem("{VIEW_KEY}",JSON.stringify("machine_learning"))}}catch(e){{}}</script>')


@flask_app.after_request
def _training_view_by_default(response):
    if response.mimetype == "text/html" and response.status_code == 200:
        response.direct_passthrough = False  # the page is served as a file: read it to edit it
        page = response.get_data(as_text=True)
        if "<head>" in page and VIEW_KEY not in page:
            response.set_data(page.replace("<head>", "<head>" + TRAINING_VIEW, 1))
    return response
