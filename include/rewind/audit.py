"""One row per PITR, rehearsal, onboarding and decommissioning run, for auditors: who asked and
why, the change and who approved it, what was touched and how, and how it ended.

Plain Python over plain dicts (no Airflow import): the audit page (plugins/rewind_airflow/audit)
reads each run, its task instances and its tasks' return values (XCom) from Airflow's database and
hands them here; the page and its CSV export show the same rows. Everything comes from what Airflow
keeps (the run's form, its triggering user, each step's return value and times, the close summary);
nothing is read from a database host or from ServiceNow when the page is opened.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import re
from dataclasses import asdict, dataclass
from typing import Any

from pydantic import ValidationError

from rewind.change_control import ClosedChange, Person
from rewind.pitr.journal import JournalSnapshot
from rewind.pitr.request import PitrRequest
from rewind.pitr.results import DowntimeResult

# rewind_<workflow>__<cluster>; a new workflow of this family (rehearsal) needs only its name here.
WORKFLOWS = {"pitr": "PITR", "rehearsal": "Rehearsal", "onboard": "Onboarding", "decommission": "Decommission"}
DAG_ID = re.compile(r"^rewind_(?P<workflow>[a-z]+)__(?P<cluster>.+)$")
CHANGE_NUMBER = re.compile(r"\bCHG[0-9]+\b")

# Where a workflow stops serving and where it serves again (task ids; the first that ran counts).
DOWNTIME = {
    "pitr": (("stop_postgres",), ("promote", "wait_for_target")),
    "onboard": (("restart_postgres",), ("restart_postgres",)),
    "decommission": (("stop_archiving",), ("stop_archiving",)),
}
# Steps whose success is a check of the data or of the repository, when there is no validate_data.
CHECK_STEPS = ("check", "verify")

COLUMNS = (
    ("workflow", "Workflow"),
    ("cluster", "Cluster"),
    ("run_id", "Run"),
    ("requested_by", "Requested by"),
    ("reason", "Reason"),
    ("change_number", "Change"),
    ("approved_by", "Approved by"),
    ("approved_at", "Approved at"),
    ("target", "Target"),
    ("backup_used", "Backup used"),
    ("downtime", "Downtime"),
    ("data_checks", "Data checks"),
    ("new_backup", "New backup"),
    ("outcome", "Outcome"),
    ("started_at", "Started"),
    ("ended_at", "Ended"),
)


@dataclass(frozen=True)
class AuditRow:
    workflow: str
    cluster: str
    dag_id: str
    run_id: str
    requested_by: str
    reason: str
    change_number: str
    approved_by: str
    approved_at: str
    target: str
    backup_used: str
    downtime: str
    data_checks: str
    new_backup: str
    outcome: str
    started_at: str
    ended_at: str

    def as_dict(self) -> dict[str, str]:
        return asdict(self)


def workflow_of(dag_id: str) -> tuple[str, str] | None:
    """(workflow, cluster) of an audited DAG id, None for any other DAG."""
    match = DAG_ID.match(dag_id)
    if not match or match["workflow"] not in WORKFLOWS:
        return None
    return match["workflow"], match["cluster"]


def closed_change(value: Any) -> ClosedChange | None:
    """The close task's typed record; None for anything else (a run from before it was typed returned
    the close notes as text, and free text is never parsed for fields: a reason with line breaks
    could forge them)."""
    try:
        return ClosedChange.model_validate(value) if isinstance(value, dict) else None
    except ValidationError:
        return None


def latest_journal(journals: dict[str, Any] | None) -> JournalSnapshot | None:
    """The newest journal a PITR step published (every try of every step publishes it)."""
    found = []
    for value in (journals or {}).values():
        try:
            found.append(JournalSnapshot.model_validate(value))
        except ValidationError:
            continue
    return max(found, key=lambda record: record.at, default=None)


def _when(value: Any) -> dt.datetime | None:
    if value in (None, ""):
        return None
    if isinstance(value, dt.datetime):
        when = value
    else:
        try:
            when = dt.datetime.fromisoformat(str(value).replace("Z", "+00:00"))
        except ValueError:
            return None
    return when if when.tzinfo else when.replace(tzinfo=dt.timezone.utc)


def _stamp(value: Any) -> str:
    when = _when(value)
    return when.astimezone(dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC") if when else ""


def _seconds(seconds: float) -> str:
    seconds = round(seconds)
    if seconds < 60:
        return f"{seconds}s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes}m {seconds:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h {minutes:02d}m"


def _person(record: Any) -> str:
    if not isinstance(record, dict) or not (record.get("name") or record.get("email")):
        return ""
    amr = record.get("amr") or []
    mfa = f"amr: {', '.join(amr)}" if amr else "no MFA claim"
    who = f"{record.get('name') or ''} <{record.get('email') or ''}>".strip()
    return f"{who} (Airflow user {record.get('airflow_user') or '?'}; {mfa})"


def _first(xcoms: dict[str, Any], key: str, task_ids: tuple[str, ...] | None = None) -> Any:
    """`key` of the first return value (in task order) that is a dict holding it."""
    for task_id in task_ids or tuple(xcoms):
        value = xcoms.get(task_id)
        if isinstance(value, dict) and value.get(key) not in (None, ""):
            return value[key]
    return None


def _requested_by(run: dict, xcoms: dict, closed: ClosedChange | None, journal: JournalSnapshot | None) -> str:
    if closed and closed.requested_by:
        return closed.requested_by
    requester = (journal.requester if journal else None) or _first(xcoms, "requester")
    if isinstance(requester, dict):
        try:
            return Person(**{**requester, "amr": tuple(requester.get("amr") or ())}).describe()
        except TypeError:
            person = _person(requester)
            if person:
                return person
    user = run.get("triggering_user_name")
    return f"Airflow user {user}" if user else ""


def _change_number(run: dict, xcoms: dict) -> str:
    number = _first(xcoms, "number", ("ensure_change", "open_change"))
    if isinstance(number, str) and CHANGE_NUMBER.fullmatch(number):
        return number
    for text in ((run.get("conf") or {}).get("change_number"), run.get("note")):
        found = CHANGE_NUMBER.search(text) if isinstance(text, str) else None
        if found:
            return found[0]
    return ""


def _target(workflow: str, cluster: str, conf: dict, closed: ClosedChange | None, xcoms: dict) -> str:
    if closed and closed.target:
        return closed.target
    if workflow == "pitr" and isinstance(xcoms.get("validate_params"), dict):
        try:
            return PitrRequest.model_validate(xcoms["validate_params"]).describe()
        except ValidationError:
            pass
    target_type = conf.get("target_type")
    if target_type:
        parts = [str(target_type)]
        if conf.get("target") and target_type not in ("immediate", "latest"):
            parts.append(str(conf["target"]))
        if conf.get("target_timeline") not in (None, ""):
            parts.append(f"(timeline {conf['target_timeline']})")
        return " ".join(parts)
    if workflow == "decommission":
        deleting = _first(xcoms, "delete_repository", ("validate",))
        return f"cluster {cluster}" + ("; stanza deleted from the repository" if deleting else "")
    return f"cluster {cluster}"


def _backup_used(xcoms: dict) -> str:
    for task_id, nested in (("restore", None), ("stop_postgres", "plan"), ("preflight", None)):
        value = xcoms.get(task_id)
        if nested and isinstance(value, dict):
            value = value.get(nested)
        if isinstance(value, dict) and value.get("backup_set"):
            return str(value["backup_set"])
    found = _first(xcoms, "backup_set")
    if found:
        return str(found)
    restored = (xcoms.get("restore_scratch") or {}).get("backup") if isinstance(xcoms.get("restore_scratch"), dict) else None
    return str(restored["label"]) if isinstance(restored, dict) and restored.get("label") else ""  # rehearsal


def _task_time(tasks: dict, task_ids: tuple[str, ...], which: str) -> dt.datetime | None:
    for task_id in task_ids:
        task = tasks.get(task_id) or {}
        when = _when(task.get(which))
        if when and (which == "start_date" or task.get("state") == "success"):
            return when
    return None


def _pitr_downtime(tasks: dict, journal: JournalSnapshot | None) -> str:
    """From the journal's instants only: PostgreSQL stopped by this run, started on restored data,
    promoted. A run whose journal says it never stopped PostgreSQL touched nothing, whatever state
    its last task ended in."""
    if journal is None:
        started = any((tasks.get(t) or {}).get("start_date") for t in ("stop_restore_promote", "stop_postgres"))
        return "not recorded (a run from before Rewind published its journal)" if started else "not touched"
    steps = journal.steps
    if "stopped" not in steps:
        return "not touched"
    stopped = journal.stop_started_at or steps["stopped"]
    if "promoted" in steps:
        seconds = (_when(steps["promoted"]) - _when(stopped)).total_seconds()
        return f"{_seconds(seconds)} (stop to promoted)"
    if (tasks.get(DECIDE_TASK) or {}).get("state") == "awaiting_input":
        return f"stopped at {_stamp(stopped)}; paused read-only at the target since {_stamp(steps.get('at_target'))}, awaiting a decision"
    if "started" in steps:
        return f"stopped at {_stamp(stopped)}; started read-only on the restored data at {_stamp(steps['started'])}, not promoted"
    return f"stopped at {_stamp(stopped)}, not started again"


def _downtime(workflow: str, tasks: dict, xcoms: dict, journal: JournalSnapshot | None) -> str:
    if workflow == "pitr":
        return _pitr_downtime(tasks, journal)
    if workflow not in DOWNTIME:
        return "none"
    starts, ends = DOWNTIME[workflow]
    if workflow == "onboard" and isinstance(xcoms.get("restart_postgres"), str) and xcoms["restart_postgres"].startswith("not needed"):
        return "none (reloaded only)"
    start = _task_time(tasks, starts, "start_date")
    if start is None:
        return "none"
    end = _task_time(tasks, ends, "end_date")
    if end is None:
        return f"stopped at {_stamp(start)}, not back"
    what = {"pitr": "stop to promoted", "onboard": "restart", "decommission": "archiving stop and restart"}[workflow]
    return f"{_seconds((end - start).total_seconds())} ({what})"


def _data_checks(tasks: dict, xcoms: dict) -> str:
    results = xcoms.get("validate_data")
    if isinstance(results, list):
        passed = sum(1 for r in results if isinstance(r, dict) and r.get("passed"))
        details = "; ".join(f"{r.get('sql')} = {r.get('got')!s} (expected {r.get('expect')!s})" for r in results if isinstance(r, dict))
        return f"{passed}/{len(results)} passed" + (f": {details}" if details else "")
    if (tasks.get("validate_data") or {}).get("state") == "failed":
        return "failed"
    scratch = xcoms.get("check_scratch")  # rehearsal: the checks of the restored copy
    if isinstance(scratch, dict) and isinstance(scratch.get("checks"), list):
        checks = [c for c in scratch["checks"] if isinstance(c, dict)]
        passed = sum(1 for c in checks if c.get("ok"))
        return f"{passed}/{len(checks)} passed: " + "; ".join(f"{c.get('name')}: {c.get('summary')}" for c in checks)
    if (tasks.get("check_scratch") or {}).get("state") == "failed":
        return "failed"
    done = [f"{task_id} {tasks[task_id]['state']}" for task_id in CHECK_STEPS if (tasks.get(task_id) or {}).get("state")]
    return ", ".join(done)


def _new_backup(xcoms: dict) -> str:
    for task_id, value in xcoms.items():
        if "full_backup" in task_id and isinstance(value, dict) and value.get("label"):
            return str(value["label"])
    return ""


def _rewind_outcome(journal: JournalSnapshot) -> str:
    """What the run did to the cluster, from its journal."""
    steps = journal.steps
    if "closed" in steps:
        return f"rewound: promoted at {_stamp(steps.get('promoted'))}, change {journal.change} closed at {_stamp(steps['closed'])}"
    if "promoted" in steps:
        return f"rewound: promoted at {_stamp(steps['promoted'])}"
    if "started" in steps:
        return f"rewound: started on the restored data at {_stamp(steps['started'])}, not promoted"
    if "stopped" in steps:
        return f"PostgreSQL stopped at {_stamp(steps['stopped'])}, not started on restored data"
    return ""


def _pitr_outcome(run: dict, tasks: dict, journals: dict[str, Any] | None) -> str:
    """The rewind's own outcome and, as a line of its own, how the run's last failing try ended (a
    re-run refused after the rewind, say), both from the published journals."""
    journal = latest_journal(journals)
    if journal is None:
        return _outcome(run, tasks)
    lines = [_outcome(run, tasks)]
    done = _rewind_outcome(journal)
    if done:
        lines.append(done)
    if journal.failed and run.get("state") == "failed":
        kind = "refused" if journal.failed.startswith(("AlreadyRewound", "ChangeNotUsable", "PitrAlreadyRunning")) else "failed"
        again = (
            " (a re-run of a run that had already rewound)" if "started" in journal.steps and journal.task_id == "validate_params" else ""
        )
        lines.append(
            f"{journal.task_id} {kind} at {_stamp(journal.at)}, try {journal.try_number}{again}: {journal.failed.splitlines()[0][:300]}"
        )
    return "\n".join(lines)


def _outcome(run: dict, tasks: dict) -> str:
    state = run.get("state") or "unknown"
    order = list(tasks)
    asking = [t for t in order if (tasks[t] or {}).get("state") == "awaiting_input"]
    if state in ("running", "queued") and asking:
        return f"awaiting decision: {', '.join(asking)}"
    if state == "failed":
        failed = [t for t in order if (tasks[t] or {}).get("state") == "failed"]
        return f"failed at {failed[0]}" if failed else "failed"
    if state in ("running", "queued"):
        active = [t for t in order if (tasks[t] or {}).get("state") in ("running", "deferred", "up_for_retry", "queued")]
        return f"{state}: {', '.join(active)}" if active else state
    return state


# The PITR's downtime is one task (stop_restore_promote) returning each step's result under these keys.
DOWNTIME_TASK = "stop_restore_promote"
DOWNTIME_STEPS = {
    "stop": "stop_postgres",
    "restore": "restore",
    "start": "start_postgres",
    "recovery": "wait_for_target",
    "checks": "validate_data",
    "promote": "promote",
}


def _with_downtime_steps(tasks: dict[str, dict], xcoms: dict[str, Any]) -> tuple[dict[str, dict], dict[str, Any]]:
    """The downtime task's step results as if each step were its own task (the rows read them so)."""
    task = tasks.get(DOWNTIME_TASK)
    if not task:
        return tasks, xcoms
    try:
        window = DowntimeResult.model_validate(xcoms.get(DOWNTIME_TASK))
    except ValidationError:  # no return value (the task failed) or not one this code wrote: the task's times still count
        window = None
    steps = {
        step: _as_xcom(value) for key, step in DOWNTIME_STEPS.items() if window is not None and (value := getattr(window, key)) is not None
    }
    tasks = {**tasks, **{step: task for step in DOWNTIME_STEPS.values() if step not in tasks and step in steps}}
    tasks.setdefault("stop_postgres", task)
    return tasks, {**xcoms, **{step: value for step, value in steps.items() if step not in xcoms}}


def _as_xcom(value: Any) -> Any:
    """A step result as its task's return value was (the rows read plain JSON)."""
    return [item.to_xcom() for item in value] if isinstance(value, list) else value.to_xcom()


# With target_action decide, the DBA's answers at the target (decide_at_target) may have moved it:
# where the cluster was left, and the checks and backup of that target, are in this task's result.
DECIDE_TASK = "decide_at_target"


def _with_decisions(xcoms: dict[str, Any]) -> tuple[dict[str, Any], str]:
    """The checks and backup of the target the DBA left the cluster at, and one line of answers."""
    decided = xcoms.get(DECIDE_TASK)
    if not (isinstance(decided, dict) and decided.get("asked")):
        return xcoms, ""
    answers = [d for d in decided.get("decisions") or [] if isinstance(d, dict)]
    carried = [d for d in answers if not d.get("refused")]
    moves = sum(1 for d in carried if d.get("answer") == "Move the target")
    last = carried[-1] if carried else None
    line = f"{len(answers)} DBA answer(s), {moves} move(s) of the target" + (f"; {last.get('answer')} by {last.get('by')}" if last else "")
    updated = dict(xcoms)
    if not decided.get("aborted") and isinstance(decided.get("checks"), list):
        updated["validate_data"] = decided["checks"]
    if isinstance(decided.get("plan"), dict) and decided["plan"].get("backup_set"):
        updated["restore"] = {"backup_set": decided["plan"]["backup_set"]}
    return updated, line


def audit_row(run: dict, tasks: dict[str, dict], xcoms: dict[str, Any], journals: dict[str, Any] | None = None) -> AuditRow | None:
    """The row of one run. `run`: dag_id, run_id, state, start_date, end_date, triggering_user_name,
    conf, note. `tasks`: task id -> {state, start_date, end_date}, in the DAG's order. `xcoms`: task
    id -> return value. `journals`: task id -> the PITR journal that task published (JOURNAL_XCOM_KEY).
    None when the run is not of an audited workflow. Every field comes from structured data (the
    form, typed return values, the journal); free text (the reason, the close notes) is only ever
    shown as itself, one field."""
    found = workflow_of(run.get("dag_id") or "")
    if not found:
        return None
    workflow, cluster = found
    tasks, xcoms = _with_downtime_steps(tasks, xcoms)
    xcoms, answers = _with_decisions(xcoms)
    conf = run.get("conf") or {}
    closed = closed_change(xcoms.get("close_change"))
    journal = latest_journal(journals) if workflow == "pitr" else None
    approval = tasks.get("wait_for_approval") or {}
    outcome = _pitr_outcome(run, tasks, journals) if workflow == "pitr" else _outcome(run, tasks)
    if answers:
        first, _, rest = outcome.partition("\n")
        outcome = f"{first} ({answers})" + (f"\n{rest}" if rest else "")
    return AuditRow(
        workflow=WORKFLOWS[workflow],
        cluster=cluster,
        dag_id=run["dag_id"],
        run_id=run.get("run_id") or "",
        requested_by=_requested_by(run, xcoms, closed, journal),
        reason=str(conf.get("reason") or ""),
        change_number=_change_number(run, xcoms) or (closed.number if closed and CHANGE_NUMBER.fullmatch(closed.number) else ""),
        approved_by=(closed.approved_by or "") if closed else "",
        approved_at=_stamp(approval.get("end_date")) if approval.get("state") == "success" else "",
        target=_target(workflow, cluster, conf, closed, xcoms),
        backup_used=_backup_used(xcoms),
        downtime=_downtime(workflow, tasks, xcoms, journal),
        data_checks=_data_checks(tasks, xcoms),
        new_backup=_new_backup(xcoms),
        outcome=outcome,
        started_at=_stamp(run.get("start_date")),
        ended_at=_stamp(run.get("end_date")),
    )


def change_url(servicenow_base: str, number: str) -> str:
    """The change in the ServiceNow UI: https://<instance>/nav_to.do?uri=change_request.do?sysparm_query=number=CHG…"""
    if not number or not servicenow_base:
        return ""
    if not CHANGE_NUMBER.fullmatch(number):
        return ""
    return f"{servicenow_base.rstrip('/')}/nav_to.do?uri=change_request.do?sysparm_query=number={number}"


def to_csv(rows: list[AuditRow], *, servicenow_base: str = "") -> str:
    """The page's rows as CSV (one header line, then one line per run), the change's link included.
    Whatever a spreadsheet would take for a formula gets a leading apostrophe (_cell)."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerow([header for _, header in COLUMNS] + ["Change link"])
    for row in rows:
        values = row.as_dict()
        writer.writerow([_cell(values[name]) for name, _ in COLUMNS] + [change_url(servicenow_base, row.change_number)])
    return out.getvalue()


# A cell, or any part of it after a separator a spreadsheet may split on (a comma, a semicolon in
# locales whose lists use it, a tab, a pipe, a line break), that starts with one of these is a
# formula to a spreadsheet.
_FORMULA = re.compile(r"(^|[,;|\t\r\n])([ ]*)([=+\-@\t\r])")


def _cell(value: str) -> str:
    """Neutralised for spreadsheets in every locale: an apostrophe before each formula start."""
    return _FORMULA.sub(lambda m: f"{m[1]}{m[2]}'{m[3]}", value)
