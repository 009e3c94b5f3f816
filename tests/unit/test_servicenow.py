"""The ServiceNow client against the simulator over loopback HTTP (the change gate rule: test_change.py)."""

import time

import pytest
import requests

from devstack.servicenow_sim import ServiceNowSimulator
from rewind.servicenow import Auth, ServiceNowClient, ServiceNowError, ServiceNowNotFound, ServiceNowUnavailable
from tests.fakes import stop_soon


@pytest.fixture
def sim():
    simulator = ServiceNowSimulator().start()
    yield simulator
    stop_soon(simulator)


def basic(sim, **kwargs) -> ServiceNowClient:
    return ServiceNowClient(sim.url, Auth("basic", sim.state.username, sim.state.password), backoff_s=0.01, **kwargs)


def test_change_lifecycle_with_journal_and_close_policy(sim):
    client = basic(sim)
    change = client.create(
        "change_request", {"short_description": "PITR", "correlation_id": "rewind:x:1", "state": -3, "approval": "requested"}
    )
    assert change["number"] == "CHG0010001" and change["state"] == "-3"
    assert client.get_by_number("change_request", "CHG0010001")["sys_id"] == change["sys_id"]
    assert [c["number"] for c in client.query("change_request", "correlation_id=rewind:x:1")] == ["CHG0010001"]
    assert client.query("change_request", "correlation_id=other") == []
    assert client.query("change_request", "number=CHG0010001", fields=["number", "state"]) == [{"number": "CHG0010001", "state": "-3"}]

    client.add_work_note("change_request", change["sys_id"], "first")
    client.add_work_note("change_request", change["sys_id"], "second")
    assert client.work_notes("change_request", change["sys_id"]) == ["first", "second"]

    with pytest.raises(ServiceNowError, match="Data Policy Exception: The following fields are mandatory: Close code, Close notes"):
        client.update("change_request", change["sys_id"], {"state": 3})
    closed = client.update("change_request", change["sys_id"], {"state": 3, "close_code": "successful", "close_notes": "done"})
    assert (closed["state"], closed["close_code"]) == ("3", "successful")


def test_clear_errors_for_401_403_404(sim):
    wrong = ServiceNowClient(sim.url, Auth("basic", "rewind", "wrong"), backoff_s=0.01)
    with pytest.raises(ServiceNowError, match="401 not authenticated: check the connection's credentials"):
        wrong.query("change_request", "")
    with pytest.raises(ServiceNowError, match="403 forbidden: the integration user lacks a role"):
        basic(sim).query("sys_user", "")
    with pytest.raises(ServiceNowNotFound, match="404"):
        basic(sim).get("change_request", "0" * 32)
    with pytest.raises(ServiceNowNotFound, match="no change_request with number CHG0099999"):
        basic(sim).get_by_number("change_request", "CHG0099999")


def test_5xx_and_429_are_retried_with_backoff_then_reported_as_unavailable(sim):
    sim.fail_next(2, status=503)
    assert basic(sim).query("incident", "") == []
    sim.fail_next(1, status=429)
    assert basic(sim).query("incident", "") == []
    sim.fail_next(10, status=500)
    with pytest.raises(ServiceNowUnavailable, match="HTTP 500 after 3 attempts"):
        basic(sim, retries=2).query("incident", "")


def test_slow_answers_hit_the_timeout_and_are_retried(sim):
    sim.fail_next(1, status=200, delay_s=1.5)
    started = time.monotonic()
    assert basic(sim, timeout=0.5).query("incident", "") == []
    assert time.monotonic() - started < 5


def test_unreachable_instance_is_unavailable():
    client = ServiceNowClient("http://127.0.0.1:9", Auth("basic", "u", "p"), retries=1, backoff_s=0.01)
    with pytest.raises(ServiceNowUnavailable, match="ConnectionError after 2 attempts"):
        client.query("incident", "")


def test_oauth_client_credentials(sim):
    client = ServiceNowClient(sim.url, Auth("oauth", client_id=sim.state.client_id, client_secret=sim.state.client_secret))
    assert client.create("incident", {"short_description": "x"})["number"] == "INC0010001"
    sim.state.tokens.clear()  # token revoked: the client fetches a new one once
    assert client.get_by_number("incident", "INC0010001")["short_description"] == "x"
    bad = ServiceNowClient(sim.url, Auth("oauth", client_id="x", client_secret="y"), backoff_s=0.01)
    with pytest.raises(ServiceNowError, match="401"):
        bad.query("incident", "")


def test_approval_page_and_command(sim):
    client = basic(sim)
    change = client.create("change_request", {"short_description": "PITR <demo>", "approval": "requested", "state": -3})
    page = requests.get(sim.url, timeout=5).text
    assert "PITR &lt;demo&gt;" in page and f"/sim/changes/{change['number']}/approve" in page
    response = requests.post(f"{sim.url}/sim/changes/{change['number']}/approve", data={"via": "page"}, timeout=5, allow_redirects=False)
    assert response.status_code == 303
    assert client.get("change_request", change["sys_id"])["approval"] == "approved"

    from devstack.servicenow_sim import main

    other = client.create("change_request", {"approval": "requested", "state": -3})
    assert main(["reject", other["number"], "--url", sim.url]) == 0
    assert client.get("change_request", other["sys_id"])["approval"] == "rejected"
