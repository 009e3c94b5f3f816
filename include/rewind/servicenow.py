"""ServiceNow Table API client and the change-approval rule Rewind proceeds on.

Table API: `/api/now/table/<table>`, JSON under `result`, every field value a string.
Retries with exponential backoff on connection errors, 429 and 5xx (honouring Retry-After);
401/403/404 and unexpected bodies raise at once with a message naming what to fix.

The rule (`change_gate`): proceed only when approval = approved AND state is Scheduled (-2) or
Implement (-1) AND now is inside the change window when one is set. Rejected, canceled or closed
changes, and a window that has ended, fail at once.
"""

from __future__ import annotations

import datetime as dt
import re
import time
from dataclasses import dataclass
from enum import IntEnum
from typing import Any, Literal

import requests

from rewind.errors import RewindError

CHANGE_TABLE = "change_request"


class ChangeState(IntEnum):
    """change_request.state as ServiceNow stores it."""

    NEW = -5
    ASSESS = -4
    AUTHORIZE = -3
    SCHEDULED = -2
    IMPLEMENT = -1
    REVIEW = 0
    CLOSED = 3
    CANCELED = 4

    @property
    def label(self) -> str:
        return self.name.capitalize()


CHANGE_STATES = {state.value: state.label for state in ChangeState}


class ChangeTaskState(IntEnum):
    """change_task.state: a change's tasks (e.g. one recurring rehearsal) have their own states. A
    closed task's outcome is its close_code (successful, successful_issues, unsuccessful)."""

    PENDING = -5
    OPEN = 1
    IN_PROGRESS = 2
    CLOSED = 3
    CANCELED = 4

    @property
    def label(self) -> str:
        return self.name.replace("_", " ").capitalize()


CHANGE_TASK_CLOSED = (ChangeTaskState.CLOSED, ChangeTaskState.CANCELED)
ChangeModel = Literal["normal", "emergency"]
CHANGE_NUMBER_RE = re.compile(r"^CHG\d{7,}$")
SN_TIME_FORMAT = "%Y-%m-%d %H:%M:%S"


class ServiceNowError(RewindError):
    """A ServiceNow answer Rewind cannot use (auth, permissions, missing record, bad body)."""


class ServiceNowUnavailable(ServiceNowError):
    """Transient: connection failure, 429 or 5xx after every retry. Callers may try again later."""


class ServiceNowNotFound(ServiceNowError):
    pass


def sn_time(value: dt.datetime) -> str:
    return value.astimezone(dt.timezone.utc).strftime(SN_TIME_FORMAT)


def parse_sn_time(value: str | None) -> dt.datetime | None:
    if not value:
        return None
    return dt.datetime.strptime(value, SN_TIME_FORMAT).replace(tzinfo=dt.timezone.utc)


@dataclass(frozen=True)
class Auth:
    kind: Literal["basic", "oauth"]
    username: str | None = None
    password: str | None = None
    client_id: str | None = None
    client_secret: str | None = None


class ServiceNowClient:
    def __init__(
        self,
        base_url: str,
        auth: Auth,
        *,
        timeout: float = 30.0,
        retries: int = 4,
        backoff_s: float = 1.0,
        session: requests.Session | None = None,
    ):
        self.base_url = base_url.rstrip("/")
        self.auth = auth
        self.timeout = timeout
        self.retries = retries
        self.backoff_s = backoff_s
        self.session = session or requests.Session()
        self._token: str | None = None
        self._token_expires = 0.0

    # ---- transport ------------------------------------------------------------------------------
    def _oauth_token(self, *, force: bool = False) -> str:
        if self._token and not force and time.monotonic() < self._token_expires - 30:
            return self._token
        response = self._send(
            "POST",
            "/oauth_token.do",
            data={"grant_type": "client_credentials", "client_id": self.auth.client_id, "client_secret": self.auth.client_secret},
            authenticate=False,
        )
        body = response.json()
        if "access_token" not in body:
            raise ServiceNowError("ServiceNow OAuth token response has no access_token: check client_id/client_secret")
        self._token = body["access_token"]
        self._token_expires = time.monotonic() + float(body.get("expires_in", 1800))
        return self._token

    def _auth_kwargs(self) -> dict:
        if self.auth.kind == "basic":
            return {"auth": (self.auth.username or "", self.auth.password or "")}
        return {"headers": {"Authorization": f"Bearer {self._oauth_token()}"}}

    def _send(self, method: str, path: str, *, authenticate: bool = True, **kwargs) -> requests.Response:
        url = f"{self.base_url}{path}"
        attempt = 0
        refreshed = False
        while True:
            attempt += 1
            request_kwargs = dict(kwargs)
            if authenticate:
                auth_kwargs = self._auth_kwargs()
                headers = {"Accept": "application/json", **request_kwargs.pop("headers", {}), **auth_kwargs.pop("headers", {})}
                request_kwargs.update(auth_kwargs, headers=headers)
            try:
                response = self.session.request(method, url, timeout=self.timeout, **request_kwargs)
            except requests.RequestException as exc:
                if attempt > self.retries:
                    raise ServiceNowUnavailable(
                        f"ServiceNow {method} {path}: {type(exc).__name__} after {attempt} attempts: {exc}"
                    ) from None
                time.sleep(self.backoff_s * 2 ** (attempt - 1))
                continue
            if response.status_code == 429 or response.status_code >= 500:
                if attempt > self.retries:
                    raise ServiceNowUnavailable(
                        f"ServiceNow {method} {path}: HTTP {response.status_code} after {attempt} attempts: {_error_text(response)}"
                    )
                retry_after = response.headers.get("Retry-After", "")
                delay = float(retry_after) if retry_after.isdigit() else self.backoff_s * 2 ** (attempt - 1)
                time.sleep(min(delay, 60.0))
                continue
            if response.status_code == 401 and authenticate and self.auth.kind == "oauth" and not refreshed:
                refreshed = True
                self._oauth_token(force=True)
                continue
            if response.status_code == 401:
                raise ServiceNowError(f"ServiceNow {method} {path}: 401 not authenticated: check the connection's credentials")
            if response.status_code == 403:
                raise ServiceNowError(
                    f"ServiceNow {method} {path}: 403 forbidden: the integration user lacks a role for this table ({_error_text(response)})"
                )
            if response.status_code == 404:
                raise ServiceNowNotFound(f"ServiceNow {method} {path}: 404 {_error_text(response)}")
            if response.status_code >= 400:
                raise ServiceNowError(f"ServiceNow {method} {path}: HTTP {response.status_code}: {_error_text(response)}")
            return response

    def _result(self, method: str, path: str, **kwargs) -> Any:
        response = self._send(method, path, **kwargs)
        try:
            body = response.json()
        except ValueError:
            raise ServiceNowError(f"ServiceNow {method} {path}: answer is not JSON (is the URL the instance's?)") from None
        if not isinstance(body, dict) or "result" not in body:
            raise ServiceNowError(f"ServiceNow {method} {path}: answer has no 'result' field")
        return body["result"]

    # ---- Table API ------------------------------------------------------------------------------
    def create(self, table: str, fields: dict[str, Any]) -> dict:
        return self._record(self._result("POST", f"/api/now/table/{table}", json=_strings(fields)), table)

    def get(self, table: str, sys_id: str) -> dict:
        return self._record(self._result("GET", f"/api/now/table/{table}/{sys_id}"), table)

    def query(self, table: str, query: str, *, fields: list[str] | None = None, limit: int = 100) -> list[dict]:
        params = {"sysparm_query": query, "sysparm_limit": str(limit)}
        if fields:
            params["sysparm_fields"] = ",".join(fields)
        result = self._result("GET", f"/api/now/table/{table}", params=params)
        if not isinstance(result, list):
            raise ServiceNowError(f"ServiceNow GET /api/now/table/{table}: expected a list of records")
        return result

    def get_by_number(self, table: str, number: str) -> dict:
        records = self.query(table, f"number={number}", limit=1)
        if not records:
            raise ServiceNowNotFound(f"ServiceNow: no {table} with number {number}")
        return records[0]

    def update(self, table: str, sys_id: str, fields: dict[str, Any]) -> dict:
        return self._record(self._result("PATCH", f"/api/now/table/{table}/{sys_id}", json=_strings(fields)), table)

    def add_work_note(self, table: str, sys_id: str, note: str) -> dict:
        return self.update(table, sys_id, {"work_notes": note})

    def work_notes(self, table: str, sys_id: str) -> list[str]:
        """Journal entries (oldest first) from sys_journal_field, as ServiceNow stores them."""
        records = self.query("sys_journal_field", f"element_id={sys_id}^element=work_notes^name={table}", limit=1000)
        return [r["value"] for r in sorted(records, key=lambda r: r.get("sys_created_on", ""))]

    @staticmethod
    def _record(result: Any, table: str) -> dict:
        if not isinstance(result, dict) or "sys_id" not in result:
            raise ServiceNowError(f"ServiceNow {table}: answer is not a record (no sys_id)")
        return result

    # ---- Change Management API ------------------------------------------------------------------
    # Changes are written only through /api/sn_chg_rest: it enforces the change model's states and
    # transitions (the Table API would let a write skip them), answers every field as
    # {"value", "display_value"}, and knows which states a change may move to next.
    def _change(self, method: str, path: str, **kwargs) -> dict:
        result = self._result(method, f"/api/sn_chg_rest/change{path}", **kwargs)
        if isinstance(result, list) and len(result) == 1:  # some releases wrap one record in a list
            result = result[0]
        return self._record(_values(result), "change_request")

    def create_change(self, model: ChangeModel, fields: dict[str, Any]) -> dict:
        """A normal or emergency change, in state New (POST /change/normal|emergency)."""
        return self._change("POST", f"/{model}", json=_strings(fields))

    def create_standard_change(self, template_sys_id: str, fields: dict[str, Any]) -> dict:
        """A standard (pre-approved) change from its published template."""
        return self._change("POST", f"/standard/{template_sys_id}", json=_strings(fields))

    def get_change(self, sys_id: str) -> dict:
        return self._change("GET", f"/{sys_id}")

    def find_changes(self, query: str, *, limit: int = 100) -> list[dict]:
        result = self._result("GET", "/api/sn_chg_rest/change", params={"sysparm_query": query, "sysparm_limit": str(limit)})
        if not isinstance(result, list):
            raise ServiceNowError("ServiceNow GET /api/sn_chg_rest/change: expected a list of change requests")
        return [_values(record) for record in result]

    def get_change_by_number(self, number: str) -> dict:
        found = self.find_changes(f"number={number}", limit=1)
        if not found:
            raise ServiceNowNotFound(f"ServiceNow: no change request with number {number}")
        return found[0]

    def update_change(self, sys_id: str, fields: dict[str, Any]) -> dict:
        return self._change("PATCH", f"/{sys_id}", json=_strings(fields))

    def add_change_note(self, sys_id: str, note: str) -> dict:
        return self.update_change(sys_id, {"work_notes": note})

    def next_states(self, sys_id: str) -> set[int]:
        """The states the change may move to from where it is (its current state included)."""
        result = self._result("GET", f"/api/sn_chg_rest/change/{sys_id}/nextstates")
        try:
            return {int(state) for state in result["available_states"]}
        except (KeyError, TypeError, ValueError):
            raise ServiceNowError(f"ServiceNow change {sys_id}: nextstates answer has no available_states") from None

    # Change tasks, through the same API: /change/{change_sys_id}/task[/{task_sys_id}].
    def create_change_task(self, change_sys_id: str, fields: dict[str, Any]) -> dict:
        return self._change("POST", f"/{change_sys_id}/task", json=_strings(fields))

    def change_tasks(self, change_sys_id: str) -> list[dict]:
        result = self._result("GET", f"/api/sn_chg_rest/change/{change_sys_id}/task")
        if not isinstance(result, list):
            raise ServiceNowError(f"ServiceNow GET /api/sn_chg_rest/change/{change_sys_id}/task: expected a list of change tasks")
        return [_values(record) for record in result]

    def get_change_task(self, change_sys_id: str, task_sys_id: str) -> dict:
        return self._change("GET", f"/{change_sys_id}/task/{task_sys_id}")

    def update_change_task(self, change_sys_id: str, task_sys_id: str, fields: dict[str, Any]) -> dict:
        return self._change("PATCH", f"/{change_sys_id}/task/{task_sys_id}", json=_strings(fields))

    def move_change(self, sys_id: str, to: ChangeState, fields: dict[str, Any] | None = None) -> dict:
        """Move the change to `to` as its model allows, with `fields` in the same update."""
        available = self.next_states(sys_id)
        if to not in available:
            change = ChangeStatus.from_record(self.get_change(sys_id))
            allowed = ", ".join(CHANGE_STATES.get(s, str(s)) for s in sorted(available - {change.state})) or "none"
            raise ServiceNowError(
                f"change {change.number} cannot move from {change.state_name} to {to.label} (its model allows: {allowed})"
            )
        return self.update_change(sys_id, {**(fields or {}), "state": to.value})


def _values(record: Any) -> Any:
    """A Change Management API record ({field: {"value", "display_value"}}) as the Table API
    returns it ({field: value})."""
    if not isinstance(record, dict):
        return record
    return {key: value.get("value", "") if isinstance(value, dict) and "value" in value else value for key, value in record.items()}


def _strings(fields: dict[str, Any]) -> dict[str, str]:
    return {key: "" if value is None else str(value) for key, value in fields.items()}


def _error_text(response: requests.Response) -> str:
    try:
        error = response.json().get("error", {})
        return f"{error.get('message', '')}: {error.get('detail', '')}".strip(": ") or response.reason
    except ValueError:
        return (response.text or response.reason or "").strip()[:200]


# ---- the change gate --------------------------------------------------------------------------
@dataclass(frozen=True)
class ChangeStatus:
    number: str
    sys_id: str
    state: int
    approval: str
    start: dt.datetime | None
    end: dt.datetime | None

    @classmethod
    def from_record(cls, record: dict) -> ChangeStatus:
        try:
            state = int(record.get("state", ""))
        except ValueError:
            raise ServiceNowError(f"change {record.get('number')}: state {record.get('state')!r} is not a number") from None
        return cls(
            number=record.get("number", ""),
            sys_id=record["sys_id"],
            state=state,
            approval=record.get("approval", ""),
            start=parse_sn_time(record.get("start_date")),
            end=parse_sn_time(record.get("end_date")),
        )

    @property
    def state_name(self) -> str:
        return CHANGE_STATES.get(self.state, str(self.state))


Decision = Literal["proceed", "wait", "reject"]


def change_gate(change: ChangeStatus, now: dt.datetime) -> tuple[Decision, str]:
    label = f"{change.number} (state {change.state_name}, approval {change.approval or 'not requested'})"
    if change.approval == "rejected":
        return "reject", f"{label} was rejected: the restore will not run"
    if change.state in (ChangeState.CLOSED, ChangeState.CANCELED, ChangeState.REVIEW):
        # Review comes after implementation: a change in it was implemented already, not by this run
        return "reject", f"{label} is {change.state_name}: the restore will not run"
    if change.end and now > change.end:
        return "reject", f"{label}: its window ended at {sn_time(change.end)} UTC: reschedule the change"
    if change.approval != "approved":
        return "wait", f"{label}: waiting for approval"
    if change.state not in (ChangeState.SCHEDULED, ChangeState.IMPLEMENT):
        return "wait", f"{label}: approved, waiting for state Scheduled or Implement"
    if change.start and now < change.start:
        return "wait", f"{label}: approved, window opens at {sn_time(change.start)} UTC"
    return "proceed", f"{label}: approved and inside its window"
