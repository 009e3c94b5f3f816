"""What every Rewind DAG of a cluster shares, in one place, so the workflow files cannot drift:
start date, no catchup, one active run, owner, the cluster's worker queue, retries, tags, who may
run it, and the alert callbacks (an incident when a task fails, resolved when it next succeeds; the
cluster's pagers told of both)."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pendulum

from rewind.inventory import Cluster
from rewind_airflow.notifiers.alerts import RewindAlertNotifier, TaskRecoveredNotifier

START_DATE = pendulum.datetime(2026, 1, 1, tz="UTC")


def alert_callbacks(cluster: Cluster) -> dict[str, Any]:
    pagers = [pager.model_dump(exclude_none=True) for pager in cluster.alerts.pagers]  # plain data in the notifiers
    return {
        "on_failure_callback": RewindAlertNotifier(
            cluster=cluster.name,
            servicenow_conn_id=cluster.connections.servicenow,
            impact=cluster.alerts.impact,
            urgency=cluster.alerts.urgency,
            pagers=pagers,
        ),
        "on_success_callback": TaskRecoveredNotifier(
            cluster=cluster.name, servicenow_conn_id=cluster.connections.servicenow, pagers=pagers
        ),
    }


def cluster_dag_kwargs(
    cluster: Cluster,
    *,
    workflow: str,
    access_control: dict,
    schedule: Any,
    tags: tuple[str, ...] = (),
    retries: int = 1,
    retry_delay: timedelta = timedelta(minutes=5),
    max_active_runs: int = 1,
    default_args: dict[str, Any] | None = None,
    **dag_kwargs: Any,
) -> dict[str, Any]:
    """Keyword arguments for `DAG(...)` of one workflow of one cluster."""
    return {
        "schedule": schedule,
        "start_date": START_DATE,
        "catchup": False,
        "max_active_runs": max_active_runs,
        "access_control": access_control,
        "tags": ["rewind", workflow, *tags, f"cluster:{cluster.name}"],
        "default_args": {
            "owner": "dba",
            "queue": cluster.queue,
            "retries": retries,
            "retry_delay": retry_delay,
            **alert_callbacks(cluster),
            **(default_args or {}),
        },
        **dag_kwargs,
    }
