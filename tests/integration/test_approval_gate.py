"""The approval trigger and sensor against the ServiceNow simulator: outages are retried inside
the trigger, the wait times out, and reschedule mode works without a triggerer."""

from __future__ import annotations

import asyncio
import datetime as dt

import pytest
from airflow.triggers.base import TaskSuccessEvent

from rewind_airflow.triggers.servicenow import ChangeApprovalTrigger

pytestmark = pytest.mark.integration


def new_change(servicenow, **fields) -> dict:
    """A change waiting for approval, as a requester raised it in ServiceNow."""
    return servicenow.state.create_change_for_test(**{"state": -3, "approval": "requested", **fields})


async def first_event(trigger, *, approve=None, after_s=0.0):
    async def approver():
        await asyncio.sleep(after_s)
        approve()

    task = asyncio.ensure_future(approver()) if approve else None
    async for event in trigger.run():
        if task:
            await task
        return event if isinstance(event, TaskSuccessEvent) else event.payload


def test_outages_are_retried_inside_the_trigger_until_approved(servicenow):
    change = new_change(servicenow)
    servicenow.fail_next(4, status=503)  # two polls' worth of failures (client retries once)
    trigger = ChangeApprovalTrigger(change_number=change["number"], poll_interval=0.2)
    event = asyncio.run(first_event(trigger, approve=lambda: servicenow.approve(change["number"]), after_s=1.5))
    # the approval ends the sensor's task from the triggerer, its XCom the approval
    assert isinstance(event, TaskSuccessEvent) and event.task_instance_state == "success"
    payload = event.xcoms["return_value"]
    assert payload["status"] == "approved" and payload["change"] == change["number"]


def test_rejection_and_timeout_end_the_wait(servicenow):
    change = new_change(servicenow)
    servicenow.reject(change["number"])
    payload = asyncio.run(first_event(ChangeApprovalTrigger(change_number=change["number"], poll_interval=0.2)))
    assert payload["status"] == "rejected" and "was rejected" in payload["reason"]

    waiting = new_change(servicenow)
    soon = (dt.datetime.now(dt.timezone.utc) + dt.timedelta(seconds=1)).isoformat()
    payload = asyncio.run(first_event(ChangeApprovalTrigger(change_number=waiting["number"], poll_interval=0.3, timeout_at=soon)))
    assert payload["status"] == "timeout"
    servicenow.reject(waiting["number"])  # leave no change pending for other tests


def test_a_missing_change_is_an_error_not_a_wait(servicenow):
    payload = asyncio.run(first_event(ChangeApprovalTrigger(change_number="CHG0099999", poll_interval=0.2)))
    assert payload["status"] == "error" and "CHG0099999" in payload["reason"]


def test_trigger_serializes_to_plain_json():
    import json

    classpath, kwargs = ChangeApprovalTrigger(
        change_number="CHG0010001", poll_interval=5, timeout_at="2026-11-25T00:00:00+00:00"
    ).serialize()
    assert json.loads(json.dumps(kwargs)) == kwargs
    assert classpath == "rewind_airflow.triggers.servicenow.ChangeApprovalTrigger"


def test_reschedule_mode_without_a_triggerer(servicenow):
    from airflow.sdk.exceptions import AirflowFailException

    from rewind_airflow.sensors.servicenow import ChangeApprovalSensor

    change = new_change(servicenow)
    sensor = ChangeApprovalSensor(task_id="gate", change_number=change["number"], deferrable=False, poll_interval=1)
    assert sensor.mode == "reschedule"
    assert sensor.poke({}) is False
    servicenow.approve(change["number"])
    assert sensor.poke({}).is_done
    rejected = new_change(servicenow)
    servicenow.reject(rejected["number"])
    with pytest.raises(AirflowFailException, match="was rejected"):
        ChangeApprovalSensor(task_id="gate2", change_number=rejected["number"], deferrable=False).poke({})
