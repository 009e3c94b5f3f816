"""Alerting: page the on-call and open a deduplicated ServiceNow incident, or resolve it.

`RewindAlertNotifier` is every Rewind DAG's on_failure_callback; the watchdog's checks call
`raise_alert` / `clear_alert` directly for each problem they find or see fixed.

Paging is configured with $REWIND_PAGERS, a comma-separated list of `smtp:<conn_id>:<address>`
(through the SMTP provider); unset, nobody is paged (the local stack). Paging happens when an
incident is opened, not for every repeat while it is open.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence

from airflow.sdk.bases.notifier import BaseNotifier

from rewind.credentials import bounded, redact
from rewind.incidents import IncidentAction, report_healthy, report_problem
from rewind_airflow.hooks.pgbackrest import known_secret_values
from rewind_airflow.hooks.servicenow import ServiceNowHook


def page(summary: str, details: str, *, log: Callable[[str], None]) -> list[str]:
    paged = []
    for target in filter(None, (t.strip() for t in os.environ.get("REWIND_PAGERS", "").split(","))):
        kind, _, rest = target.partition(":")
        if kind == "smtp":
            from airflow.providers.smtp.hooks.smtp import SmtpHook

            conn_id, _, address = rest.partition(":")
            with SmtpHook(smtp_conn_id=conn_id) as smtp:
                smtp.send_email_smtp(to=address, subject=f"[Rewind] {summary}", html_content=f"<pre>{details}</pre>")
            paged.append(target)
        else:
            log(f"unknown pager {target!r} in REWIND_PAGERS (supported: smtp:<conn_id>:<address>)")
    return paged


def raise_alert(
    *,
    cluster: str,
    problem: str,
    summary: str,
    details: str,
    servicenow_conn_id: str,
    impact: int = 2,
    urgency: int = 2,
    log: Callable[[str], None] = print,
) -> IncidentAction:
    client = ServiceNowHook(servicenow_conn_id=servicenow_conn_id).get_conn()
    action = report_problem(
        client, cluster=cluster, problem=problem, summary=f"{cluster}: {summary}", details=details, impact=impact, urgency=urgency
    )
    log(f"incident {action.number} {action.action} for {cluster}/{problem}: {summary}")
    if action.action == "opened":
        page(f"{cluster}: {summary} ({action.number})", details, log=log)
    return action


def clear_alert(*, cluster: str, problem: str, note: str, servicenow_conn_id: str, log: Callable[[str], None] = print) -> IncidentAction:
    action = report_healthy(ServiceNowHook(servicenow_conn_id=servicenow_conn_id).get_conn(), cluster=cluster, problem=problem, note=note)
    if action.action == "resolved":
        log(f"incident {action.number} resolved for {cluster}/{problem}: {note}")
    return action


def report_findings(cluster, findings, *, log: Callable[[str], None] = print) -> None:
    """Raise an alert for every failing finding and clear it for every passing one."""
    for finding in findings:
        log(f"{finding.problem:<16} {'ok  ' if finding.ok else 'FAIL'}  {finding.summary} {finding.details if not finding.ok else ''}")
        if finding.ok:
            clear_alert(
                cluster=cluster.name,
                problem=finding.problem,
                note=finding.summary,
                servicenow_conn_id=cluster.connections.servicenow,
                log=log,
            )
        else:
            raise_alert(
                cluster=cluster.name,
                problem=finding.problem,
                summary=finding.summary,
                details=finding.details,
                servicenow_conn_id=cluster.connections.servicenow,
                impact=cluster.alerts.impact,
                urgency=cluster.alerts.urgency,
                log=log,
            )


def task_problem(context) -> str:
    ti = context["ti"]
    return f"task_failed.{ti.dag_id}.{ti.task_id}"


class RewindAlertNotifier(BaseNotifier):
    """on_failure_callback: one incident per cluster and failing task, deduplicated; none for a
    refusal that is the product working as designed (an exception with opens_incident = False: a
    typo in the form, a rejected change, a second trigger)."""

    template_fields: Sequence[str] = ("cluster",)

    def __init__(self, *, cluster: str, servicenow_conn_id: str = "servicenow_default", impact: int = 2, urgency: int = 2) -> None:
        super().__init__()
        self.cluster = cluster
        self.servicenow_conn_id = servicenow_conn_id
        self.impact = impact
        self.urgency = urgency

    def notify(self, context) -> None:
        ti = context["ti"]
        exception = context.get("exception")
        if not getattr(exception, "opens_incident", True):
            self.log.info("no incident for %s.%s: %s", ti.dag_id, ti.task_id, exception)
            return
        raise_alert(
            cluster=self.cluster,
            problem=task_problem(context),
            summary=f"{ti.dag_id}.{ti.task_id} failed",
            details=bounded(redact(f"run {context['run_id']}, try {ti.try_number}: {exception}", known_secret_values()), 3000),
            servicenow_conn_id=self.servicenow_conn_id,
            impact=self.impact,
            urgency=self.urgency,
            log=self.log.info,
        )


class TaskRecoveredNotifier(BaseNotifier):
    """on_success_callback: a task that succeeds resolves its own open `task_failed` incident, so
    the next failure opens (and pages) a new one instead of adding a note nobody reads."""

    template_fields: Sequence[str] = ("cluster",)

    def __init__(self, *, cluster: str, servicenow_conn_id: str = "servicenow_default") -> None:
        super().__init__()
        self.cluster = cluster
        self.servicenow_conn_id = servicenow_conn_id

    def notify(self, context) -> None:
        ti = context["ti"]
        clear_alert(
            cluster=self.cluster,
            problem=task_problem(context),
            servicenow_conn_id=self.servicenow_conn_id,
            note=f"{ti.dag_id}.{ti.task_id} succeeded in run {context['run_id']}",
            log=self.log.info,
        )
