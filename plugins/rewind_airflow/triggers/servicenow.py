"""ChangeApprovalTrigger: waits in the triggerer, holding no worker slot, until a change may
proceed, is rejected, or the wait times out. Lives in an installed package (not the DAG folder)
so the real triggerer can import it.

An approval ends the sensor's task from the triggerer itself (TaskSuccessEvent, its XCom the
approval): no worker is started again just to return it, so the next step (which re-reads the
change anyway) starts one scheduler hand-off after the poll that saw the approval. Rejection,
timeout and errors resume the sensor on a worker, which fails the run, cancels the change on a
timeout and runs the failure callbacks."""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import AsyncIterator
from typing import Any

from airflow.triggers.base import BaseTrigger, TaskSuccessEvent, TriggerEvent

from rewind.servicenow import ChangeStatus, ServiceNowError, ServiceNowUnavailable, change_gate


class ChangeApprovalTrigger(BaseTrigger):
    def __init__(
        self,
        *,
        change_number: str,
        servicenow_conn_id: str = "servicenow_default",
        poll_interval: float = 60.0,
        timeout_at: str | None = None,
        end_task_on_approval: bool = True,
    ) -> None:
        super().__init__()
        self.change_number = change_number
        self.servicenow_conn_id = servicenow_conn_id
        self.poll_interval = poll_interval
        self.timeout_at = timeout_at  # ISO 8601, UTC
        # False: an approval resumes the task on a worker (a step that acts on it: decide's
        # promotion after a follow-on change), instead of ending it from here
        self.end_task_on_approval = end_task_on_approval

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return (
            "rewind_airflow.triggers.servicenow.ChangeApprovalTrigger",
            {
                "change_number": self.change_number,
                "servicenow_conn_id": self.servicenow_conn_id,
                "poll_interval": self.poll_interval,
                "timeout_at": self.timeout_at,
                "end_task_on_approval": self.end_task_on_approval,
            },
        )

    async def run(self) -> AsyncIterator[TriggerEvent]:
        from rewind_airflow.hooks.servicenow import ServiceNowHook

        deadline = dt.datetime.fromisoformat(self.timeout_at) if self.timeout_at else None
        try:
            conn = await ServiceNowHook.aget_connection(self.servicenow_conn_id)
            client = ServiceNowHook.client_from_connection(conn, retries=1)
        except Exception as exc:  # a missing connection is a configuration error: report, do not hang
            yield TriggerEvent(
                {"status": "error", "change": self.change_number, "reason": f"ServiceNow connection {self.servicenow_conn_id!r}: {exc}"}
            )
            return
        while True:
            now = dt.datetime.now(dt.timezone.utc)
            try:
                record = await asyncio.to_thread(client.get_change_by_number, self.change_number)
                change = ChangeStatus.from_record(record)
                decision, reason = change_gate(change, now)
                if decision == "proceed":
                    self.log.info(reason)
                    approval = {"status": "approved", "change": change.number, "sys_id": change.sys_id, "reason": reason}
                    yield TaskSuccessEvent(xcoms={"return_value": approval}) if self.end_task_on_approval else TriggerEvent(approval)
                    return
                if decision == "reject":
                    yield TriggerEvent({"status": "rejected", "change": change.number, "sys_id": change.sys_id, "reason": reason})
                    return
                self.log.info(reason)
            except ServiceNowUnavailable as exc:
                self.log.warning("ServiceNow unavailable, retrying in %ss: %s", self.poll_interval, exc)
            except ServiceNowError as exc:
                yield TriggerEvent({"status": "error", "change": self.change_number, "reason": str(exc)})
                return
            if deadline and now >= deadline:
                yield TriggerEvent(
                    {"status": "timeout", "change": self.change_number, "reason": f"{self.change_number} not approved by {self.timeout_at}"}
                )
                return
            await asyncio.sleep(self.poll_interval)
