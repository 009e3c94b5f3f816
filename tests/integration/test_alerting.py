"""Paging through the SMTP provider to a real SMTP server on loopback: once when an incident
opens, not again while it is open, and once more when it resolves."""

from __future__ import annotations

import pytest

from rewind.servicenow import Auth, ServiceNowClient
from tests.factories import cluster

pytestmark = pytest.mark.integration

MAIL = {"type": "smtp", "conn_id": "smtp_oncall", "to": "oncall@example.com"}


def test_a_new_incident_pages_once_by_email(servicenow, smtp_inbox):
    from rewind_airflow.notifiers.alerts import clear_alert, raise_alert

    pagers = cluster("paged", alerts={"pagers": [MAIL]}).alerts.pagers
    alert = {
        "cluster": "paged",
        "problem": "archive_failing",
        "summary": "WAL archiving is failing",
        "servicenow_conn_id": "servicenow_default",
    }
    first = raise_alert(**alert, details="last attempt failed", pagers=pagers)
    second = raise_alert(**alert, details="still failing", pagers=pagers)
    assert (first.action, second.action) == ("opened", "noted") and first.number == second.number
    [message] = smtp_inbox.messages
    assert message.rcpt_tos == ["oncall@example.com"]
    assert f"paged: WAL archiving is failing ({first.number})" in message.content.decode()

    cleared = clear_alert(
        cluster="paged", problem="archive_failing", note="archiving ok", servicenow_conn_id="servicenow_default", pagers=pagers
    )
    assert cleared.action == "resolved"
    client = ServiceNowClient(servicenow.url, Auth("basic", servicenow.state.username, servicenow.state.password))
    assert client.get_by_number("incident", first.number)["state"] == "6"
    assert len(smtp_inbox.messages) == 2
    assert f"paged: resolved archive_failing ({first.number}): archiving ok" in smtp_inbox.messages[-1].content.decode()


@pytest.fixture
def demo_pages_by_mail(demo_stack):
    demo_stack.use_alerts({"pagers": [MAIL]})
    yield
    demo_stack.use_alerts(None)


def test_a_task_failure_incident_resolves_when_the_task_next_succeeds_and_the_next_failure_pages_again(
    demo_stack, airflow_db, servicenow, smtp_inbox, demo_pages_by_mail
):
    """Before: the generic task_failed incident never resolved, so every later failure of that task
    only added a note to it and nobody was paged again. The pagers are the demo cluster's own, from
    the inventory, as the DAG's callbacks get them."""
    from tests.conftest import load_dags, run_once
    from tests.integration.helpers import client, incidents_for

    backup = load_dags()["rewind_backup_incr__demo"]
    config = demo_stack.cluster.config_path
    installed = open(config).read()
    problem = "task_failed.rewind_backup_incr__demo.preflight"

    def run_with_drift() -> dict:
        with open(config, "a") as handle:
            handle.write("# edited by hand\n")  # config drift: preflight refuses
        try:
            assert run_once(backup).state == "failed"
        finally:
            with open(config, "w") as handle:
                handle.write(installed)
        [opened] = [i for i in incidents_for(servicenow, "demo", problem) if i["state"] == "1"]
        return opened

    first = run_with_drift()
    assert len(smtp_inbox.messages) == 1
    assert run_once(backup).state == "success"
    assert client(servicenow).get("incident", first["sys_id"])["state"] == "6"  # resolved by the success
    assert len(smtp_inbox.messages) == 2 and "resolved" in smtp_inbox.messages[-1].content.decode()
    second = run_with_drift()
    assert second["number"] != first["number"]
    assert len(smtp_inbox.messages) == 3 and second["number"] in smtp_inbox.messages[-1].content.decode()
