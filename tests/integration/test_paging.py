"""Paging through the providers' own notifiers to loopback servers: the PagerDuty Events API v2
simulator (reached the way the provider reaches PagerDuty: https://events.pagerduty.com, here
through the simulator's CONNECT proxy and CA), the Slack Web API and incoming-webhook simulator,
and a real SMTP server. ServiceNow is the simulator; it keeps the incidents of the whole session,
so every test uses its own cluster names."""

from __future__ import annotations

import pytest

from devstack.pager_sims import PAGERDUTY_EVENTS_HOST, PagerDutySimulator, SlackSimulator
from rewind.health import Finding
from rewind.incidents import correlation_key
from tests.factories import cluster, cluster_doc, inventory
from tests.fakes import FakeTaskInstance
from tests.integration.helpers import client, incidents_for

pytestmark = pytest.mark.integration

PAGERDUTY = {"type": "pagerduty", "conn_id": "pagerduty_dba"}
SLACK = {"type": "slack", "conn_id": "slack_dba", "channel": "#dba-oncall"}
SLACK_WEBHOOK = {"type": "slack_webhook", "conn_id": "slack_crm"}
MAIL = {"type": "smtp", "conn_id": "smtp_oncall", "to": "oncall@example.com"}


@pytest.fixture
def pagerduty(tmp_path, monkeypatch):
    """The Events API simulator as connection pagerduty_dba (its routing key), and this process's
    proxy and CA environment pointing the provider's https://events.pagerduty.com at it."""
    simulator = PagerDutySimulator(tmp_path / "pagerduty").start()
    for name, value in simulator.client_env().items():
        monkeypatch.setenv(name, value)
    simulator.routing_key = simulator.state.add_routing_key()
    monkeypatch.setenv("AIRFLOW_CONN_PAGERDUTY_DBA", simulator.airflow_connection(simulator.routing_key))
    try:
        yield simulator
    finally:
        simulator.stop()


@pytest.fixture
def slack(monkeypatch):
    """The Slack simulator as connections slack_dba (Web API, bot token) and slack_crm (an incoming
    webhook into #crm-oncall)."""
    simulator = SlackSimulator().start()
    simulator.state.add_channel("#dba-oncall")
    monkeypatch.setenv("AIRFLOW_CONN_SLACK_DBA", simulator.api_connection())
    monkeypatch.setenv("AIRFLOW_CONN_SLACK_CRM", simulator.webhook_connection("#crm-oncall"))
    try:
        yield simulator
    finally:
        simulator.stop()


def failing(problem: str = "archive_failing") -> list[Finding]:
    return [Finding(problem, False, "WAL archiving is failing", "last attempt failed: 000000010000000000000042")]


def passing(problem: str = "archive_failing") -> list[Finding]:
    return [Finding(problem, True, "archiving ok")]


def pd_events(pagerduty) -> list[tuple[str, str]]:
    return [(event["event_action"], event["dedup_key"]) for event in pagerduty.state.events]


def test_an_incident_pages_everyone_once_when_it_opens_and_resolves_pagerduty_and_tells_the_others(
    servicenow, pagerduty, slack, smtp_inbox
):
    from rewind_airflow.notifiers.alerts import report_findings

    ledger = cluster("paging-ledger", alerts={"pagers": [PAGERDUTY, SLACK, MAIL]})
    key = correlation_key("paging-ledger", "archive_failing")
    log: list[str] = []

    report_findings(ledger, failing(), log=log.append)
    [incident] = incidents_for(servicenow, "paging-ledger")
    number = incident["number"]
    [trigger] = pagerduty.state.events
    assert (trigger["event_action"], trigger["dedup_key"], trigger["routing_key"]) == ("trigger", key, pagerduty.routing_key)
    assert trigger["payload"]["summary"] == f"paging-ledger: WAL archiving is failing ({number})"
    assert (trigger["payload"]["severity"], trigger["payload"]["source"]) == ("critical", "paging-ledger")
    assert trigger["payload"]["custom_details"]["servicenow_incident"] == number
    # the provider's own URL, over TLS verified against the simulator's CA
    assert {(r["host"], r["path"]) for r in pagerduty.state.requests} == {(PAGERDUTY_EVENTS_HOST, "/v2/enqueue")}
    [opened] = slack.state.texts("#dba-oncall")
    assert opened.startswith(f":rotating_light: *Rewind: paging-ledger: WAL archiving is failing ({number})*")
    [mail] = smtp_inbox.messages
    assert (
        mail.rcpt_tos == ["oncall@example.com"]
        and f"Subject: [Rewind] paging-ledger: WAL archiving is failing ({number})" in mail.content.decode()
    )
    assert f"{number} opened: told pagerduty:pagerduty_dba, slack:slack_dba, smtp:smtp_oncall" in log

    report_findings(ledger, failing(), log=log.append)  # still failing: a note on the incident, nobody paged
    assert len(incidents_for(servicenow, "paging-ledger")) == 1
    assert (pd_events(pagerduty), len(slack.state.messages), len(smtp_inbox.messages)) == ([("trigger", key)], 1, 1)

    report_findings(ledger, passing(), log=log.append)  # fixed: resolved, PagerDuty resolves the same alert
    assert client(servicenow).get("incident", incident["sys_id"])["state"] == "6"
    assert pd_events(pagerduty) == [("trigger", key), ("resolve", key)]
    assert pagerduty.state.alerts == {key: "resolved"}
    assert (
        slack.state.texts("#dba-oncall")[1]
        == f":white_check_mark: Rewind: paging-ledger: resolved archive_failing ({number}): archiving ok"
    )
    assert len(smtp_inbox.messages) == 2 and "resolved archive_failing" in smtp_inbox.messages[1].content.decode()

    report_findings(ledger, passing(), log=log.append)  # nothing open: nobody told again
    assert (len(pagerduty.state.events), len(slack.state.messages), len(smtp_inbox.messages)) == (2, 2, 2)


def test_each_cluster_pages_its_own_pagers_through_the_dag_callbacks(servicenow, pagerduty, slack, smtp_inbox):
    """The inventory's defaults page PagerDuty; cluster paging-crm pages its Slack webhook instead.
    The callbacks every DAG gets (rewind_airflow.defaults) carry each cluster's choice."""
    from rewind_airflow.defaults import alert_callbacks

    loaded = inventory(
        {"paging-a": cluster_doc(), "paging-crm": cluster_doc(alerts={"pagers": [SLACK_WEBHOOK]})},
        defaults={"alerts": {"pagers": [PAGERDUTY]}},
    )
    callbacks = {name: alert_callbacks(loaded.get(name)) for name in ("paging-a", "paging-crm")}

    def context(name: str, exception=None) -> dict:
        ti = FakeTaskInstance(dag_id=f"rewind_backup_full__{name}", task_id="backup")
        return {"ti": ti, "run_id": "scheduled__2026-11-24T02:00:00+00:00", "exception": exception}

    for name in ("paging-a", "paging-crm"):
        callbacks[name]["on_failure_callback"](context(name, RuntimeError("pgbackrest backup failed [56]")))
    key_a = correlation_key("paging-a", "task_failed.rewind_backup_full__paging-a.backup")
    assert pd_events(pagerduty) == [("trigger", key_a)]
    [crm_message] = slack.state.texts("#crm-oncall")
    assert "paging-crm: rewind_backup_full__paging-crm.backup failed" in crm_message
    assert slack.state.messages[0]["via"] == "webhook" and smtp_inbox.messages == []

    for name in ("paging-a", "paging-crm"):
        callbacks[name]["on_success_callback"](context(name))
    assert pd_events(pagerduty) == [("trigger", key_a), ("resolve", key_a)]
    assert [m["via"] for m in slack.state.messages] == ["webhook", "webhook"]
    assert "resolved task_failed.rewind_backup_full__paging-crm.backup" in slack.state.texts("#crm-oncall")[1]


def test_pagers_that_fail_neither_fail_the_alert_nor_hide_the_incident(servicenow, pagerduty, slack, smtp_inbox):
    """PagerDuty answers 500 (the pagerduty library retries twice, then gives up) and Slack is down;
    the incident opens, the mail still goes out, the failures are logged."""
    from rewind_airflow.notifiers.alerts import raise_alert

    pagers = cluster("paging-broken", alerts={"pagers": [PAGERDUTY, SLACK, MAIL]}).alerts.pagers
    pagerduty.fail_next(3, status=500)
    slack.stop()
    log: list[str] = []

    action = raise_alert(
        cluster="paging-broken",
        problem="backup_age",
        summary="newest good backup is 30 h old",
        details="",
        servicenow_conn_id="servicenow_default",
        pagers=pagers,
        log=log.append,
    )
    assert action.action == "opened"
    assert [i["number"] for i in incidents_for(servicenow, "paging-broken")] == [action.number]
    assert [r["status"] for r in pagerduty.state.requests] == [500, 500, 500] and pagerduty.state.events == []
    assert len(smtp_inbox.messages) == 1
    failures = [line for line in log if "could not be told" in line]
    assert [line.split(" could not")[0] for line in failures] == ["pager pagerduty:pagerduty_dba", "pager slack:slack_dba"]
    assert f"{action.number} opened: told smtp:smtp_oncall" in log
