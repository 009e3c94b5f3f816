"""Paging through the SMTP provider to a real SMTP server on loopback: once when an incident
opens, not again while it is open."""

from __future__ import annotations

import json

import pytest

from rewind.servicenow import Auth, ServiceNowClient
from rewind.stack.net import free_port

pytestmark = pytest.mark.integration


class Inbox:
    def __init__(self):
        self.messages = []

    async def handle_DATA(self, server, session, envelope):
        self.messages.append(envelope)
        return "250 Message accepted for delivery"


def test_a_new_incident_pages_once_by_email(servicenow, monkeypatch):
    from aiosmtpd.controller import Controller

    from rewind_airflow.notifiers.alerts import clear_alert, raise_alert

    inbox = Inbox()
    port = free_port()
    controller = Controller(inbox, hostname="127.0.0.1", port=port)
    controller.start()
    try:
        monkeypatch.setenv("AIRFLOW_CONN_SMTP_ONCALL", json.dumps({
            "conn_type": "smtp", "host": "127.0.0.1", "port": port,
            "extra": {"disable_tls": True, "disable_ssl": True, "from_email": "rewind@example.com"},
        }))
        monkeypatch.setenv("REWIND_PAGERS", "smtp:smtp_oncall:oncall@example.com")
        first = raise_alert(cluster="paged", problem="archive_failing", summary="WAL archiving is failing",
                            details="last attempt failed", servicenow_conn_id="servicenow_default")
        second = raise_alert(cluster="paged", problem="archive_failing", summary="WAL archiving is failing",
                             details="still failing", servicenow_conn_id="servicenow_default")
        assert (first.action, second.action) == ("opened", "noted") and first.number == second.number
        [message] = inbox.messages
        assert message.rcpt_tos == ["oncall@example.com"]
        assert f"paged: WAL archiving is failing ({first.number})" in message.content.decode()

        assert clear_alert(cluster="paged", problem="archive_failing", note="archiving ok",
                           servicenow_conn_id="servicenow_default").action == "resolved"
        client = ServiceNowClient(servicenow.url, Auth("basic", servicenow.state.username, servicenow.state.password))
        assert client.get_by_number("incident", first.number)["state"] == "6"
    finally:
        controller.stop()
