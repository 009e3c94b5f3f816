"""Paging through the SMTP provider to a real SMTP server on loopback: once when an incident
opens, not again while it is open."""

from __future__ import annotations

import json

import pytest

from devstack.net import free_port
from rewind.servicenow import Auth, ServiceNowClient

pytestmark = pytest.mark.integration


class Inbox:
    def __init__(self):
        self.messages = []

    async def handle_DATA(self, server, session, envelope):
        self.messages.append(envelope)
        return "250 Message accepted for delivery"


@pytest.fixture
def inbox(monkeypatch):
    """A real SMTP server on loopback, and Rewind paging to it."""
    from aiosmtpd.controller import Controller

    inbox = Inbox()
    port = free_port()
    controller = Controller(inbox, hostname="127.0.0.1", port=port)
    controller.start()
    monkeypatch.setenv(
        "AIRFLOW_CONN_SMTP_ONCALL",
        json.dumps(
            {
                "conn_type": "smtp",
                "host": "127.0.0.1",
                "port": port,
                "extra": {"disable_tls": True, "disable_ssl": True, "from_email": "rewind@example.com"},
            }
        ),
    )
    monkeypatch.setenv("REWIND_PAGERS", "smtp:smtp_oncall:oncall@example.com")
    try:
        yield inbox
    finally:
        controller.stop()


def test_a_new_incident_pages_once_by_email(servicenow, inbox):
    from rewind_airflow.notifiers.alerts import clear_alert, raise_alert

    first = raise_alert(
        cluster="paged",
        problem="archive_failing",
        summary="WAL archiving is failing",
        details="last attempt failed",
        servicenow_conn_id="servicenow_default",
    )
    second = raise_alert(
        cluster="paged",
        problem="archive_failing",
        summary="WAL archiving is failing",
        details="still failing",
        servicenow_conn_id="servicenow_default",
    )
    assert (first.action, second.action) == ("opened", "noted") and first.number == second.number
    [message] = inbox.messages
    assert message.rcpt_tos == ["oncall@example.com"]
    assert f"paged: WAL archiving is failing ({first.number})" in message.content.decode()

    assert (
        clear_alert(cluster="paged", problem="archive_failing", note="archiving ok", servicenow_conn_id="servicenow_default").action
        == "resolved"
    )
    client = ServiceNowClient(servicenow.url, Auth("basic", servicenow.state.username, servicenow.state.password))
    assert client.get_by_number("incident", first.number)["state"] == "6"


def test_a_task_failure_incident_resolves_when_the_task_next_succeeds_and_the_next_failure_pages_again(
    demo_stack, airflow_db, servicenow, inbox
):
    """Before: the generic task_failed incident never resolved, so every later failure of that task
    only added a note to it and nobody was paged again."""
    from tests.conftest import load_dags, run_once
    from tests.integration.helpers import client, incidents_for

    config = demo_stack.cluster.config_path
    installed = open(config).read()
    backup = load_dags()["rewind_backup_incr__demo"]
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
    assert len(inbox.messages) == 1
    assert run_once(backup).state == "success"
    assert client(servicenow).get("incident", first["sys_id"])["state"] == "6"  # resolved by the success
    second = run_with_drift()
    assert second["number"] != first["number"]
    assert len(inbox.messages) == 2 and second["number"] in inbox.messages[-1].content.decode()
