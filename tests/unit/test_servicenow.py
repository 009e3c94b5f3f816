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


def test_change_lifecycle_through_the_change_management_api(sim):
    """The real client against the simulator over HTTP: the change model decides every move."""
    from rewind.servicenow import ChangeState

    client = basic(sim)
    change = client.create_change("normal", {"short_description": "PITR", "correlation_id": "rewind:x:1", "state": -1})
    assert change["number"] == "CHG0010001" and (change["state"], change["type"]) == ("-5", "normal")  # always New
    sys_id = change["sys_id"]
    assert client.get_change_by_number("CHG0010001")["sys_id"] == sys_id
    assert [c["number"] for c in client.find_changes("correlation_id=rewind:x:1")] == ["CHG0010001"]
    assert client.find_changes("correlation_id=other") == []
    assert client.next_states(sys_id) == {-5, -4, 4}
    with pytest.raises(ServiceNowError, match=r"cannot move from New to Implement \(its model allows: Assess, Canceled\)"):
        client.move_change(sys_id, ChangeState.IMPLEMENT)
    with pytest.raises(ServiceNowError, match="HTTP 400: Invalid state transition: a normal change cannot move from New to Implement"):
        client.update_change(sys_id, {"state": -1})  # what ServiceNow itself answers to a move the model forbids
    assert client.move_change(sys_id, ChangeState.ASSESS)["approval"] == "requested"
    sim.approve("CHG0010001")
    assert client.get_change(sys_id)["state"] == "-2"
    client.move_change(sys_id, ChangeState.IMPLEMENT, {"work_notes": "first"})
    client.add_change_note(sys_id, "second")
    assert client.work_notes("change_request", sys_id) == ["Approved by CAB Approver in the simulator", "first", "second"]
    client.move_change(sys_id, ChangeState.REVIEW)
    with pytest.raises(ServiceNowError, match="Data Policy Exception: The following fields are mandatory: Close code, Close notes"):
        client.move_change(sys_id, ChangeState.CLOSED)
    closed = client.move_change(sys_id, ChangeState.CLOSED, {"close_code": "successful", "close_notes": "done"})
    assert (closed["state"], closed["close_code"]) == ("3", "successful")
    assert client.next_states(sys_id) == {3}
    # the Table API reads changes, and may not write them: that would skip the model
    assert client.get_by_number("change_request", "CHG0010001")["state"] == "3"
    with pytest.raises(ServiceNowError, match="403 forbidden.*written through the Change Management API"):
        client.create("change_request", {"short_description": "around the model"})
    with pytest.raises(ServiceNowError, match="403 forbidden.*written through the Change Management API"):
        client.update("change_request", sys_id, {"state": -1})


def test_standard_and_emergency_models(sim):
    from rewind.servicenow import ChangeState

    client = basic(sim)
    sim.state.templates["tmpl-rehearsal"] = {"short_description": "Monthly restore rehearsal"}
    standard = client.create_standard_change("tmpl-rehearsal", {"cmdb_ci": "ledger"})
    assert (standard["type"], standard["state"], standard["approval"], standard["short_description"]) == (
        "standard",
        "-2",
        "approved",
        "Monthly restore rehearsal",
    )
    assert client.next_states(standard["sys_id"]) == {-2, -1, 4}
    with pytest.raises(ServiceNowNotFound):
        client.create_standard_change("no-such-template", {})
    emergency = client.create_change("emergency", {"short_description": "incident rewind"})
    assert client.next_states(emergency["sys_id"]) == {-5, -3, 4}  # no Assess in the emergency model
    assert client.move_change(emergency["sys_id"], ChangeState.AUTHORIZE)["approval"] == "requested"


def test_clear_errors_for_401_403_404(sim):
    wrong = ServiceNowClient(sim.url, Auth("basic", "rewind", "wrong"), backoff_s=0.01)
    with pytest.raises(ServiceNowError, match="401 not authenticated: check the connection's credentials"):
        wrong.query("change_request", "")
    with pytest.raises(ServiceNowError, match="403 forbidden: the integration user lacks a role"):
        basic(sim).query("sys_properties", "")
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
    change = sim.state.create_change_for_test(short_description="PITR <demo>", approval="requested", state=-3)
    page = requests.get(sim.url, timeout=5).text
    assert "PITR &lt;demo&gt;" in page and f"/sim/changes/{change['number']}/approve" in page
    response = requests.post(f"{sim.url}/sim/changes/{change['number']}/approve", data={"via": "page"}, timeout=5, allow_redirects=False)
    assert response.status_code == 303
    assert client.get("change_request", change["sys_id"])["approval"] == "approved"

    from devstack.servicenow_sim import main

    other = sim.state.create_change_for_test(approval="requested", state=-3)
    assert main(["reject", other["number"], "--url", sim.url]) == 0
    assert client.get("change_request", other["sys_id"])["approval"] == "rejected"


# ---- who asked, who approved (separation of duties) -------------------------------------------------
def submitted_change(client: ServiceNowClient) -> dict:
    from rewind.change_control import ChangeStatus
    from rewind.servicenow import ChangeState

    record = client.create_change("normal", {"short_description": "PITR", "correlation_id": "rewind:sod:1"})
    client.move_change(record["sys_id"], ChangeState.ASSESS)
    return ChangeStatus.from_record(client.get_change(record["sys_id"]))


def test_the_requester_is_the_one_active_servicenow_user_with_the_identitys_address(sim):
    from rewind.change_control import RequesterUnknown, find_person

    client = basic(sim)
    person = find_person(client, airflow_user="alice", email="dba.oncall@example.com", amr=("pwd", "otp"))
    assert (person.sys_id, person.user_name) == (sim.state.user("dba.oncall")["sys_id"], "dba.oncall")
    assert person.describe() == "DBA On-Call <dba.oncall@example.com> (Airflow user alice; MFA asserted by the IdP (amr: pwd, otp))"
    assert (
        find_person(client, airflow_user="alice", email="dba.oncall@example.com", amr=("pwd",))
        .describe()
        .endswith("(Airflow user alice; single factor per the IdP (amr: pwd))")
    )
    assert find_person(client, airflow_user="alice", email="dba.oncall@example.com").describe().endswith("no MFA claim from the IdP)")
    with pytest.raises(RequesterUnknown, match="whose e-mail address Rewind cannot see"):
        find_person(client, airflow_user="admin", email=None)
    with pytest.raises(RequesterUnknown, match="<nobody@example.com>, who is not a ServiceNow user"):
        find_person(client, airflow_user="bob", email="nobody@example.com")
    sim.state.add_user("dba.twin", email="dba.oncall@example.com")
    with pytest.raises(RequesterUnknown, match="matches 2 ServiceNow users"):
        find_person(client, airflow_user="alice", email="dba.oncall@example.com")
    sim.state.add_user("gone", email="gone@example.com", active=False)
    with pytest.raises(RequesterUnknown, match="is not a ServiceNow user"):
        find_person(client, airflow_user="gone", email="gone@example.com")


@pytest.mark.parametrize(
    "approver, outcome",
    [
        ("cab.approver", None),
        ("dba.oncall", "the requester cannot approve their own change"),
        ("ops.outsider", "approved by someone outside its approval group"),
        (None, "no approval of it is recorded"),
    ],
)
def test_only_another_member_of_the_approval_group_approves(sim, approver, outcome):
    from rewind.change_control import ChangeNotUsable, check_approvers, find_group

    client = basic(sim)
    change = submitted_change(client)
    if approver:
        sim.state.decide(change.number, "approve", by=approver)
    requester, cab = sim.state.user("dba.oncall")["sys_id"], find_group(client, "Database CAB")
    if outcome is None:
        assert check_approvers(client, change, step="stop", requester=requester, approval_group=cab) == [sim.state.user(approver)["sys_id"]]
    else:
        with pytest.raises(ChangeNotUsable, match=f"stop refused: {change.number}.*{outcome}"):
            check_approvers(client, change, step="stop", requester=requester, approval_group=cab)


def test_an_approver_who_left_the_group_no_longer_counts(sim):
    from rewind.change_control import ChangeNotUsable, check_approvers, find_group

    client = basic(sim)
    change = submitted_change(client)
    sim.state.decide(change.number, "approve", by="cab.approver")
    requester, cab = sim.state.user("dba.oncall")["sys_id"], find_group(client, "Database CAB")
    sim.state.remove_from_group("cab.approver", "Database CAB")
    with pytest.raises(ChangeNotUsable, match="outside its approval group"):
        check_approvers(client, change, step="restore", requester=requester, approval_group=cab)
    with pytest.raises(ChangeNotUsable, match="approval group 'Nobody' is not in ServiceNow: fix change_control.approval_group"):
        find_group(client, "Nobody")
