"""Change control for every Rewind workflow that touches production: the change request found or
opened through ServiceNow's Change Management API (so the instance's change model decides every
move), who asked for it, who approved it, and the re-check at the moment of each destructive step.

- open_change: the change bound to a run (a retry finds it by correlation_id) or a new one of the
  normal or emergency model, submitted for approval (the move to Assess or Authorize); requested_by
  is the person who triggered the run.
- require_gate: approved, Scheduled or Implement (Implement once the run has begun), inside its
  window, and approved by someone other than the requester who belongs to the approval group:
  re-read at the moment of each step that stops, restores, starts or restarts PostgreSQL.
- start_implementing / close_change / cancel_change: the model's moves, each checked against
  the change's nextstates.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable

from rewind.errors import RewindError
from rewind.servicenow import ChangeModel, ChangeState, ChangeStatus, ServiceNowClient, change_gate

# Where each model asks for approval (ServiceNow starts the model's approvals on that move).
APPROVAL_STATE = {"normal": ChangeState.ASSESS, "emergency": ChangeState.AUTHORIZE}


MAX_NOTE_CHARS = 4000  # what Rewind writes into one ServiceNow journal entry or close note


class ChangeNotUsable(RewindError):
    """The change does not allow this step (not approved, another cluster's, already used, ...)."""

    opens_incident = False


def correlation_id(dag_id: str, run_id: str) -> str:
    return f"rewind:{dag_id}:{run_id}"


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
