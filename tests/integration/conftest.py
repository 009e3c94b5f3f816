"""Fixtures of the PITR tests on the demo stack, and the loopback servers the paging tests page."""

from __future__ import annotations

import json

import pytest

from devstack.net import free_port
from tests.conftest import load_dags


def pitr_dag(cluster: str):
    """The cluster's PITR DAG with a short approval poll; a test that never decides fails within
    two minutes instead of waiting a day."""
    dag = load_dags("rewind_pitr.py")[f"rewind_pitr__{cluster}"]
    gate = dag.get_task("wait_for_approval")
    gate.poll_interval = 1
    gate.timeout = 120
    return dag


@pytest.fixture(scope="module")
def pitr(demo_stack, airflow_db, servicenow):
    """The demo cluster's PITR DAG, and a full backup to restore from."""
    demo_stack.pgbackrest().backup("full", annotations={"airflow_run_id": "pitr-base"})
    return pitr_dag("demo")


@pytest.fixture
def approve_all(servicenow):
    servicenow.state.auto_approve = True
    yield
    servicenow.state.auto_approve = False


class Inbox:
    """What a real SMTP server (aiosmtpd) received."""

    def __init__(self):
        self.messages = []

    async def handle_DATA(self, server, session, envelope):
        self.messages.append(envelope)
        return "250 Message accepted for delivery"


@pytest.fixture
def smtp_inbox(monkeypatch):
    """A real SMTP server on loopback, wired as the Airflow connection smtp_oncall (SMTP provider)."""
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
    try:
        yield inbox
    finally:
        controller.stop()
