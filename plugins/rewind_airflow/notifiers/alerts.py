"""Alerting: one deduplicated ServiceNow incident per cluster and problem, and the cluster's pagers
told when it opens and when it resolves.

`RewindAlertNotifier` is every Rewind DAG's on_failure_callback and `TaskRecoveredNotifier` its
on_success_callback; the watchdog's checks call `report_findings` (`raise_alert` / `clear_alert` for
each problem they find or see fixed).

Paging: the cluster's `alerts.pagers` (inventory), each through its Airflow provider's own
notifier and connection: PagerDuty (Events API v2 `trigger` with dedup_key = the incident's
correlation key when it opens, `resolve` with the same key when it resolves), Slack (Web API or
incoming webhook) and e-mail (SMTP), a message when it opens and one when it resolves. Nobody is
paged for a repeat while the incident is open. A pager that fails is logged and skipped: it
neither hides the incident nor fails the task; the ServiceNow incident is the record.
"""

from __future__ import annotations

import html
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from airflow.sdk.bases.notifier import BaseNotifier

from rewind.credentials import bounded, redact
from rewind.incidents import IncidentAction, correlation_key, report_healthy, report_problem
from rewind.inventory import Pager
from rewind_airflow.hooks.pgbackrest import known_secret_values
from rewind_airflow.hooks.servicenow import ServiceNowHook


@dataclass(frozen=True)
class Page:
    """What the pagers are told: an incident opened or resolved."""

    event: Literal["opened", "resolved"]
    cluster: str
    problem: str
    number: str
    summary: str  # opened: what fails; resolved: the note saying what passed
    details: str = ""

    @property
    def dedup_key(self) -> str:
        return correlation_key(self.cluster, self.problem)  # PagerDuty's alert = the incident's key

    @property
    def title(self) -> str:
        if self.event == "opened":
            return f"{self.cluster}: {self.summary} ({self.number})"
        return f"{self.cluster}: resolved {self.problem} ({self.number}): {self.summary}"

    def slack_text(self) -> str:
        # Slack reads &, < and > as markup (<!channel>, links): what Rewind reports is text.
        def text(value: str) -> str:
            return value.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")

        if self.event == "opened":
            details = f"\n```{text(bounded(self.details, 3000))}```" if self.details else ""
            return f":rotating_light: *Rewind: {text(self.title)}*{details}"
        return f":white_check_mark: Rewind: {text(self.title)}"


def provider_notifier(pager: Pager, page: Page) -> BaseNotifier:
    """The provider's notifier that tells `pager` about `page` (imported here, not when a DAG file is parsed)."""
    if pager.type == "pagerduty":
        from airflow.providers.pagerduty.notifications.pagerduty import PagerdutyNotifier

        return PagerdutyNotifier(
            pagerduty_events_conn_id=pager.conn_id,
            action="trigger" if page.event == "opened" else "resolve",
            dedup_key=page.dedup_key,
            summary=bounded(page.title, 1024),
            severity=pager.severity or "critical",
            source=page.cluster,
            component=page.problem,
            group="rewind",
            custom_details={"servicenow_incident": page.number, "problem": page.problem, "details": page.details},
        )
    if pager.type == "slack":
        from airflow.providers.slack.notifications.slack import SlackNotifier

        return SlackNotifier(slack_conn_id=pager.conn_id, channel=pager.channel, text=page.slack_text(), username="Rewind")
    if pager.type == "slack_webhook":
        from airflow.providers.slack.notifications.slack_webhook import SlackWebhookNotifier

        return SlackWebhookNotifier(slack_webhook_conn_id=pager.conn_id, text=page.slack_text())
    if pager.type == "smtp":
        from airflow.providers.smtp.notifications.smtp import SmtpNotifier

        body = f"<p>{html.escape(page.title)}</p>" + (f"<pre>{html.escape(page.details)}</pre>" if page.details else "")
        return SmtpNotifier(smtp_conn_id=pager.conn_id, to=list(pager.to or ()), subject=f"[Rewind] {page.title}", html_content=body)
    raise ValueError(f"unknown pager type {pager.type!r}")


def page(pagers: Sequence[Pager], event: Page, *, log: Callable[[str], None]) -> list[str]:
    """Tell every pager; returns the ones told. A pager that fails is logged and skipped."""
    if os.environ.get("REWIND_PAGERS"):
        log("REWIND_PAGERS is no longer read: pagers are set per cluster in the inventory (alerts.pagers)")
    told = []
    for pager in pagers:
        label = f"{pager.type}:{pager.conn_id}"
        try:
            # notify(), not the notifier's __call__: that would render every field as a Jinja
            # template, and an incident's text is data (an exception message, a finding).
            provider_notifier(pager, event).notify({})
        except Exception as exc:
            log(f"pager {label} could not be told that {event.number} {event.event}: {type(exc).__name__}: {bounded(str(exc), 500)}")
        else:
            told.append(label)
    if told:
        log(f"{event.number} {event.event}: told {', '.join(told)}")
    return told


def pagers_from(data: Sequence[Pager | Mapping[str, Any]]) -> list[Pager]:
    """Pagers as the inventory validates them, from a notifier's plain dicts."""
    return [p if isinstance(p, Pager) else Pager.model_validate(p) for p in data]


def raise_alert(
    *,
    cluster: str,
    problem: str,
    summary: str,
    details: str,
    servicenow_conn_id: str,
    impact: int = 2,
    urgency: int = 2,
    pagers: Sequence[Pager] = (),
    log: Callable[[str], None] = print,
) -> IncidentAction:
    """Open the problem's incident (and page) or add a note to the open one (and page nobody)."""
    client = ServiceNowHook(servicenow_conn_id=servicenow_conn_id).get_conn()
    action = report_problem(
        client, cluster=cluster, problem=problem, summary=f"{cluster}: {summary}", details=details, impact=impact, urgency=urgency
    )
    log(f"incident {action.number} {action.action} for {cluster}/{problem}: {summary}")
    if action.action == "opened" and action.number:
        page(pagers, Page("opened", cluster, problem, action.number, summary, details), log=log)
    return action


def clear_alert(
    *,
    cluster: str,
    problem: str,
    note: str,
    servicenow_conn_id: str,
    pagers: Sequence[Pager] = (),
    log: Callable[[str], None] = print,
) -> IncidentAction:
    """Resolve the problem's open incident, if there is one, and tell the pagers (PagerDuty: resolve)."""
    action = report_healthy(ServiceNowHook(servicenow_conn_id=servicenow_conn_id).get_conn(), cluster=cluster, problem=problem, note=note)
    if action.action == "resolved" and action.number:
        log(f"incident {action.number} resolved for {cluster}/{problem}: {note}")
        page(pagers, Page("resolved", cluster, problem, action.number, note), log=log)
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
                pagers=cluster.alerts.pagers,
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
                pagers=cluster.alerts.pagers,
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

    def __init__(
        self,
        *,
        cluster: str,
        servicenow_conn_id: str = "servicenow_default",
        impact: int = 2,
        urgency: int = 2,
        pagers: Sequence[Mapping[str, Any]] = (),
    ) -> None:
        super().__init__()
        self.cluster = cluster
        self.servicenow_conn_id = servicenow_conn_id
        self.impact = impact
        self.urgency = urgency
        self.pagers = [dict(p) for p in pagers]  # the cluster's alerts.pagers, as plain data

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
            pagers=pagers_from(self.pagers),
            log=self.log.info,
        )


class TaskRecoveredNotifier(BaseNotifier):
    """on_success_callback: a task that succeeds resolves its own open `task_failed` incident, so
    the next failure opens (and pages) a new one instead of adding a note nobody reads."""

    template_fields: Sequence[str] = ("cluster",)

    def __init__(self, *, cluster: str, servicenow_conn_id: str = "servicenow_default", pagers: Sequence[Mapping[str, Any]] = ()) -> None:
        super().__init__()
        self.cluster = cluster
        self.servicenow_conn_id = servicenow_conn_id
        self.pagers = [dict(p) for p in pagers]

    def notify(self, context) -> None:
        ti = context["ti"]
        clear_alert(
            cluster=self.cluster,
            problem=task_problem(context),
            servicenow_conn_id=self.servicenow_conn_id,
            note=f"{ti.dag_id}.{ti.task_id} succeeded in run {context['run_id']}",
            pagers=pagers_from(self.pagers),
            log=self.log.info,
        )
