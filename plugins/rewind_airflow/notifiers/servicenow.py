"""ChangeWorkNoteNotifier: after approval, any failure writes what happened and the state the
cluster was left in onto the change, so the approvers and the next on-call see it there."""

from __future__ import annotations

from collections.abc import Sequence

from airflow.sdk.bases.notifier import BaseNotifier

from rewind.guard import read_guard
from rewind.inventory import load_inventory
from rewind.pitr.recovery import describe_state
from rewind.runner import CommandRunner
from rewind.servicenow import ServiceNowError
from rewind_airflow.hooks.servicenow import ServiceNowHook


class ChangeWorkNoteNotifier(BaseNotifier):
    template_fields: Sequence[str] = ("change_sys_id", "cluster")

    def __init__(self, *, cluster: str, change_sys_id: str, servicenow_conn_id: str = "servicenow_default") -> None:
        super().__init__()
        self.cluster = cluster
        self.change_sys_id = change_sys_id
        self.servicenow_conn_id = servicenow_conn_id

    def notify(self, context) -> None:
        ti = context["ti"]
        exception = context.get("exception")
        try:
            cluster = load_inventory().get(self.cluster)
            state = describe_state(CommandRunner(os_user=cluster.postgres.os_user), cluster)
            guard = read_guard(cluster)
            guard_text = (
                f"Restore guard is up: backups of stanza {cluster.stanza} are blocked until a DBA clears it."
                if guard else "No restore guard."
            )
        except Exception as exc:  # describing must never hide the original failure
            state, guard_text = f"cluster state unknown ({exc})", ""
        note = (
            f"Rewind PITR run {context['run_id']}: step {ti.task_id} failed (try {ti.try_number}): {exception}\n"
            f"Cluster {self.cluster}: {state}. {guard_text}\n"
            "No new full backup was taken. The run has failed; see the Airflow task log."
        )
        try:
            ServiceNowHook(servicenow_conn_id=self.servicenow_conn_id).get_conn().add_work_note("change_request", self.change_sys_id, note)
        except ServiceNowError as exc:
            self.log.error("could not add the work note to the change: %s", exc)
