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
import json
from collections.abc import Callable
from dataclasses import dataclass

from pydantic import BaseModel, ConfigDict

from rewind.errors import RewindError
from rewind.servicenow import ChangeModel, ChangeState, ChangeStatus, ServiceNowClient, change_gate

# Where each model asks for approval (ServiceNow starts the model's approvals on that move).
APPROVAL_STATE = {"normal": ChangeState.ASSESS, "emergency": ChangeState.AUTHORIZE}


MAX_NOTE_CHARS = 4000  # what Rewind writes into one ServiceNow journal entry or close note


# Every character str.splitlines() breaks a line at, besides the ASCII controls json escapes anyway.
_LINE_BREAKS = {"\u0085": "\\u0085", "\u2028": "\\u2028", "\u2029": "\\u2029"}


def free_text(text: str) -> str:
    """A person's free text (a reason) as one quoted line, its line breaks escaped: written into a
    change or a summary, it can never start a line of its own (a forged "Approved by: ..." after a
    newline in the reason) whatever line separator it holds."""
    quoted = json.dumps(str(text), ensure_ascii=False)
    for char, escaped in _LINE_BREAKS.items():
        quoted = quoted.replace(char, escaped)
    return quoted


class ClosedChange(BaseModel):
    """What closing a workflow's change recorded, as the close task returns it (typed XCom): the audit
    page reads who approved and who asked from these fields, never from the close notes' text."""

    model_config = ConfigDict(frozen=True)

    number: str
    close_code: str
    close_notes: str
    approved_by: str | None = None
    requested_by: str | None = None
    target: str | None = None


class ChangeNotUsable(RewindError):
    """The change does not allow this step (not approved, another cluster's, already used, ...)."""

    opens_incident = False
    # The change process's answer, not an outage: the step fails at once with it. (The approval
    # sensor is what waits for a change; a PITR step's retries are for Airflow and the database
    # host coming back, and would otherwise turn a refusal into minutes of asking again.)
    retryable = False


class RequesterUnknown(RewindError):
    """The person who triggered a destructive run cannot be named: refused before anything."""

    opens_incident = False


@dataclass(frozen=True)
class Person:
    """Who asked for a change: the ServiceNow user the triggering identity resolves to."""

    sys_id: str
    user_name: str
    email: str
    name: str
    airflow_user: str
    amr: tuple[str, ...] = ()  # the IdP's authentication methods for the session, when asserted

    def describe(self) -> str:
        methods = ", ".join(self.amr)
        if self.multi_factor:
            mfa = f"MFA asserted by the IdP (amr: {methods})"
        else:
            mfa = f"single factor per the IdP (amr: {methods})" if self.amr else "no MFA claim from the IdP"
        return f"{self.name} <{self.email}> (Airflow user {self.airflow_user}; {mfa})"

    @property
    def multi_factor(self) -> bool:
        """RFC 8176: "mfa" itself, or two or more distinct methods (e.g. pwd + otp)."""
        return "mfa" in self.amr or len(set(self.amr)) >= 2

    def as_dict(self) -> dict:
        return {**self.__dict__, "amr": list(self.amr)}


def find_person(client: ServiceNowClient, *, airflow_user: str | None, email: str | None, amr: tuple[str, ...] = ()) -> Person:
    """The one active ServiceNow user with the triggering identity's e-mail address."""
    who = airflow_user or "(nobody)"
    if not email:
        raise RequesterUnknown(
            f"the run was triggered by {who!r}, whose e-mail address Rewind cannot see: sign in through single sign-on "
            "(or register the identity, README 'Who asked'), then trigger again"
        )
    users = [u for u in client.query("sys_user", f"email={email}", limit=5) if u.get("active", "true") != "false"]
    if len(users) != 1:
        found = "is not a ServiceNow user" if not users else f"matches {len(users)} ServiceNow users"
        raise RequesterUnknown(f"the run was triggered by {who!r} <{email}>, who {found}: a change must name one requester")
    user = users[0]
    return Person(user["sys_id"], user.get("user_name", ""), email, user.get("name") or user.get("user_name", email), who, tuple(amr))


def find_group(client: ServiceNowClient, name: str) -> str:
    groups = client.query("sys_user_group", f"name={name}", limit=2)
    if len(groups) != 1:
        raise ChangeNotUsable(
            f"approval group {name!r} is {'not' if not groups else 'not uniquely'} in ServiceNow: fix change_control.approval_group"
        )
    return groups[0]["sys_id"]


def check_approvers(client: ServiceNowClient, change: ChangeStatus, *, step: str, requester: str, approval_group: str) -> list[str]:
    """Separation of duties: approved by someone other than the requester, from the approval group.
    Returns the approvers' sys_ids."""
    approvals = client.query("sysapproval_approver", f"sysapproval={change.sys_id}^state=approved", limit=100)
    approvers = {approval["approver"] for approval in approvals}
    others = approvers - {requester}
    if not others:
        why = "the requester cannot approve their own change" if approvers else "no approval of it is recorded"
        raise ChangeNotUsable(f"{step} refused: {change.number}: {why}: another member of the approval group must approve it")
    members = {member["user"] for member in client.query("sys_user_grmember", f"group={approval_group}", limit=1000)}
    if not others & members:
        raise ChangeNotUsable(
            f"{step} refused: {change.number} was approved by someone outside its approval group: a member of it must approve"
        )
    return sorted(others & members)


def approved_by(client: ServiceNowClient, sys_id: str) -> str | None:
    """The approvers ServiceNow recorded for a change, by name and address: for the close notes."""
    names = []
    for approval in client.query("sysapproval_approver", f"sysapproval={sys_id}^state=approved", limit=20):
        users = client.query("sys_user", f"sys_id={approval['approver']}", limit=1)
        names.append(f"{users[0].get('name')} <{users[0].get('email')}>" if users else approval["approver"])
    return ", ".join(names) or None


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


def require_gate(
    client: ServiceNowClient,
    sys_id: str,
    *,
    step: str,
    implementing: bool,
    requester: str | None = None,
    approval_group: str | None = None,
    now: dt.datetime | None = None,
) -> ChangeStatus:
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
    if requester is not None or approval_group is not None:
        if not (requester and approval_group):
            raise ChangeNotUsable(f"{step} refused: {change.number}: this run has no recorded requester or approval group")
        check_approvers(client, change, step=step, requester=requester, approval_group=approval_group)
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
