"""A ServiceNow simulator for tests and the local stack, on loopback.

Speaks the Table API subset Rewind uses, with ServiceNow's JSON shapes: `{"result": ...}`, every
field value a string, errors as `{"error": {"message", "detail"}, "status": "failure"}`; and the
Change Management API (`/api/sn_chg_rest/change...`: create normal/emergency/standard changes, get,
query, update, `nextstates`, and a change's tasks: `.../{sys_id}/task[/{task_sys_id}]`), which enforces each change model's transitions and refuses a move the
model does not allow with 400, as ServiceNow does. Like an instance whose admins lock changes down,
it refuses Table API writes to change_request (403): Rewind must go through the change model.
`sysparm_query` (`field=value`, `field!=value`, joined by `^`), `sysparm_fields`, `sysparm_limit`;
tables change_request, change_task, incident and the journal table sys_journal_field (work notes
written through `work_notes` land there, as in ServiceNow); numbers CHG0010001, CTASK0010001,
INC0010001; basic auth and OAuth client credentials (`/oauth_token.do`); the data policy that
closing a change needs close_code and close_notes. Change tasks (change_task): -5 Pending, 1 Open,
2 In Progress, 3 Closed, 4 Canceled, the outcome of a closed one in its close_code; a closed or
canceled task stays so, closing one needs close_code and close_notes, and a closed or canceled
change takes no new task.

For people and tests:
    GET  /                              a page listing changes with Approve / Reject buttons
    POST /sim/changes/<number>/approve  approve (approval=approved, state=Scheduled)
    POST /sim/changes/<number>/reject   reject (approval=rejected, state=New)
    POST /sim/faults   {"status": 503, "count": 2, "delay_s": 0}   next N requests fail or are slow
    GET  /sim/requests                  every Table API request seen (method, path, query)

A test that plays "someone in ServiceNow" at a precise moment appends a callable to
`SimState.after_create`: it is called with (table, record) after every record is created.

    python -m devstack.servicenow_sim serve --port 8091 [--user rewind --password ...]
    python -m devstack.servicenow_sim approve CHG0010001 --url http://127.0.0.1:8091
"""

from __future__ import annotations

import argparse
import base64
import datetime as dt
import html
import json
import secrets
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from urllib.parse import parse_qs, urlparse

import requests

from devstack.net import LoopbackHTTPService

PREFIXES = {"change_request": "CHG", "change_task": "CTASK", "incident": "INC"}
TABLES = set(PREFIXES) | {"sys_journal_field", "sys_user", "sys_user_group", "sys_user_grmember", "sysapproval_approver"}
# People and the approval group the simulator starts with (SimState.add_user adds more):
# the on-call DBA who asks for changes, a CAB member who approves them, and someone outside the CAB.
APPROVAL_GROUP = "Database CAB"
DEFAULT_APPROVER = "cab.approver"
SEED_USERS = {
    "dba.oncall": ("dba.oncall@example.com", "DBA On-Call", ()),
    "cab.approver": ("cab.approver@example.com", "CAB Approver", (APPROVAL_GROUP,)),
    "ops.outsider": ("ops.outsider@example.com", "Ops Outsider", ()),
}


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S")


@dataclass
class Fault:
    status: int = 503
    count: int = 1
    delay_s: float = 0.0


@dataclass
class SimState:
    username: str = "rewind"
    password: str = field(default_factory=lambda: secrets.token_urlsafe(12))
    client_id: str = "rewind-client"
    client_secret: str = field(default_factory=lambda: secrets.token_urlsafe(12))
    records: dict[str, dict[str, dict]] = field(default_factory=lambda: {t: {} for t in TABLES})
    counters: dict[str, int] = field(default_factory=lambda: {t: 10000 for t in PREFIXES})
    tokens: set[str] = field(default_factory=set)
    faults: list[Fault] = field(default_factory=list)
    requests: list[dict] = field(default_factory=list)
    auto_approve: bool = False  # approve every change as soon as its approval is requested
    # Fields an admin's data policy makes mandatory for closing a change, besides close_code/notes.
    mandatory_on_close: list[str] = field(default_factory=list)
    # Standard change templates (sys_id -> fields every change made from it starts with).
    templates: dict[str, dict] = field(default_factory=dict)
    # Called with (table, record) after each create: a test's stand-in for a person acting at that moment.
    after_create: list = field(default_factory=list)
    lock: threading.RLock = field(default_factory=threading.RLock)

    def __post_init__(self) -> None:
        for user_name, (email, name, groups) in SEED_USERS.items():
            self.add_user(user_name, email=email, name=name, groups=groups)

    # ---- people, groups, approvals --------------------------------------------------------------------
    def add_user(self, user_name: str, *, email: str, name: str | None = None, groups=(), active: bool = True) -> dict:
        with self.lock:
            user = self.create(
                "sys_user", {"user_name": user_name, "email": email, "name": name or user_name, "active": str(active).lower()}
            )
            for group in groups:
                self.add_to_group(user_name, group)
            return user

    def group(self, name: str) -> dict:
        with self.lock:
            found = self.query("sys_user_group", f"name={name}")
            return found[0] if found else self.create("sys_user_group", {"name": name})

    def user(self, user_name: str) -> dict:
        [user] = self.query("sys_user", f"user_name={user_name}")
        return user

    def add_to_group(self, user_name: str, group: str) -> None:
        self.create("sys_user_grmember", {"user": self.user(user_name)["sys_id"], "group": self.group(group)["sys_id"]})

    def remove_from_group(self, user_name: str, group: str) -> None:
        with self.lock:
            user, group_id = self.user(user_name)["sys_id"], self.group(group)["sys_id"]
            for member in self.query("sys_user_grmember", f"user={user}^group={group_id}"):
                del self.records["sys_user_grmember"][member["sys_id"]]

    # ---- records --------------------------------------------------------------------------------
    def create(self, table: str, fields: dict) -> dict:
        with self.lock:
            record = {k: "" if v is None else str(v) for k, v in fields.items()}
            record["sys_id"] = uuid.uuid4().hex
            if table in PREFIXES:
                self.counters[table] += 1
                record["number"] = f"{PREFIXES[table]}{self.counters[table]:07d}"
            record.setdefault("sys_created_on", _now())
            record["sys_updated_on"] = record["sys_created_on"]
            if table == "change_request":
                record.setdefault("state", "-5")
                record.setdefault("approval", "not requested")
            if table == "incident":
                record.setdefault("state", "1")
            notes = record.pop("work_notes", "")
            record["work_notes"] = ""
            self.records[table][record["sys_id"]] = record
            if notes:
                self._journal(table, record["sys_id"], notes)
            created = dict(record)
            for callback in list(self.after_create):
                callback(table, dict(created))
            return created

    def update(self, table: str, sys_id: str, fields: dict) -> dict:
        with self.lock:
            record = self.records[table][sys_id]
            fields = {k: "" if v is None else str(v) for k, v in fields.items()}
            if table == "change_request" and fields.get("state") == "3":
                missing = [f for f in ("close_code", "close_notes", *self.mandatory_on_close) if not (fields.get(f) or record.get(f))]
                if missing:
                    raise PolicyError("The following fields are mandatory: " + ", ".join(m.replace("_", " ").capitalize() for m in missing))
            notes = fields.pop("work_notes", "")
            record.update(fields)
            record["sys_updated_on"] = _now()
            if notes:
                self._journal(table, sys_id, notes)
            return dict(record)

    def _journal(self, table: str, sys_id: str, value: str) -> None:
        entry = {
            "sys_id": uuid.uuid4().hex,
            "name": table,
            "element": "work_notes",
            "element_id": sys_id,
            "value": value,
            "sys_created_on": _now(),
            "sys_created_by": self.username,
        }
        # keep creation order stable within one second
        entry["sys_created_on"] += f".{len(self.records['sys_journal_field']):06d}"
        self.records["sys_journal_field"][entry["sys_id"]] = entry

    def query(self, table: str, query: str) -> list[dict]:
        conditions = [c for c in query.split("^") if c]

        def matches(record: dict) -> bool:
            for condition in conditions:
                if "!=" in condition:
                    key, value = condition.split("!=", 1)
                    if record.get(key, "") == value:
                        return False
                elif "=" in condition:
                    key, value = condition.split("=", 1)
                    if record.get(key, "") != value:
                        return False
                else:
                    raise PolicyError(f"unsupported query condition {condition!r}")
            return True

        with self.lock:
            return [dict(r) for r in self.records[table].values() if matches(r)]

    # ---- the Change Management API's change models --------------------------------------------------
    def next_states(self, sys_id: str) -> list[int]:
        with self.lock:
            record = self.records["change_request"][sys_id]
            state = int(record["state"])
            return sorted({state, *MODELS[record.get("type") or "normal"][state]})

    def create_change(self, model: str, fields: dict, *, template: str | None = None) -> dict:
        """POST /api/sn_chg_rest/change/<model>: always New (standard: Scheduled, approved by its template)."""
        if model not in MODELS:
            raise PolicyError(f"unknown change model {model!r}")
        fields = {k: v for k, v in fields.items() if k not in ("state", "approval", "type", "number", "sys_id")}
        if model == "standard":
            if template not in self.templates:
                raise LookupError(template)
            fields_of_template = dict(self.templates[template])
            # A template an admin retired (active false) makes no more changes, as in ServiceNow.
            if fields_of_template.pop("active", "true") in ("false", False):
                raise PolicyError(f"standard change template {template} is not active: it cannot be used to create a change")
            return self.create(
                "change_request",
                {
                    **fields_of_template,
                    **fields,
                    "type": "standard",
                    "state": -2,
                    "approval": "approved",
                    "std_change_producer_version": template,
                },
            )
        return self.create("change_request", {**fields, "type": model, "state": -5, "approval": "not requested"})

    def update_change(self, sys_id: str, fields: dict) -> dict:
        """PATCH /api/sn_chg_rest/change/<sys_id>: a state change must be one the change's model allows."""
        with self.lock:
            record = self.records["change_request"][sys_id]
            fields = {k: "" if v is None else str(v) for k, v in fields.items()}
            if "state" in fields and fields["state"] != record["state"]:
                model, here, to = record.get("type") or "normal", int(record["state"]), int(fields["state"])
                if to not in MODELS[model][here]:
                    raise TransitionError(f"a {model} change cannot move from {STATE_LABELS[here]} to {STATE_LABELS.get(to, to)}")
                if to == ASKS_FOR_APPROVAL.get(model):
                    fields.setdefault("approval", "requested")
            record = self.update("change_request", sys_id, fields)
            if self.auto_approve and record.get("approval") == "requested":
                record = self.decide(
                    record["number"], "approve", by=DEFAULT_APPROVER, note="Approved automatically (simulator auto-approve)"
                )
            return record

    # ---- change tasks (Change Management API: /change/<sys_id>/task) ---------------------------------
    def change_tasks(self, change_sys_id: str) -> list[dict]:
        with self.lock:
            if change_sys_id not in self.records["change_request"]:
                raise KeyError(change_sys_id)
            return sorted(self.query("change_task", f"change_request={change_sys_id}"), key=lambda r: r["number"])

    def create_change_task(self, change_sys_id: str, fields: dict) -> dict:
        with self.lock:
            change = self.records["change_request"][change_sys_id]
            if change["state"] in ("3", "4"):
                raise PolicyError(f"change {change['number']} is {STATE_LABELS[int(change['state'])]}: it takes no new task")
            fields = {k: v for k, v in fields.items() if k not in ("change_request", "number", "sys_id")}
            return self.create("change_task", {"state": 1, **fields, "change_request": change_sys_id})

    def update_change_task(self, change_sys_id: str, task_sys_id: str, fields: dict) -> dict:
        with self.lock:
            task = self.records["change_task"].get(task_sys_id)
            if task is None or task.get("change_request") != change_sys_id:
                raise KeyError(task_sys_id)
            fields = {k: "" if v is None else str(v) for k, v in fields.items() if k not in ("change_request", "number", "sys_id")}
            to = fields.get("state", task["state"])
            if to != task["state"]:
                if task["state"] in TASK_CLOSED:
                    raise TransitionError(f"change task {task['number']} is {TASK_LABELS[task['state']]}: a closed task stays closed")
                if to not in TASK_LABELS:
                    raise TransitionError(f"change task state {to!r} is not one of {', '.join(TASK_LABELS)}")
                if to == "3":
                    missing = [
                        label
                        for name, label in (("close_code", "Close code"), ("close_notes", "Close notes"))
                        if not (fields.get(name) or task.get(name))
                    ]
                    if missing:
                        raise PolicyError(f"The following fields are mandatory: {', '.join(missing)}")
            return self.update("change_task", task_sys_id, fields)

    def create_change_for_test(self, **fields) -> dict:
        """A change as people make it in ServiceNow's own UI (e.g. one a CAB approved), any state."""
        return self.create("change_request", {"type": "normal", **fields})

    def find_change(self, number: str) -> dict | None:
        with self.lock:
            return next((r for r in self.records["change_request"].values() if r["number"] == number), None)

    def decide(self, number: str, verdict: str, *, by: str = DEFAULT_APPROVER, note: str | None = None) -> dict:
        """An approver's decision: recorded in sysapproval_approver (who, what), as ServiceNow does."""
        with self.lock:
            change = self.find_change(number)
            if change is None:
                raise KeyError(number)
            approver = self.user(by)
            state = "approved" if verdict == "approve" else "rejected"
            self.create(
                "sysapproval_approver",
                {"sysapproval": change["sys_id"], "approver": approver["sys_id"], "state": state, "source_table": "change_request"},
            )
            text = note or f"{'Approved' if state == 'approved' else 'Rejected'} by {approver['name']} in the simulator"
            if state == "approved":
                return self.update("change_request", change["sys_id"], {"approval": "approved", "state": "-2", "work_notes": text})
            return self.update("change_request", change["sys_id"], {"approval": "rejected", "state": "-5", "work_notes": text})


class PolicyError(Exception):
    pass


class TransitionError(PolicyError):
    pass


# The states each change model lets a change move to from each state (what nextstates answers),
# besides staying where it is. Approval is the simulator's (approve/reject below): asking for it is
# the move to Assess (normal) or Authorize (emergency); standard changes are approved by their template.
MODELS = {
    "normal": {-5: {-4, 4}, -4: {-3, -5, 4}, -3: {-2, -5, 4}, -2: {-1, 4}, -1: {0, 4}, 0: {3, 4}, 3: set(), 4: set()},
    "emergency": {-5: {-3, 4}, -3: {-2, -5, 4}, -2: {-1, 4}, -1: {0, 4}, 0: {3, 4}, 3: set(), 4: set()},
    "standard": {-5: {-2, 4}, -2: {-1, 4}, -1: {0, 4}, 0: {3, 4}, 3: set(), 4: set()},
}
STATE_LABELS = {-5: "New", -4: "Assess", -3: "Authorize", -2: "Scheduled", -1: "Implement", 0: "Review", 3: "Closed", 4: "Canceled"}
ASKS_FOR_APPROVAL = {"normal": -4, "emergency": -3}
TASK_LABELS = {"-5": "Pending", "1": "Open", "2": "In Progress", "3": "Closed", "4": "Canceled"}
TASK_CLOSED = ("3", "4")


def as_display(record: dict) -> dict:
    """A record as the Change Management API returns it: every field {value, display_value}."""
    labels = {"state": lambda v: STATE_LABELS.get(int(v), v) if v.lstrip("-").isdigit() else v}
    if record.get("number", "").startswith("CTASK"):
        labels = {"state": lambda v: TASK_LABELS.get(v, v)}
    return {k: {"value": v, "display_value": labels.get(k, lambda x: x)(v)} for k, v in record.items()}


def make_handler(state: SimState):
    class Handler(BaseHTTPRequestHandler):
        server_version = "ServiceNowSim/1.0"

        def log_message(self, *_args):  # quiet
            pass

        # ---- plumbing -----------------------------------------------------------------------
        def _send(self, status: int, body: dict | str, content_type: str = "application/json") -> None:
            data = body.encode() if isinstance(body, str) else json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _error(self, status: int, message: str, detail: str = "") -> None:
            self._send(status, {"error": {"message": message, "detail": detail}, "status": "failure"})

        def _body(self) -> dict:
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length) if length else b""
            if self.headers.get("Content-Type", "").startswith("application/x-www-form-urlencoded"):
                return {k: v[0] for k, v in parse_qs(raw.decode()).items()}
            return json.loads(raw or b"{}")

        def _authenticated(self) -> bool:
            header = self.headers.get("Authorization", "")
            if header.startswith("Basic "):
                user, _, password = base64.b64decode(header[6:]).decode().partition(":")
                return user == state.username and password == state.password
            if header.startswith("Bearer "):
                return header[7:] in state.tokens
            return False

        def _fault(self) -> bool:
            with state.lock:
                fault = state.faults[0] if state.faults else None
                if fault:
                    fault.count -= 1
                    if fault.count <= 0:
                        state.faults.pop(0)
            if fault is None:
                return False
            if fault.delay_s:
                time.sleep(fault.delay_s)
            if fault.status >= 400:
                self._error(fault.status, "Simulated failure", f"HTTP {fault.status} injected by the simulator")
                return True
            return False

        def _route(self, method: str) -> None:
            url = urlparse(self.path)
            parts = [p for p in url.path.split("/") if p]
            params = {k: v[0] for k, v in parse_qs(url.query).items()}
            if parts[:1] == ["sim"] or url.path == "/":
                return self._sim(method, parts, url)
            if url.path == "/oauth_token.do" and method == "POST":
                body = self._body()
                if body.get("client_id") == state.client_id and body.get("client_secret") == state.client_secret:
                    token = secrets.token_urlsafe(16)
                    state.tokens.add(token)
                    return self._send(200, {"access_token": token, "token_type": "Bearer", "expires_in": 1799})
                return self._send(401, {"error": "access_denied", "error_description": "invalid client"})
            if parts[:3] == ["api", "sn_chg_rest", "change"]:
                return self._change_api(method, parts[3:], params)
            if parts[:3] != ["api", "now", "table"] or len(parts) < 4:
                return self._error(400, "Invalid URL", url.path)
            with state.lock:
                state.requests.append({"method": method, "path": url.path, "query": params.get("sysparm_query", "")})
            if self._fault():
                return None
            if not self._authenticated():
                return self._error(401, "User Not Authenticated", "Required to provide Auth information")
            table = parts[3]
            if table not in TABLES:
                return self._error(403, "Operation Failed", f"ACL exception: no access to table {table}")
            if table in ("sys_user", "sys_user_group", "sys_user_grmember", "sysapproval_approver") and method != "GET":
                return self._error(403, "Operation Failed", f"ACL exception: the integration user may read {table}, not write it")
            if table == "change_request" and method != "GET":
                return self._error(
                    403, "Operation Failed", "ACL exception: change_request is written through the Change Management API (/api/sn_chg_rest)"
                )
            sys_id = parts[4] if len(parts) > 4 else None
            try:
                if method == "GET" and sys_id is None:
                    records = state.query(table, params.get("sysparm_query", ""))
                    records = records[: int(params.get("sysparm_limit", "10000"))]
                    if params.get("sysparm_fields"):
                        wanted = params["sysparm_fields"].split(",")
                        records = [{k: r.get(k, "") for k in wanted} for r in records]
                    return self._send(200, {"result": records})
                if method == "GET":
                    record = state.records[table].get(sys_id)
                    if record is None:
                        return self._error(404, "No Record found", "Record doesn't exist or ACL restricts the record retrieval")
                    return self._send(200, {"result": dict(record)})
                if method == "POST" and sys_id is None:
                    return self._send(201, {"result": state.create(table, self._body())})
                if method in ("PATCH", "PUT") and sys_id:
                    if sys_id not in state.records[table]:
                        return self._error(404, "No Record found", "Record doesn't exist or ACL restricts the record retrieval")
                    return self._send(200, {"result": state.update(table, sys_id, self._body())})
            except PolicyError as exc:
                return self._error(400, "Data Policy Exception", str(exc))
            return self._error(405, "Method not supported", f"{method} {url.path}")

        def _change_api(self, method: str, path: list[str], params: dict) -> None:
            with state.lock:
                state.requests.append(
                    {"method": method, "path": "/api/sn_chg_rest/change/" + "/".join(path), "query": params.get("sysparm_query", "")}
                )
            if self._fault():
                return None
            if not self._authenticated():
                return self._error(401, "User Not Authenticated", "Required to provide Auth information")
            changes = state.records["change_request"]
            try:
                body = self._body() if method in ("POST", "PATCH", "PUT") else {}
                if method == "GET" and not path:
                    records = state.query("change_request", params.get("sysparm_query", ""))
                    return self._send(200, {"result": [as_display(r) for r in records[: int(params.get("sysparm_limit", "10000"))]]})
                if method == "POST" and len(path) == 1 and path[0] in ("normal", "emergency"):
                    return self._send(200, {"result": as_display(state.create_change(path[0], body))})
                if method == "POST" and len(path) == 2 and path[0] == "standard":
                    try:
                        return self._send(200, {"result": as_display(state.create_change("standard", body, template=path[1]))})
                    except LookupError:
                        return self._error(404, "No Record found", f"standard change template {path[1]}")
                sys_id = path[0] if path else None
                if sys_id not in changes:
                    return self._error(404, "No Record found", "Record doesn't exist or ACL restricts the record retrieval")
                if method == "GET" and len(path) == 1:
                    return self._send(200, {"result": as_display(dict(changes[sys_id]))})
                if method == "GET" and path[1:] == ["nextstates"]:
                    available = state.next_states(sys_id)
                    return self._send(
                        200,
                        {
                            "result": {
                                "available_states": [str(s) for s in available],
                                "state_label": {str(s): STATE_LABELS[s] for s in available},
                            }
                        },
                    )
                if method in ("PATCH", "PUT") and len(path) == 1:
                    return self._send(200, {"result": as_display(state.update_change(sys_id, body))})
                if path[1:2] == ["task"]:
                    return self._change_task(method, sys_id, path[2:], body)
            except PolicyError as exc:
                return self._error(
                    400, "Data Policy Exception" if not isinstance(exc, TransitionError) else "Invalid state transition", str(exc)
                )
            return self._error(405, "Method not supported", f"{method} /api/sn_chg_rest/change/{'/'.join(path)}")

        def _change_task(self, method: str, change_sys_id: str, rest: list[str], body: dict) -> None:
            if method == "GET" and not rest:
                return self._send(200, {"result": [as_display(t) for t in state.change_tasks(change_sys_id)]})
            if method == "POST" and not rest:
                return self._send(201, {"result": as_display(state.create_change_task(change_sys_id, body))})
            try:
                if method == "GET" and len(rest) == 1:
                    task = state.records["change_task"].get(rest[0])
                    if task is None or task.get("change_request") != change_sys_id:
                        raise KeyError(rest[0])
                    return self._send(200, {"result": as_display(dict(task))})
                if method in ("PATCH", "PUT") and len(rest) == 1:
                    return self._send(200, {"result": as_display(state.update_change_task(change_sys_id, rest[0], body))})
            except KeyError:
                return self._error(404, "No Record found", f"change task {rest[0]} of change {change_sys_id}")
            return self._error(405, "Method not supported", f"{method} /api/sn_chg_rest/change/{change_sys_id}/task/{'/'.join(rest)}")

        def _sim(self, method: str, parts: list[str], url) -> None:
            if url.path == "/" and method == "GET":
                return self._send(200, _page(state), "text/html; charset=utf-8")
            if parts[1:2] == ["changes"] and len(parts) == 4 and method == "POST" and parts[3] in ("approve", "reject"):
                by = parse_qs(url.query).get("as", [DEFAULT_APPROVER])[0]
                try:
                    record = state.decide(parts[2], parts[3], by=by)
                except (KeyError, ValueError):
                    return self._error(404, "No Record found", parts[2])
                if self.headers.get("Content-Type", "").startswith("application/x-www-form-urlencoded"):
                    self.send_response(303)
                    self.send_header("Location", "/")
                    self.end_headers()
                    return None
                return self._send(200, {"result": record})
            if parts[1:] == ["faults"] and method == "POST":
                body = self._body()
                with state.lock:
                    state.faults.append(Fault(int(body.get("status", 503)), int(body.get("count", 1)), float(body.get("delay_s", 0))))
                return self._send(200, {"result": "ok"})
            if parts[1:] == ["requests"] and method == "GET":
                with state.lock:
                    return self._send(200, {"result": list(state.requests)})
            return self._error(404, "Not found", url.path)

        def do_GET(self):
            self._route("GET")

        def do_POST(self):
            self._route("POST")

        def do_PATCH(self):
            self._route("PATCH")

        def do_PUT(self):
            self._route("PUT")

    return Handler


def _page(state: SimState) -> str:
    with state.lock:
        changes = sorted(state.records["change_request"].values(), key=lambda r: r["number"], reverse=True)
        tasks = sorted(state.records["change_task"].values(), key=lambda r: r["number"], reverse=True)
        users = {sys_id: user for sys_id, user in state.records["sys_user"].items()}
    numbers = {change["sys_id"]: change["number"] for change in changes}
    task_rows = "".join(
        "<tr>"
        + "".join(
            f"<td>{html.escape(value)}</td>"
            for value in (
                task["number"],
                numbers.get(task.get("change_request", ""), ""),
                task.get("short_description", ""),
                TASK_LABELS.get(task.get("state", ""), task.get("state", "")),
                task.get("close_code", ""),
            )
        )
        + f"<td><pre>{html.escape(task.get('close_notes', ''))}</pre></td></tr>"
        for task in tasks
    )
    rows = []
    for change in changes:
        requester = users.get(change.get("requested_by", ""))
        requested_by = f"{requester['name']} <{requester['email']}>" if requester else change.get("requested_by", "")
        buttons = ""
        if change.get("approval") == "requested":
            buttons = "".join(
                f'<form method="post" action="/sim/changes/{html.escape(change["number"])}/{verdict}" style="display:inline">'
                f'<button type="submit">{verdict.capitalize()}</button></form> '
                for verdict in ("approve", "reject")
            )
        rows.append(
            "<tr>"
            + "".join(
                f"<td>{html.escape(change.get(k, ''))}</td>"
                for k in ("number", "short_description", "state", "approval", "start_date", "end_date", "close_code")
            )
            + f"<td>{html.escape(requested_by)}</td><td>{buttons}</td></tr>"
        )
    return (
        "<!doctype html><html><head><title>ServiceNow simulator</title><meta http-equiv='refresh' content='10'>"
        "<style>body{font-family:sans-serif}td,th{border:1px solid #ccc;padding:4px 8px}</style></head><body>"
        "<h1>ServiceNow simulator: change requests</h1><p>state: -5 New, -3 Authorize, -2 Scheduled, -1 Implement, 3 Closed, 4 Canceled</p>"
        "<table><tr><th>number</th><th>short description</th><th>state</th><th>approval</th><th>start</th><th>end</th><th>close code</th><th>requested by</th><th></th></tr>"
        + "".join(rows)
        + "</table><h2>Change tasks</h2><table><tr><th>number</th><th>change</th><th>short description</th><th>state</th>"
        "<th>close code</th><th>close notes</th></tr>" + task_rows + "</table></body></html>"
    )


class ServiceNowSimulator(LoopbackHTTPService):
    """Runs the simulator in a background thread of this process."""

    def __init__(self, port: int = 0, state: SimState | None = None, host: str = "127.0.0.1"):
        self.state = state or SimState()
        super().__init__(make_handler(self.state), port, host)

    def airflow_connection(self) -> str:
        """The Airflow connection (JSON, for AIRFLOW_CONN_<ID>) pointing at this simulator."""
        return json.dumps(
            {
                "conn_type": "http",
                "host": self.host,
                "port": self.port,
                "schema": "http",
                "login": self.state.username,
                "password": self.state.password,
            }
        )

    def approve(self, number: str, *, by: str = DEFAULT_APPROVER) -> dict:
        return self.state.decide(number, "approve", by=by)

    def reject(self, number: str, *, by: str = DEFAULT_APPROVER) -> dict:
        return self.state.decide(number, "reject", by=by)

    def fail_next(self, count: int, status: int = 503, delay_s: float = 0.0) -> None:
        with self.state.lock:
            self.state.faults.append(Fault(status, count, delay_s))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="servicenow-sim", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve")
    serve.add_argument("--port", type=int, default=8091)
    serve.add_argument("--user", default="rewind")
    serve.add_argument("--password", default=None, help="default: $SERVICENOW_SIM_PASSWORD or generated")
    serve.add_argument(
        "--standard-template",
        action="append",
        default=[],
        metavar="SYS_ID=SHORT_DESCRIPTION",
        help="a published standard change template (repeatable)",
    )
    for verdict in ("approve", "reject"):
        decide = sub.add_parser(verdict)
        decide.add_argument("number")
        decide.add_argument("--url", default="http://127.0.0.1:8091")
    args = parser.parse_args(argv)
    if args.command == "serve":
        import os

        state = SimState(username=args.user)
        state.password = args.password or os.environ.get("SERVICENOW_SIM_PASSWORD") or state.password
        for template in args.standard_template:
            sys_id, _, short_description = template.partition("=")
            state.templates[sys_id] = {"short_description": short_description or sys_id}
        sim = ServiceNowSimulator(args.port, state)
        print(f"ServiceNow simulator on {sim.url} (user {state.username})", flush=True)
        try:
            sim.server.serve_forever()
        except KeyboardInterrupt:
            pass
        return 0
    response = requests.post(f"{args.url}/sim/changes/{args.number}/{args.command}", timeout=10)
    if response.status_code != 200:
        print(f"servicenow-sim: {args.command} {args.number}: HTTP {response.status_code} {response.text}", file=sys.stderr)
        return 1
    record = response.json()["result"]
    print(f"{record['number']}: approval={record['approval']} state={record['state']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
