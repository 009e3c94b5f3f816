"""RehearsalFailureNotifier: the on_failure_callback of every rehearsal task.

One outcome per failed rehearsal, whichever step failed: the change task Closed `unsuccessful` with the
reason and the change closed unsuccessful (canceled when the rehearsal had not begun; a change
someone else cancelled is left as it is); `rehearsal.ok` 0; and one deduplicated incident for the
cluster's problem `rehearsal` (paging its pagers), resolved by the next rehearsal that passes. A
refusal that is the product working as designed (a typo in the form, no change template, a change
someone cancelled) settles the change the same way and opens no incident. Everything written is
masked and bounded.
"""

from __future__ import annotations

import datetime as dt

from rewind import metrics
from rewind.credentials import bounded, redact
from rewind.inventory import Cluster, load_inventory
from rewind.rehearsal import change as rehearsal_change
from rewind.rehearsal.evidence import summary
from rewind.rehearsal.request import RehearsalRequest
from rewind.servicenow import ServiceNowError
from rewind_airflow.hooks.pgbackrest import known_secret_values
from rewind_airflow.hooks.servicenow import ServiceNowHook
from rewind_airflow.notifiers.alerts import RewindAlertNotifier, pagers_from, raise_alert
from rewind_airflow.operators.pitr import run_url

PROBLEM = "rehearsal"


def run_seconds(context) -> float | None:
    """Since the run started: the rehearsal's duration metric."""
    started = getattr(context.get("dag_run"), "start_date", None)
    return (dt.datetime.now(dt.timezone.utc) - started).total_seconds() if started else None


class RehearsalFailureNotifier(RewindAlertNotifier):
    @classmethod
    def for_cluster(cls, cluster: Cluster) -> RehearsalFailureNotifier:
        return cls(
            cluster=cluster.name,
            servicenow_conn_id=cluster.connections.servicenow,
            impact=cluster.alerts.impact,
            urgency=cluster.alerts.urgency,
            pagers=[pager.model_dump(exclude_none=True) for pager in cluster.alerts.pagers],
        )

    def notify(self, context) -> None:
        ti, run_id = context["ti"], context["run_id"]
        exception = context.get("exception")
        reason = bounded(redact(f"Rewind rehearsal run {run_id}: step {ti.task_id} failed: {exception}", known_secret_values()), 2000)
        evidence = self._evidence(context)
        if evidence:
            reason = bounded(redact(f"{reason}\n\n{evidence}", known_secret_values()), 3500)
        self.log.info("%s", reason)
        settled = "no change was opened"
        try:
            client = ServiceNowHook(servicenow_conn_id=self.servicenow_conn_id).get_conn()
            opened = rehearsal_change.find_opened(client, dag_id=ti.dag_id, run_id=run_id)
            if opened is not None:
                settled = rehearsal_change.fail(client, opened, reason, log=self.log.info)
        except ServiceNowError as exc:  # settling the change must never hide the original failure
            settled = f"the change could not be settled: {exc}"
            self.log.error("%s", settled)
        try:
            values = {"rehearsal.ok": 0}
            duration = run_seconds(context)
            if duration is not None:
                values["rehearsal.duration_seconds"] = duration
            metrics.emit(self.cluster, values)
        except Exception as exc:  # metrics must never hide the original failure
            self.log.warning("rehearsal metrics not sent: %s", exc)
        if not getattr(exception, "opens_incident", True):
            self.log.info("no incident for %s.%s: %s", ti.dag_id, ti.task_id, exception)
            return
        raise_alert(
            cluster=self.cluster,
            problem=PROBLEM,
            summary=f"restore rehearsal failed at {ti.task_id}",
            details=f"{reason}\n{settled}",
            servicenow_conn_id=self.servicenow_conn_id,
            impact=self.impact,
            urgency=self.urgency,
            pagers=pagers_from(self.pagers),
            log=self.log.info,
        )

    def _evidence(self, context) -> str:
        """What the run had proved or measured before it failed (the steps' XComs), for the change,
        its task and the incident; empty when validate never passed."""
        ti = context["ti"]
        try:
            request = ti.xcom_pull(task_ids="validate")
            if not request:
                return ""
            pulled = {step: ti.xcom_pull(task_ids=step) for step in ("mark_production", "restore_scratch")}
            checked = ti.xcom_pull(task_ids="check_scratch", key="checks") or {}
            return summary(
                load_inventory().get(self.cluster),
                RehearsalRequest.model_validate(request),
                outcome=f"FAILED at {ti.task_id}",
                run_id=context["run_id"],
                run_url=run_url(context),
                mark=pulled["mark_production"],
                restored=pulled["restore_scratch"],
                checks=checked.get("checks"),
                copy_counts=checked.get("counts"),
            )
        except Exception as exc:  # the evidence must never hide the original failure
            self.log.warning("the evidence so far could not be gathered: %s", exc)
            return ""
