"""The change request a PITR runs under: what it says, how it is bound to one run, how it is
re-checked at each destructive step, and how it is closed or cancelled.

Every write goes through ServiceNow's Change Management API (rewind.servicenow.ServiceNowClient's
change methods), so the change's model decides which moves are allowed: a normal change is created
New and asks for approval by moving to Assess; an emergency change (an incident-driven rewind) moves
to Authorize; implementing is Scheduled -> Implement; closing is Implement -> Review -> Closed."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable

from rewind.errors import RewindError
from rewind.inventory import Cluster
from rewind.pitr.journal import run_using_change
from rewind.pitr.request import PitrRequest
from rewind.servicenow import ChangeModel, ChangeState, ChangeStatus, ServiceNowClient, ServiceNowNotFound, change_gate

# Where each model asks for approval (ServiceNow starts the model's approvals on that move).
APPROVAL_STATE = {"normal": ChangeState.ASSESS, "emergency": ChangeState.AUTHORIZE}

MAX_NOTE_CHARS = 4000  # what Rewind writes into one ServiceNow journal entry or close note


class ChangeNotUsable(RewindError):
    """The change does not allow this step (not approved, another cluster's, already used, ...)."""

    opens_incident = False


def correlation_id(dag_id: str, run_id: str) -> str:
    return f"rewind:{dag_id}:{run_id}"


def change_fields(cluster: Cluster, request: PitrRequest, *, dag_id: str, run_id: str, run_url: str) -> dict:
    target = request.describe()
    return {
        "short_description": f"Rewind PITR: restore {cluster.name} (stanza {cluster.stanza}) to {target}",
        "description": (
            f"Point-in-time recovery of PostgreSQL cluster {cluster.name} ({cluster.postgres.data_dir}, port {cluster.postgres.port}) "
            f"to {target}, with pgBackRest from s3://{cluster.repo.bucket}{cluster.repo.path}.\nReason: {request.reason}\n"
            f"At the target: {request.action_text()}.\nAirflow run: {run_id}\n{run_url}"
        ),
        "justification": request.reason,
        "implementation_plan": (
            "1. Archive current WAL and stop PostgreSQL.\n2. pgbackrest restore --delta to the target, on the timeline the plan names.\n"
            "3. Start PostgreSQL and wait until recovery reaches the target.\n"
            + (
                "4. Run the data checks on the paused, read-only cluster.\n5. Promote only if they pass.\n"
                if request.action == "pause"
                else "4. PostgreSQL promotes itself at the target.\n5. Run the data checks.\n"
            )
            + "6. Take a full backup on the new timeline.\n7. Close this change with the run summary."
        ),
        "backout_plan": (
            "Before promotion: stop PostgreSQL and restore again with another target (the repository is unchanged). "
            "After promotion the old timeline stays in the repository (Rewind holds it from expiry): a new PITR with "
            "target_timeline set to it returns there."
        ),
        "test_plan": f"Data checks ({'before' if request.action == 'pause' else 'after'} promotion): "
        + ("; ".join(c.sql for c in request.validation_sql) or "none given"),
        "cmdb_ci": cluster.name,
        "correlation_id": correlation_id(dag_id, run_id),
    }


def check_given_change(client: ServiceNowClient, cluster: Cluster, number: str, *, dag_id: str, run_id: str) -> ChangeStatus:
    """A change named in the form must be open, raised for this cluster, and not drive another PITR."""
    try:
        record = client.get_change_by_number(number)
    except ServiceNowNotFound:
        raise ChangeNotUsable(f"param change_number: {number} does not exist in ServiceNow") from None
    change = ChangeStatus.from_record(record)
    if change.state in (ChangeState.CLOSED, ChangeState.CANCELED) or change.approval == "rejected":
        raise ChangeNotUsable(f"param change_number: {number} is {change.state_name} (approval {change.approval}): use an open change")
    ci = record.get("cmdb_ci", "")
    if ci != cluster.name:
        raise ChangeNotUsable(
            f"param change_number: {number} is for configuration item {ci or '(none)'}, not cluster {cluster.name}: use a change raised for this cluster"
        )
    ours = correlation_id(dag_id, run_id)
    bound = record.get("correlation_id", "")
    if bound and bound != ours:
        raise ChangeNotUsable(f"param change_number: {number} already drives {bound}: one change, one PITR; raise a new change")
    used_by = run_using_change(cluster, number, except_run=run_id)
    if used_by:
        raise ChangeNotUsable(
            f"param change_number: {number} was already used by PITR run {used_by}: one change, one PITR; raise a new change"
        )
    return change


def ensure_change(client: ServiceNowClient, cluster: Cluster, request: PitrRequest, *, dag_id: str, run_id: str, run_url: str) -> dict:
    """Bind the given change to this run (correlation_id), or find this run's change (a retry), or
    create one of the request's model and ask for its approval. Returns {number, sys_id, created}."""
    ours = correlation_id(dag_id, run_id)
    if request.change_number:
        change = check_given_change(client, cluster, request.change_number, dag_id=dag_id, run_id=run_id)
        client.update_change(
            change.sys_id,
            {
                "correlation_id": ours,
                "work_notes": f"Rewind PITR run {run_id} will implement this change: {request.describe()}.\nAt the target: {request.action_text()}.\n{run_url}",
            },
        )
        return {"number": change.number, "sys_id": change.sys_id, "created": False}
    return open_change(
        client,
        correlation=ours,
        model=request.change_type,
        fields=lambda: change_fields(cluster, request, dag_id=dag_id, run_id=run_id, run_url=run_url),
    )


def open_change(client: ServiceNowClient, *, correlation: str, model: ChangeModel, fields: Callable[[], dict]) -> dict:
    """The change bound to `correlation` (a retry finds it), or a new one of `model` with `fields`;
    submitted for approval (the move to Assess or Authorize). Returns {number, sys_id, created}.
    Every Rewind workflow that changes production opens its change here."""
    existing = client.find_changes(f"correlation_id={correlation}", limit=1)
    if existing:
        record, created = existing[0], False
    else:
        record, created = client.create_change(model, {**fields(), "correlation_id": correlation}), True
    if ChangeStatus.from_record(record).state == ChangeState.NEW:  # a retry may find it not yet submitted
        record = client.move_change(record["sys_id"], APPROVAL_STATE[model])
    return {"number": record["number"], "sys_id": record["sys_id"], "created": created}


def require_gate(client: ServiceNowClient, sys_id: str, *, step: str, implementing: bool, now: dt.datetime | None = None) -> ChangeStatus:
    """Re-read the change at the moment of a destructive step: approved, Scheduled or Implement (only
    Implement once this run has started implementing it), and now inside its window."""
    change = ChangeStatus.from_record(client.get_change(sys_id))
    decision, reason = change_gate(change, now or dt.datetime.now(dt.timezone.utc))
    if decision != "proceed":
        raise ChangeNotUsable(f"{step} refused: {reason}: nothing was done by this step")
    if implementing and change.state != ChangeState.IMPLEMENT:
        raise ChangeNotUsable(
            f"{step} refused: {change.number} is {change.state_name}, not Implement: it is no longer this run's to implement"
        )
    return change


def start_implementing(client: ServiceNowClient, change: ChangeStatus, note: str) -> None:
    if change.state != ChangeState.IMPLEMENT:
        client.move_change(change.sys_id, ChangeState.IMPLEMENT, {"work_notes": note[:MAX_NOTE_CHARS]})


def close_change(client: ServiceNowClient, sys_id: str, *, close_code: str, close_notes: str) -> None:
    """Implement -> Review -> Closed, as the model walks it."""
    if ChangeStatus.from_record(client.get_change(sys_id)).state == ChangeState.IMPLEMENT:
        client.move_change(sys_id, ChangeState.REVIEW)
    client.move_change(sys_id, ChangeState.CLOSED, {"close_code": close_code, "close_notes": close_notes[:MAX_NOTE_CHARS]})


def cancel_change(client: ServiceNowClient, sys_id: str, note: str) -> None:
    client.move_change(sys_id, ChangeState.CANCELED, {"work_notes": note[:MAX_NOTE_CHARS]})


def summary(
    cluster: Cluster,
    request: PitrRequest,
    *,
    run_id: str,
    run_url: str,
    plan: dict,
    recovery: dict,
    checks: list[dict],
    timeline: int | None,
    backup: dict,
    timings: dict[str, float],
) -> str:
    passed = sum(1 for c in checks if c["passed"])
    lines = [
        f"Rewind PITR of {cluster.name} (stanza {cluster.stanza}) completed.",
        f"Run: {run_id}  {run_url}",
        f"Reason: {request.reason}",
        f"Target: {request.describe()}",
        f"At the target: {request.action_text()}",
        f"Restored from backup {plan['backup_set']} ({plan['backup_type']}, ended {plan['backup_stopped_at']}, stop LSN {plan['backup_stop_lsn']}) "
        f"along timeline {plan['timeline']}",
    ]
    if plan.get("target_record"):
        lines.append(f"Target record in WAL: {plan['target_record']} at {plan['target_lsn']}")
    lines.append(f"Recovery: {recovery.get('stop_record') or recovery.get('state')}; now on timeline {timeline}")
    lines.append(f"Data checks: {passed}/{len(checks)} passed")
    lines.append(f"New full backup on timeline {backup.get('timeline')}: {backup.get('label')}")
    lines.append(
        f"The pre-rewind history (its backups and WAL, and the recovery window it had) is held from expiry for {cluster.pitr.hold_days:g} days after this change closes."
    )
    lines.append("Timings: " + ", ".join(f"{name} {seconds:.0f}s" for name, seconds in timings.items()))
    return "\n".join(lines)[:MAX_NOTE_CHARS]
