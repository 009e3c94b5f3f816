"""ChangeApprovalSensor: the change-control gate in front of anything destructive."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from functools import cached_property
from typing import Any

from airflow.sdk import BaseSensorOperator
from airflow.sdk.bases.sensor import PokeReturnValue
from airflow.sdk.exceptions import AirflowFailException, AirflowSensorTimeout

from rewind.change_control import cancel_change
from rewind.servicenow import ChangeStatus, ServiceNowError, ServiceNowUnavailable, change_gate
from rewind_airflow.hooks.servicenow import ServiceNowHook
from rewind_airflow.triggers.servicenow import ChangeApprovalTrigger


class ChangeRejected(AirflowFailException):
    """The change was rejected, cancelled or its window ended: the run ends here, as designed."""

    opens_incident = False


class ApprovalTimedOut(AirflowSensorTimeout):
    """Nobody decided in time: the change is cancelled with a note, and the run ends."""

    opens_incident = False


class ChangeApprovalSensor(BaseSensorOperator):
    """Proceeds only when the change is approved, Scheduled or Implement, and inside its window.

    Deferrable by default: after one immediate check it hands the wait to the triggerer
    (`ChangeApprovalTrigger`) and frees its worker slot; an approval ends the task from there. `deferrable=False` polls in reschedule
    mode for deployments without a triggerer. Rejected, canceled, closed or out-of-window changes
    fail at once (no incident: that is the gate working); ServiceNow outages are retried, never
    fatal; `timeout` bounds the wait, after which the change is cancelled with a note.
    """

    template_fields: Sequence[str] = ("change_number",)
    ui_color = "#fff3cd"

    def __init__(
        self,
        *,
        change_number: str,
        servicenow_conn_id: str = "servicenow_default",
        poll_interval: float = 60.0,
        deferrable: bool = True,
        **kwargs: Any,
    ) -> None:
        kwargs.setdefault("timeout", 24 * 3600)
        kwargs.setdefault("mode", "poke" if deferrable else "reschedule")
        super().__init__(poke_interval=poll_interval, **kwargs)
        self.change_number = change_number
        self.servicenow_conn_id = servicenow_conn_id
        self.poll_interval = poll_interval
        self.deferrable = deferrable

    @cached_property
    def hook(self) -> ServiceNowHook:
        return ServiceNowHook(servicenow_conn_id=self.servicenow_conn_id)

    def _decide(self) -> tuple[str, str, ChangeStatus | None]:
        try:
            change = ChangeStatus.from_record(self.hook.get_conn().get_change_by_number(self.change_number))
        except ServiceNowUnavailable as exc:
            return "wait", f"ServiceNow unavailable, will retry: {exc}", None
        decision, reason = change_gate(change, dt.datetime.now(dt.timezone.utc))
        return decision, reason, change

    def _timed_out(self, reason: str) -> None:
        """Cancel the change (the request it made is void) and end the run."""
        note = f"Rewind: no approval within the wait ({reason}); change cancelled, nothing was touched. Trigger a new PITR if still needed."
        try:
            record = self.hook.get_conn().get_change_by_number(self.change_number)
            cancel_change(self.hook.get_conn(), record["sys_id"], note)
            self.log.info("cancelled %s: %s", self.change_number, note)
        except ServiceNowError as exc:
            self.log.error("could not cancel %s: %s", self.change_number, exc)
        raise ApprovalTimedOut(reason)

    def execute(self, context) -> Any:
        if not self.deferrable:
            try:
                return super().execute(context)
            except ApprovalTimedOut:
                raise
            except AirflowSensorTimeout as exc:
                self._timed_out(str(exc))
        decision, reason, change = self._decide()
        self.log.info(reason)
        if decision == "proceed":
            return {"status": "approved", "change": change.number, "sys_id": change.sys_id, "reason": reason}
        if decision == "reject":
            raise ChangeRejected(reason)
        timeout_at = dt.datetime.now(dt.timezone.utc) + dt.timedelta(seconds=self.timeout)
        self.defer(
            trigger=ChangeApprovalTrigger(
                change_number=self.change_number,
                servicenow_conn_id=self.servicenow_conn_id,
                poll_interval=self.poll_interval,
                timeout_at=timeout_at.isoformat(),
            ),
            method_name="execute_complete",
            timeout=dt.timedelta(seconds=self.timeout + 60),
        )

    def execute_complete(self, context, event: dict[str, Any] | str) -> dict | None:
        if event == "success":  # dag.test() runs the trigger inline and resumes even on a TaskSuccessEvent
            self.log.info("%s may proceed (the trigger ended the wait)", self.change_number)
            return None
        status, reason = event.get("status"), event.get("reason", "")
        if status == "approved":
            self.log.info(reason)
            return event
        if status == "timeout":
            self._timed_out(reason)
        if status == "rejected":
            raise ChangeRejected(reason)
        raise AirflowFailException(reason)

    def poke(self, context) -> PokeReturnValue | bool:
        decision, reason, change = self._decide()
        self.log.info(reason)
        if decision == "reject":
            raise ChangeRejected(reason)
        if decision == "proceed":
            return PokeReturnValue(True, {"status": "approved", "change": change.number, "sys_id": change.sys_id, "reason": reason})
        return False
