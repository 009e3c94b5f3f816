"""ChangeApprovalSensor with a fake ServiceNow behind its hook: the first check, the deferral to the
triggerer, and what it does with each event the trigger sends back (execute_complete, reached the
way the task runner resumes a deferred task)."""

from __future__ import annotations

import datetime as dt
import importlib
import re

import pytest
from airflow.sdk.exceptions import AirflowFailException, AirflowSensorTimeout, TaskDeferred

from rewind.servicenow import CHANGE_TABLE, ServiceNowUnavailable
from rewind_airflow.sensors.servicenow import ApprovalTimedOut, ChangeApprovalSensor, ChangeRejected
from rewind_airflow.triggers.servicenow import ChangeApprovalTrigger
from tests.fakes import servicenow_hook_class


@pytest.fixture
def change(fake_servicenow):
    return fake_servicenow.change(cmdb_ci="ledger")


@pytest.fixture
def sensor(fake_servicenow, change):
    gate = ChangeApprovalSensor(task_id="wait_for_approval", change_number=change["number"], poll_interval=5, timeout=3600)
    gate.__dict__["hook"] = servicenow_hook_class(fake_servicenow)()  # `hook` is a cached_property
    return gate


def resume(sensor, event: dict):
    return sensor.resume_execution("execute_complete", {"event": event}, {})


def test_an_approved_event_lets_the_run_go_on(sensor, change):
    event = {"status": "approved", "change": change["number"], "sys_id": change["sys_id"], "reason": "approved and inside its window"}
    assert resume(sensor, event) == event


def test_an_approval_that_ended_the_task_in_the_triggerer_is_accepted_where_dag_test_resumes_it(sensor):
    # The real triggerer marks the task successful itself (TaskSuccessEvent); dag.test() runs the
    # trigger inline and resumes the task with that event's payload.
    assert resume(sensor, "success") is None


def test_a_rejected_change_ends_the_run_without_an_incident(sensor, change):
    reason = f"{change['number']} (state New, approval rejected) was rejected: the restore will not run"
    with pytest.raises(ChangeRejected, match=re.escape(reason)) as raised:
        resume(sensor, {"status": "rejected", "change": change["number"], "reason": reason})
    assert raised.value.opens_incident is False
    assert isinstance(raised.value, AirflowFailException)  # no retry


def test_a_timeout_cancels_the_change_and_ends_the_run(sensor, change, fake_servicenow):
    reason = f"{change['number']} not approved by 2026-11-25T02:20:00+00:00"  # what the trigger reports
    with pytest.raises(ApprovalTimedOut, match=re.escape(reason)) as raised:
        resume(sensor, {"status": "timeout", "change": change["number"], "reason": reason})
    assert raised.value.opens_incident is False and isinstance(raised.value, AirflowSensorTimeout)
    assert fake_servicenow.get(CHANGE_TABLE, change["sys_id"])["state"] == "4"  # Canceled
    [note] = fake_servicenow.work_notes(CHANGE_TABLE, change["sys_id"])
    assert note.startswith(f"Rewind: no approval within the wait ({reason}); change cancelled, nothing was touched.")


def test_a_timeout_still_ends_the_run_when_the_change_cannot_be_cancelled(sensor, change, fake_servicenow):
    fake_servicenow.fail("update_change", ServiceNowUnavailable("ServiceNow PATCH: HTTP 503 after 5 attempts"))
    with pytest.raises(ApprovalTimedOut):
        resume(sensor, {"status": "timeout", "change": change["number"], "reason": "not approved in time"})
    assert fake_servicenow.get(CHANGE_TABLE, change["sys_id"])["state"] == "-3"


def test_an_error_event_fails_the_task_and_opens_an_incident(sensor, change):
    reason = "ServiceNow connection 'servicenow_default': host is empty: set the ServiceNow instance host"
    with pytest.raises(AirflowFailException, match=reason) as raised:
        resume(sensor, {"status": "error", "change": change["number"], "reason": reason})
    assert not isinstance(raised.value, ChangeRejected)
    assert getattr(raised.value, "opens_incident", True)  # what the alert notifier reads


def test_first_check_proceeds_at_once_when_already_approved(sensor, change, fake_servicenow):
    fake_servicenow.state.decide(change["number"], "approve")
    result = sensor.execute({})
    assert (result["status"], result["change"], result["sys_id"]) == ("approved", change["number"], change["sys_id"])


def test_first_check_fails_at_once_when_rejected(sensor, change, fake_servicenow):
    fake_servicenow.state.decide(change["number"], "reject")
    with pytest.raises(ChangeRejected, match="was rejected"):
        sensor.execute({})


@pytest.mark.parametrize("servicenow_down", [False, True])
def test_waiting_defers_to_a_trigger_the_triggerer_can_rebuild(sensor, change, fake_servicenow, servicenow_down):
    if servicenow_down:  # an outage is waited out, never fatal
        fake_servicenow.fail("query", ServiceNowUnavailable("ServiceNow GET: ConnectionError after 5 attempts"))
    before = dt.datetime.now(dt.timezone.utc)
    with pytest.raises(TaskDeferred) as deferred:
        sensor.execute({})
    assert deferred.value.method_name == "execute_complete"
    assert deferred.value.timeout == dt.timedelta(seconds=3600 + 60)
    classpath, kwargs = deferred.value.trigger.serialize()
    module, _, name = classpath.rpartition(".")
    assert getattr(importlib.import_module(module), name) is ChangeApprovalTrigger
    timeout_at = dt.datetime.fromisoformat(kwargs.pop("timeout_at"))
    assert kwargs == {
        "change_number": change["number"],
        "servicenow_conn_id": "servicenow_default",
        "poll_interval": 5,
        "end_task_on_approval": True,
    }
    assert before + dt.timedelta(seconds=3600) <= timeout_at <= dt.datetime.now(dt.timezone.utc) + dt.timedelta(seconds=3600)
    rebuilt = ChangeApprovalTrigger(**kwargs, timeout_at=timeout_at.isoformat())
    assert rebuilt.serialize() == deferred.value.trigger.serialize()


def test_poke_without_a_triggerer(fake_servicenow, change):
    gate = ChangeApprovalSensor(task_id="wait_for_approval", change_number=change["number"], deferrable=False, poll_interval=30)
    gate.__dict__["hook"] = servicenow_hook_class(fake_servicenow)()
    assert gate.mode == "reschedule"
    assert gate.poke({}) is False
    fake_servicenow.state.decide(change["number"], "approve")
    approved = gate.poke({})
    assert approved.is_done and approved.xcom_value["status"] == "approved"
