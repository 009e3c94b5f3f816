"""Registers the audit page with Airflow 3: the FastAPI app under /rewind-audit on the API server,
and an entry in the UI's Browse menu that shows it inside the Airflow UI."""

from __future__ import annotations

from airflow.plugins_manager import AirflowPlugin

from rewind_airflow.audit.app import URL_PREFIX, app


class RewindAuditPlugin(AirflowPlugin):
    name = "rewind_audit"
    fastapi_apps = [{"app": app, "url_prefix": URL_PREFIX, "name": "Rewind audit"}]
    external_views = [
        {
            "name": "Rewind audit",
            "href": f"{URL_PREFIX}/",
            "url_route": "rewind-audit",
            "destination": "nav",
            "category": "browse",
        }
    ]
