"""A DAG run's note, set through Airflow's public REST API (the execution API cannot change it)."""

from __future__ import annotations

import time

from airflow.sdk import BaseHook

from rewind.airflow_rest import AirflowRestClient, bounded_note


def airflow_rest_client(conn_id: str) -> AirflowRestClient | None:
    """Airflow's public REST API as the connection's user; None when the connection is not configured."""
    try:
        conn = BaseHook.get_connection(conn_id)
    except Exception:  # not configured
        return None
    return AirflowRestClient(f"{conn.schema or 'http'}://{conn.host}:{conn.port or 8080}", conn.login, conn.password)


def set_run_note(operator, context, note: str, *, where_the_rest_is: str = "the task log has all of it", attempts: int = 3) -> bool:
    """The note of the run `context` belongs to, through the operator's `airflow_api_conn_id`. Best
    effort: the work is done and its result is in the task log and XCom either way."""
    log, conn_id = operator.log, operator.airflow_api_conn_id
    dag_id, run_id = context["ti"].dag_id, context["run_id"]
    note = bounded_note(note, where_the_rest_is)
    client = airflow_rest_client(conn_id)
    if client is None:
        log.warning("connection %r not configured: run note not set", conn_id)
        return False
    for attempt in range(attempts):
        try:
            client.set_run_note(dag_id, run_id, note)
            return True
        except Exception as exc:
            log.warning("setting the run note failed (attempt %d): %s", attempt + 1, exc)
            time.sleep(2)
    return False
