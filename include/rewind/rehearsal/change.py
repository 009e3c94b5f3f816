"""The change a rehearsal runs under: a standard (pre-approved) change from the inventory's template,
and a change task for this run, both through ServiceNow's Change Management API.

    open       the standard change from `rehearsal.change_template` (found again by correlation_id
               on a retry) and its change task (Open); refused unless approved, Scheduled or
               Implement and inside its window
    implement  re-read the change (someone may have cancelled it): Scheduled -> Implement, task In
               Progress; only then is production marked
    succeed    task Closed `successful` and change Implement -> Review -> Closed `successful`, both
               with the evidence
    fail       task Closed `unsuccessful` with the reason; the change Closed `unsuccessful` when the
               rehearsal had begun (Implement), Canceled when it never had (Scheduled); a change
               someone cancelled or closed is left as it is
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable

from rewind.change_control import MAX_NOTE_CHARS, ChangeNotUsable, close_change, correlation_id, free_text, require_gate, start_implementing
from rewind.errors import RewindError
from rewind.inventory import Cluster
from rewind.rehearsal.request import RehearsalRefused, RehearsalRequest
from rewind.servicenow import (
    CHANGE_TASK_CLOSED,
    ChangeState,
    ChangeStatus,
    ChangeTaskState,
    ServiceNowClient,
    ServiceNowError,
    ServiceNowNotFound,
    ServiceNowUnavailable,
    change_gate,
)


class TemplateUnusable(RewindError):
    """ServiceNow will not make a change from the inventory's template (unknown, inactive): nothing
    was touched, and every scheduled rehearsal will fail the same way until the inventory is fixed."""


def require_template(cluster: Cluster) -> str:
    template = cluster.rehearsal.change_template
    if not template:
        raise RehearsalRefused(
            f"cluster {cluster.name!r}: rehearsal.change_template is not set: every rehearsal runs under a standard change; "
            "set the sys_id of the standard change template in the inventory"
        )
    return template


def change_fields(cluster: Cluster, request: RehearsalRequest, *, dag_id: str, run_id: str, run_url: str, scratch: str) -> dict:
    return {
        "short_description": f"Rewind restore rehearsal of {cluster.name} (stanza {cluster.stanza})",
        "description": (
            f"Restore rehearsal of PostgreSQL cluster {cluster.name}: a backup from s3://{cluster.repo.bucket}{cluster.repo.path} is "
            f"restored into the scratch directory {scratch} on worker queue {cluster.rehearsal_queue}, checked (pg_amcheck "
            "--heapallindexed, pg_dump of every database, pg_checksums), compared with production's row counts and removed. "
            f"Target: {request.describe()}.\nProduction is not stopped or changed; its one write is a restore point (one WAL "
            f"record) and a WAL switch.\nReason: {free_text(request.reason)}\nAirflow run: {run_id}\n{run_url}"
        ),
        "cmdb_ci": cluster.name,
        "correlation_id": correlation_id(dag_id, run_id),
    }


def task_fields(cluster: Cluster, request: RehearsalRequest, *, run_id: str) -> dict:
    return {
        "short_description": f"Restore rehearsal of {cluster.name}: restore, check, compare, remove the copy",
        "description": (
            "1. Count the declared tables on production and make a restore point; archive the WAL.\n"
            "2. Restore the newest backup before the target into the scratch directory (--archive-mode=off) and recover.\n"
            "3. pg_amcheck --heapallindexed, pg_dump of every database, pg_checksums on the stopped copy.\n"
            "4. Compare row counts; annotate the backup proved (rewind_last_verified).\n"
            f"5. Remove the copy. Target: {request.describe()}. Run {run_id}."
        ),
        "cmdb_ci": cluster.name,
    }


def _task_of(client: ServiceNowClient, change_sys_id: str) -> dict | None:
    tasks = client.change_tasks(change_sys_id)
    return tasks[0] if tasks else None


def open_change(
    client: ServiceNowClient,
    cluster: Cluster,
    request: RehearsalRequest,
    *,
    dag_id: str,
    run_id: str,
    run_url: str,
    scratch: str,
    now: dt.datetime | None = None,
) -> dict:
    """This run's standard change and change task (created, or found again on a retry). Returns
    {number, sys_id, task_number, task_sys_id, created}."""
    template = require_template(cluster)
    existing = client.find_changes(f"correlation_id={correlation_id(dag_id, run_id)}", limit=1)
    if existing:
        record, created = existing[0], False
    else:
        fields = change_fields(cluster, request, dag_id=dag_id, run_id=run_id, run_url=run_url, scratch=scratch)
        try:
            record, created = client.create_standard_change(template, fields), True
        except ServiceNowNotFound:
            raise TemplateUnusable(
                f"rehearsal.change_template {template}: ServiceNow has no standard change template with this sys_id: "
                "fix the inventory (nothing was touched)"
            ) from None
        except ServiceNowUnavailable:
            raise
        except ServiceNowError as exc:  # e.g. 400: the template is retired (not active) or no longer approved
            raise TemplateUnusable(
                f"rehearsal.change_template {template}: ServiceNow refused a change from it ({exc}): have the template "
                "re-approved and activated or set another in the inventory (nothing was touched)"
            ) from None
    change = ChangeStatus.from_record(record)
    decision, reason = change_gate(change, now or dt.datetime.now(dt.timezone.utc))
    if decision != "proceed":
        raise ChangeNotUsable(f"open_change refused: {reason}: nothing was touched")
    task = _task_of(client, change.sys_id) or client.create_change_task(change.sys_id, task_fields(cluster, request, run_id=run_id))
    return {
        "number": change.number,
        "sys_id": change.sys_id,
        "task_number": task["number"],
        "task_sys_id": task["sys_id"],
        "created": created,
    }


def implement(client: ServiceNowClient, opened: dict, note: str) -> ChangeStatus:
    """Re-read the change at the first touch of production: approved, Scheduled or Implement, in its
    window (a change cancelled meanwhile stops the run here, with nothing touched).

    A standard change is pre-approved by its template (the CAB approved the template, not each
    change): there is no approval record per change, so the separation-of-duties check of normal
    and emergency changes (an approver from the approval group who is not the requester,
    rewind.change_control.check_approvers) does not apply and require_gate is called without a
    requester. What makes a standard change unusable is its template (retired, no longer approved:
    ServiceNow refuses to create the change) or the change itself (cancelled, closed, out of window)."""
    change = require_gate(client, opened["sys_id"], step="mark_production", implementing=False)
    start_implementing(client, change, note)
    task = client.get_change_task(opened["sys_id"], opened["task_sys_id"])
    if int(task["state"]) == ChangeTaskState.OPEN:
        client.update_change_task(opened["sys_id"], opened["task_sys_id"], {"state": ChangeTaskState.IN_PROGRESS.value, "work_notes": note})
    return change


def succeed(client: ServiceNowClient, opened: dict, evidence: str) -> None:
    text = evidence[:MAX_NOTE_CHARS]
    client.update_change_task(
        opened["sys_id"],
        opened["task_sys_id"],
        {"state": ChangeTaskState.CLOSED.value, "close_code": "successful", "close_notes": text},
    )
    close_change(client, opened["sys_id"], close_code="successful", close_notes=text)


def find_opened(client: ServiceNowClient, *, dag_id: str, run_id: str) -> dict | None:
    """This run's change and task as open_change left them, or None when it made none."""
    found = client.find_changes(f"correlation_id={correlation_id(dag_id, run_id)}", limit=1)
    if not found:
        return None
    task = _task_of(client, found[0]["sys_id"])
    return {
        "number": found[0]["number"],
        "sys_id": found[0]["sys_id"],
        "task_number": task["number"] if task else None,
        "task_sys_id": task["sys_id"] if task else None,
    }


def fail(client: ServiceNowClient, opened: dict, reason: str, *, log: Callable[[str], None] = print) -> str:
    """Settle the change and its task after a failure; returns what was done, for the incident."""
    text = reason[:MAX_NOTE_CHARS]
    done = []
    if opened.get("task_sys_id"):
        task = client.get_change_task(opened["sys_id"], opened["task_sys_id"])
        if int(task["state"]) in CHANGE_TASK_CLOSED:
            done.append(f"change task {task['number']} was already closed")
        else:
            client.update_change_task(
                opened["sys_id"],
                opened["task_sys_id"],
                {"state": ChangeTaskState.CLOSED.value, "close_code": "unsuccessful", "close_notes": text},
            )
            done.append(f"change task {task['number']} closed unsuccessful")
    change = ChangeStatus.from_record(client.get_change(opened["sys_id"]))
    if change.state in (ChangeState.IMPLEMENT, ChangeState.REVIEW):
        close_change(client, change.sys_id, close_code="unsuccessful", close_notes=text)
        done.append(f"change {change.number} closed unsuccessful")
    elif change.state in (ChangeState.SCHEDULED, ChangeState.NEW):
        client.move_change(change.sys_id, ChangeState.CANCELED, {"work_notes": f"Not implemented: {text}"[:MAX_NOTE_CHARS]})
        done.append(f"change {change.number} canceled (the rehearsal had not begun)")
    else:
        done.append(f"change {change.number} was already {change.state_name}")
    log("; ".join(done))
    return "; ".join(done)
