"""The PITR request: the DAG run's params, validated across fields before anything is touched.

Every error is one line naming the param to fix. Every value that reaches pgBackRest or
PostgreSQL is constrained here: a restore-point name cannot carry a shell metacharacter or start
with '-', an xid is digits, an LSN is X/Y hex, a time carries its time zone, and each data check is
a single SQL statement.
"""

from __future__ import annotations

import datetime as dt
import re
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from rewind.errors import RewindError
from rewind.servicenow import CHANGE_NUMBER_RE
from rewind.wal import lsn_text, lsn_value

TARGET_TYPES = ("time", "xid", "name", "lsn", "immediate", "latest")
LSN_RE = re.compile(r"^[0-9A-Fa-f]{1,8}/[0-9A-Fa-f]{1,8}$")
NAME_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_ .:@+-]{0,62}$")
BACKUP_LABEL_RE = re.compile(r"^\d{8}-\d{6}F(_\d{8}-\d{6}[DI])?$")
MAX_XID = 2**63 - 1


class PitrParamError(RewindError):
    opens_incident = False  # the form's answer to a typo, not an operational problem
    retryable = False  # the same params give the same answer


def parse_target_time(text: str) -> dt.datetime:
    cleaned = text.strip()
    if re.search(r"[+-]\d{2}$", cleaned):  # PostgreSQL style "+00" -> "+00:00"
        cleaned += ":00"
    try:
        value = dt.datetime.fromisoformat(cleaned.replace(" UTC", "+00:00"))
    except ValueError:
        raise ValueError(f"{text!r} is not a timestamp: use e.g. 2026-11-24 02:13:30+00") from None
    if value.tzinfo is None:
        raise ValueError(f"{text!r} has no time zone: add one, e.g. 2026-11-24 02:13:30+00")
    return value.astimezone(dt.timezone.utc)


def _single_statement(sql: str) -> str:
    """Reject a second statement: no ';' outside quotes except one at the very end.

    The scan is only as good as its model of PostgreSQL's lexer, so what it cannot model is refused
    outright: backslashes anywhere (an E-string's backslash escapes a quote; psql meta-commands) and dollar quoting
    ($$...$$ hides a quote from a scanner that does not track it)."""
    body = sql.strip()
    if body.endswith(";"):
        body = body[:-1].rstrip()
    if "\\" in body:
        raise ValueError("must not contain backslashes (escape strings, psql meta-commands)")
    quote: str | None = None
    for index, char in enumerate(body):
        if quote:
            if char == quote:
                quote = None
        elif char in ("'", '"'):
            quote = char
        elif char == ";":
            raise ValueError("must be a single SQL statement (found ';' before the end)")
        elif body.startswith("--", index) or body.startswith("/*", index):
            raise ValueError("must not contain SQL comments")
        elif char == "$":
            raise ValueError("must not use dollar quoting or $ outside quotes")
    if quote:
        raise ValueError("has an unterminated quote")
    if not body:
        raise ValueError("is empty")
    return body


class DataCheck(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    sql: str = Field(max_length=4000)
    expect: str

    @field_validator("expect", mode="before")
    @classmethod
    def _as_text(cls, value):
        if isinstance(value, bool):
            return "t" if value else "f"  # how psql prints booleans
        return value if isinstance(value, str) else str(value)

    @field_validator("sql")
    @classmethod
    def _one_statement(cls, value: str) -> str:
        return _single_statement(value)


class PitrRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    target_type: Literal["time", "xid", "name", "lsn", "immediate", "latest"]
    target: str = ""
    target_exclusive: bool = False
    # pause (default): recovery stops read-only at the target, the data checks run there, and only
    # then is the cluster promoted; decide: the same pause and checks, then the DBA decides in
    # Airflow (promote, move the target, abort back to latest: rewind.pitr.decision); promote:
    # PostgreSQL promotes itself and opens for writes at the target, before the checks. `latest`
    # has no target to pause at and always promotes.
    target_action: Literal["promote", "pause", "decide"] = "pause"
    target_timeline: str = "current"
    backup_set: str | None = None
    change_number: str | None = None
    # normal (default): the CAB approves; emergency: for an incident-driven rewind, the emergency model's approvers
    change_type: Literal["normal", "emergency"] = "normal"
    validation_sql: list[DataCheck] = []
    validation_database: str | None = None  # where the checks run; default the cluster's main database
    # With target_action decide: how far (seconds, time targets only) from the approved target a DBA
    # may move it and still promote under this approval; beyond it, promoting needs the target
    # re-approved (a follow-on change). 0: only the approved target itself.
    approved_window_s: int = Field(default=0, ge=0, le=86400)
    # Where the target state is built (rewind.pitr.clone): in_place stops production and restores
    # over its data directory; clone builds and checks it beside production, which keeps serving,
    # and cuts over in seconds. inventory: the cluster's pitr.mode. undo: back to the end of the
    # timeline a clone-mode rewind left, by swapping the directory it kept back in (target latest,
    # target_timeline that timeline's number).
    mode: Literal["inventory", "in_place", "clone", "undo"] = "inventory"
    reason: str = Field(min_length=10, max_length=2000)

    @field_validator("target", "target_timeline", "reason", mode="before")
    @classmethod
    def _strip(cls, value):
        return value.strip() if isinstance(value, str) else value

    @field_validator("backup_set", "change_number", "validation_database", mode="before")
    @classmethod
    def _empty_is_none(cls, value):
        if isinstance(value, str):
            value = value.strip()
        return value or None

    @field_validator("reason")
    @classmethod
    def _printable(cls, value: str) -> str:
        if any(ord(c) < 32 and c not in "\n\t" for c in value):
            raise ValueError("must not contain control characters")
        return value

    @field_validator("target_timeline")
    @classmethod
    def _timeline(cls, value: str) -> str:
        if value not in ("current", "latest") and not re.fullmatch(r"[1-9][0-9]{0,8}", value):
            raise ValueError(f"{value!r} must be current, latest or a timeline number")
        return value

    @field_validator("backup_set")
    @classmethod
    def _label(cls, value: str | None) -> str | None:
        if value is not None and not BACKUP_LABEL_RE.match(value):
            raise ValueError(f"{value!r} is not a pgBackRest backup label like 20261124-020000F or 20261124-020000F_20261124-030000I")
        return value

    @field_validator("validation_database")
    @classmethod
    def _database(cls, value: str | None) -> str | None:
        if value is not None and not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_$-]{0,62}", value):
            raise ValueError(f"{value!r} is not a database name Rewind accepts (letters, digits, _ $ -)")
        return value

    @field_validator("change_number")
    @classmethod
    def _change(cls, value: str | None) -> str | None:
        if value is not None and not CHANGE_NUMBER_RE.match(value):
            raise ValueError(f"{value!r} is not a change number like CHG0010001")
        return value

    @model_validator(mode="after")
    def _target_matches_type(self) -> PitrRequest:
        kind, target = self.target_type, self.target
        if kind in ("immediate", "latest"):
            if target:
                raise ValueError(f"target: must be empty for target_type {kind}")
            if self.target_exclusive:
                raise ValueError(f"target_exclusive: has no meaning for target_type {kind}")
        elif not target:
            raise ValueError(f"target: required for target_type {kind}")
        if kind == "time":
            try:
                parse_target_time(target)
            except ValueError as exc:
                raise ValueError(f"target: {exc}") from None
        elif kind == "xid":
            if not re.fullmatch(r"[1-9][0-9]{0,18}", target) or int(target) > MAX_XID:
                raise ValueError(f"target: {target!r} is not a transaction id (a positive integer)")
        elif kind == "lsn":
            if not LSN_RE.match(target):
                raise ValueError(f"target: {target!r} is not an LSN like 0/3000060")
        elif kind == "name":
            if not NAME_RE.match(target):
                raise ValueError(
                    f"target: {target!r} is not a restore point name Rewind accepts: letters, digits, space and _ . : @ + -, "
                    "starting with a letter, digit or _, at most 63 characters"
                )
            if self.target_exclusive:
                raise ValueError("target_exclusive: not supported for restore point names")
        if self.approved_window_s and kind != "time":
            raise ValueError(f"approved_window_s: a window is only for target_type time (this one is {kind}); leave it 0")
        if kind == "latest" and self.target_action == "decide":
            raise ValueError("target_action: decide needs a target to pause at; latest recovers all WAL and promotes")
        if self.mode == "undo" and (kind != "latest" or not self.target_timeline.isdigit()):
            raise ValueError(
                "mode: undo goes back to the end of the timeline a clone-mode rewind left: target_type latest and "
                "target_timeline that timeline's number (`rewind holds` names it)"
            )
        if self.mode == "clone" and self.clone_mode_problem():
            raise ValueError(self.clone_mode_problem())
        return self

    def clone_mode_problem(self) -> str | None:
        """What clone mode cannot do, as `field: message`; None when it can."""
        if self.target_type == "latest":
            return "mode: clone needs a target to pause the clone at (production writes on meanwhile); for latest use in_place"
        return None

    def refuse_in_clone_mode(self) -> None:
        """The request in clone mode chosen by the inventory: refused as the param error it is."""
        problem = self.clone_mode_problem()
        if problem:
            raise PitrParamError(f"param {problem} (pitr.mode is clone in the inventory)")

    # ---- derived ------------------------------------------------------------------------------
    @property
    def target_time(self) -> dt.datetime | None:
        return parse_target_time(self.target) if self.target_type == "time" else None

    @property
    def action(self) -> str:
        """What PostgreSQL does at the target (pgBackRest's --target-action): latest has none to
        pause at, so it promotes; a run where the DBA decides pauses there."""
        if self.target_type == "latest":
            return "promote"
        return "pause" if self.target_action == "decide" else self.target_action

    def mode_for(self, inventory_mode: str) -> str:
        """in_place, clone or undo: the request's, else the inventory's for the cluster."""
        return inventory_mode if self.mode == "inventory" else self.mode

    @property
    def dba_decides(self) -> bool:
        """Paused at the target, the run asks the DBA: promote, move the target or abort."""
        return self.target_action == "decide"

    @property
    def pgbackrest_type(self) -> str:
        return "default" if self.target_type == "latest" else self.target_type

    @property
    def pgbackrest_target(self) -> str | None:
        if self.target_type == "time":
            return self.target_time.strftime("%Y-%m-%d %H:%M:%S.%f+00")
        if self.target_type == "lsn":
            return lsn_text(lsn_value(self.target))
        return self.target or None

    def describe(self) -> str:
        action = "pause, the DBA decides" if self.dba_decides else self.action
        if self.target_type in ("immediate", "latest"):
            return f"{self.target_type} (action {action}, timeline {self.target_timeline})"
        inclusive = "exclusive" if self.target_exclusive else "inclusive"
        return f"{self.target_type} {self.pgbackrest_target} ({inclusive}, action {action}, timeline {self.target_timeline})"

    def approval_text(self) -> str:
        """What the change approves: this target, and the window a DBA may move it in before promoting."""
        window = f", or a time within {self.approved_window_s} s of it" if self.approved_window_s else ""
        return f"promotion at {self.describe()}{window}; any other target needs re-approval (a follow-on change)"

    def covers(self, other: PitrRequest) -> bool:
        """Whether this (approved) request's approval covers promoting at `other`'s target."""
        if (other.target_type, other.pgbackrest_target, other.target_exclusive) == (
            self.target_type,
            self.pgbackrest_target,
            self.target_exclusive,
        ):
            return True
        if self.approved_window_s and self.target_type == other.target_type == "time":
            return abs((other.target_time - self.target_time).total_seconds()) <= self.approved_window_s
        return False

    def action_text(self) -> str:
        """For the change: when the data checks run relative to the cluster opening for writes."""
        if self.dba_decides:
            return (
                "recovery pauses read-only at the target; the data checks run there; then a DBA decides in Airflow: "
                "promote (only when the checks passed), move the target (restored again with --delta in this run, "
                "paused again) or abort (restored to the latest archived WAL, nothing lost)"
            )
        if self.action == "pause":
            return "recovery pauses read-only at the target; the data checks run there; the cluster is promoted only when they pass"
        if self.target_type == "latest":
            return "recovery to the end of the archived WAL promotes by itself (nothing is lost); the data checks run after promotion"
        return "PostgreSQL promotes itself at the target (target_action=promote, asked for by the requester); the data checks run after promotion"


def parse_request(params: dict) -> PitrRequest:
    """Validate DAG params; raise PitrParamError with one line naming the param."""
    try:
        return PitrRequest.model_validate(params)
    except ValidationError as exc:
        first = exc.errors()[0]
        loc = ".".join(str(p) for p in first["loc"])
        msg = first["msg"].removeprefix("Value error, ")
        if not loc and ":" in msg:  # cross-field errors name their param themselves
            loc, _, msg = msg.partition(": ")
        raise PitrParamError(f"param {loc or 'params'}: {msg}") from None
