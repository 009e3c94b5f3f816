"""ChangeApprovalSensor: the change-control gate in front of anything destructive."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from typing import Any

from airflow.sdk import BaseSensorOperator
from airflow.sdk.bases.sensor import PokeReturnValue
from airflow.sdk.exceptions import AirflowFailException, AirflowSensorTimeout

from rewind.servicenow import ChangeStatus, ServiceNowUnavailable, change_gate
from rewind_airflow.hooks.servicenow import ServiceNowHook
from rewind_airflow.triggers.servicenow import ChangeApprovalTrigger


class ChangeApprovalSensor(BaseSensorOperator):
    """Proceeds only when the change is approved, Scheduled or Implement, and inside its window.

    Deferrable by default: after one immediate check it hands the wait to the triggerer
    (`ChangeApprovalTrigger`) and frees its worker slot. `deferrable=False` polls in reschedule
    mode for deployments without a triggerer. Rejected, canceled, closed or out-of-window changes
    fail at once; ServiceNow outages are retried, never fatal; `timeout` bounds the wait.
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

    def _decide(self) -> tuple[str, str, ChangeStatus | None]:
        client = ServiceNowHook(servicenow_conn_id=self.servicenow_conn_id).get_conn()
        try:
            change = ChangeStatus.from_record(client.get_by_number("change_request", self.change_number))
        except ServiceNowUnavailable as exc:
            return "wait", f"ServiceNow unavailable, will retry: {exc}", None
        decision, reason = change_gate(change, dt.datetime.now(dt.timezone.utc))
        return decision, reason, change

    def execute(self, context) -> Any:
        if not self.deferrable:
            return super().execute(context)
        decision, reason, change = self._decide()
        self.log.info(reason)
        if decision == "proceed":
            return {"status": "approved", "change": change.number, "sys_id": change.sys_id, "reason": reason}
        if decision == "reject":
            raise AirflowFailException(reason)
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

    def execute_complete(self, context, event: dict[str, Any]) -> dict:
        status, reason = event.get("status"), event.get("reason", "")
        if status == "approved":
            self.log.info(reason)
            return event
        if status == "timeout":
            raise AirflowSensorTimeout(reason)
        raise AirflowFailException(reason)

    def poke(self, context) -> PokeReturnValue | bool:
        decision, reason, change = self._decide()
        self.log.info(reason)
        if decision == "reject":
            raise AirflowFailException(reason)
        if decision == "proceed":
            return PokeReturnValue(True, {"status": "approved", "change": change.number, "sys_id": change.sys_id, "reason": reason})
        return False
