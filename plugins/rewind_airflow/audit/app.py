"""The audit page and its CSV export, a FastAPI app on Airflow's API server (plugin.py mounts it).

Read-only: GET routes only. Whoever opens it is who Airflow says they are (the UI's session cookie
or a bearer token, resolved by Airflow's own `get_user`), and sees it only when Airflow's auth
manager lets them read DAG runs, task instances and XComs (FAB: Viewer and up); rows are limited to
the DAGs the auth manager lets them read. Not signed in: the HTML page sends the browser to
Airflow's login, the CSV answers 401.

Airflow is imported inside the functions: every component loads the plugins folder, and a task
process has no business importing the API server.
"""

from __future__ import annotations

import html
import os
from typing import Any
from urllib.parse import quote

from fastapi import Depends, FastAPI, HTTPException, Query, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from rewind.audit import COLUMNS, WORKFLOWS, AuditRow, audit_row, change_url, to_csv
from rewind.pitr.journal import JOURNAL_XCOM_KEY

URL_PREFIX = "/rewind-audit"
# The ServiceNow instance the change numbers link to: the host of this Airflow connection.
SERVICENOW_CONN_ID = os.environ.get("REWIND_AUDIT_SERVICENOW_CONN_ID", "servicenow_default")
MAX_ROWS = 2000

app = FastAPI(title="Rewind audit", description="Every PITR, rehearsal, onboarding and decommissioning run (read-only).")


class NotSignedIn(Exception):
    pass


async def reader(request: Request) -> Any:
    """The signed-in Airflow user (Airflow's own resolution: bearer token, else the UI's cookie)."""
    from airflow.api_fastapi.core_api.security import get_user
    from fastapi.security import HTTPAuthorizationCredentials

    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    credentials = HTTPAuthorizationCredentials(scheme=scheme, credentials=token) if token else None
    try:
        return await get_user(request, None, credentials)
    except HTTPException as exc:
        if exc.status_code in (401, 403):
            raise NotSignedIn(exc.detail) from exc
        raise


@app.exception_handler(NotSignedIn)
async def not_signed_in(request: Request, exc: NotSignedIn) -> Response:
    if request.url.path.endswith(".csv"):
        return Response(f"not signed in: {exc}\n", status_code=401, media_type="text/plain")
    from airflow.api_fastapi.app import get_auth_manager

    return RedirectResponse(get_auth_manager().get_url_login(next_url=str(request.url)), status_code=303)


def readable_dag_ids(user: Any) -> set[str]:
    """The DAGs whose runs, task instances and XComs this user may read; 403 when none of it."""
    from airflow.api_fastapi.app import get_auth_manager
    from airflow.api_fastapi.auth.managers.models.resource_details import DagAccessEntity

    manager = get_auth_manager()
    for entity in (DagAccessEntity.RUN, DagAccessEntity.TASK_INSTANCE, DagAccessEntity.XCOM):
        if not manager.is_authorized_dag(method="GET", access_entity=entity, user=user):
            raise HTTPException(status_code=403, detail=f"reading DAG {entity.name.lower()}s is not allowed for this user")
    return set(manager.get_authorized_dag_ids(user=user, method="GET"))


def load_rows(dag_ids: set[str], limit: int) -> list[AuditRow]:
    """The newest `limit` audited runs of these DAGs, newest first, with their tasks and return values."""
    from airflow.models.dagrun import DagRun
    from airflow.models.taskinstance import TaskInstance
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session
    from sqlalchemy import or_, select

    audited = or_(*(DagRun.dag_id.startswith(f"rewind_{workflow}__", autoescape=True) for workflow in WORKFLOWS))
    rows: list[AuditRow] = []
    with create_session() as session:
        runs = session.scalars(select(DagRun).where(audited, DagRun.dag_id.in_(dag_ids)).order_by(DagRun.id.desc()).limit(limit)).all()
        if not runs:
            return rows
        by_key = {(run.dag_id, run.run_id): run for run in runs}
        tasks: dict[tuple[str, str], dict[str, dict]] = {key: {} for key in by_key}
        tis = session.execute(
            select(
                TaskInstance.dag_id,
                TaskInstance.run_id,
                TaskInstance.task_id,
                TaskInstance.state,
                TaskInstance.start_date,
                TaskInstance.end_date,
            )
            .where(TaskInstance.dag_id.in_({run.dag_id for run in runs}), TaskInstance.run_id.in_({run.run_id for run in runs}))
            .order_by(TaskInstance.start_date.is_(None), TaskInstance.start_date, TaskInstance.task_id)
        ).all()
        for ti in tis:
            if (ti.dag_id, ti.run_id) in tasks:
                tasks[(ti.dag_id, ti.run_id)][ti.task_id] = {
                    "state": ti.state and str(ti.state),
                    "start_date": ti.start_date,
                    "end_date": ti.end_date,
                }
        xcoms: dict[int, dict[str, Any]] = {run.id: {} for run in runs}
        journals: dict[int, dict[str, Any]] = {run.id: {} for run in runs}
        for xcom in session.scalars(
            select(XComModel).where(
                XComModel.dag_run_id.in_(list(xcoms)), XComModel.key.in_(("return_value", JOURNAL_XCOM_KEY)), XComModel.map_index == -1
            )
        ):
            into = xcoms if xcom.key == "return_value" else journals
            into[xcom.dag_run_id][xcom.task_id] = XComModel.deserialize_value(xcom)
        for (dag_id, run_id), run in by_key.items():
            row = audit_row(
                {
                    "dag_id": dag_id,
                    "run_id": run_id,
                    "state": run.state and str(run.state),
                    "start_date": run.start_date,
                    "end_date": run.end_date,
                    "triggering_user_name": run.triggering_user_name,
                    "conf": run.conf or {},
                    "note": run.note,
                },
                tasks[(dag_id, run_id)],
                xcoms[run.id],
                journals[run.id],
            )
            if row:
                rows.append(row)
    return rows


def servicenow_base() -> str:
    """https://<instance> from the ServiceNow connection; empty (no links) when it is not configured."""
    from airflow.models.connection import Connection

    try:
        conn = Connection.get_connection_from_secrets(SERVICENOW_CONN_ID)
    except Exception:
        return ""
    if not conn.host:
        return ""
    return f"{conn.schema or 'https'}://{conn.host}{f':{conn.port}' if conn.port else ''}"


@app.get("/", response_class=HTMLResponse)
def page(request: Request, user: Any = Depends(reader), limit: int = Query(500, ge=1, le=MAX_ROWS)) -> HTMLResponse:
    rows = load_rows(readable_dag_ids(user), limit)
    return HTMLResponse(render(rows, servicenow=servicenow_base(), root=request.scope.get("root_path", ""), user=user.get_name()))


@app.get("/audit.csv")
def csv_export(user: Any = Depends(reader), limit: int = Query(MAX_ROWS, ge=1, le=MAX_ROWS)) -> Response:
    rows = load_rows(readable_dag_ids(user), limit)
    return Response(
        to_csv(rows, servicenow_base=servicenow_base()),
        media_type="text/csv; charset=utf-8",
        headers={"Content-Disposition": 'attachment; filename="rewind-audit.csv"'},
    )


STYLE = """
body { font-family: system-ui, sans-serif; margin: 1rem; color: #1a202c; }
table { border-collapse: collapse; font-size: 13px; }
th, td { border: 1px solid #cbd5e0; padding: 4px 6px; vertical-align: top; text-align: left; }
th { background: #edf2f7; position: sticky; top: 0; }
td.reason, td.downtime, td.outcome { white-space: pre-line; }
tr.failed td.outcome { color: #c53030; font-weight: 600; }
tr.success td.outcome { color: #276749; }
.meta { color: #4a5568; margin: 0.5rem 0 1rem; }
"""


def render(rows: list[AuditRow], *, servicenow: str, root: str, user: str) -> str:
    """The table. Every value is escaped; run ids and change numbers are links."""
    ui = root[: -len(URL_PREFIX)] if root.endswith(URL_PREFIX) else ""
    e = html.escape
    head = "".join(f'<th scope="col" data-column="{name}">{e(title)}</th>' for name, title in COLUMNS)
    body = []
    for row in rows:
        values = row.as_dict()
        cells = []
        for name, _ in COLUMNS:
            value = values[name]
            if name == "run_id":
                href = f"{ui}/dags/{quote(row.dag_id, safe='')}/runs/{quote(row.run_id, safe='')}"
                content = f'<a href="{e(href)}" target="_top">{e(value)}</a>'
            elif name == "change_number" and value and servicenow:
                content = f'<a href="{e(change_url(servicenow, value))}" target="_blank" rel="noopener">{e(value)}</a>'
            else:
                content = e(value)
            cells.append(f'<td class="{name}">{content}</td>')
        state = row.outcome.split(" ")[0].rstrip(":")
        body.append(f'<tr class="{e(state)}" data-dag-id="{e(row.dag_id)}" data-run-id="{e(row.run_id)}">{"".join(cells)}</tr>')
    empty = f'<tr><td colspan="{len(COLUMNS)}">No PITR, rehearsal, onboarding or decommissioning run yet.</td></tr>'
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Rewind audit</title><style>{STYLE}</style></head>
<body>
<h1>Rewind audit</h1>
<p class="meta">Every PITR, rehearsal, onboarding and decommissioning run, newest first ({len(rows)} shown), as seen by {e(user)}.
Read-only. <a id="csv" href="{e(root)}/audit.csv" download>Download CSV</a></p>
<table id="audit"><thead><tr>{head}</tr></thead><tbody>{"".join(body) or empty}</tbody></table>
</body></html>
"""
