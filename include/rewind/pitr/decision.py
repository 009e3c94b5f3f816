"""Decide while paused: a PITR run with target_action `decide` stops with PostgreSQL paused,
read-only, at its target, runs the data checks there, and asks the DBA (Airflow's human-in-the-loop
"Required actions"; only the DBA role may answer) one of:

  Promote                 open the cluster for writes at the current target. Refused (and asked
                          again) while a data check at this target fails.
  Move the target         restore again in this run, with --delta, to the target given in the form
                          (same timeline, the backup chosen anew), pause there, check, ask again.
  Abort: back to latest   restore to the end of the archived WAL of the timeline the cluster ran on
                          before the rewind, and promote: the state before the stop, nothing lost.

Nothing has been written to a paused cluster, so moving it or aborting loses nothing. The change
approves its target (and the window around it its requester asked for, `approved_window_s`): the
cluster may be inspected anywhere, but promoting elsewhere first needs a follow-on change approved
(the run waits for it, PostgreSQL paused). Every answer names the question it answers (the run's
count of targets paused at) and is refused if that is no longer the question. The change's gate is
re-read before each act; each answer is a work note on the change and an entry in the run's
journal, with who answered and when.

This module is the plain-Python half: the options, the new request a move asks for (checked like
the trigger form, one line naming the field), and the text the DBA and the auditor read.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from rewind.forms import FormValueError, form_bool
from rewind.pitr.request import PitrParamError, PitrRequest, parse_request
from rewind.pitr.results import CheckResult, DecisionRecord, RecoveryResult

PROMOTE = "Promote"
MOVE = "Move the target"
ABORT = "Abort: back to latest"
OPTIONS = (PROMOTE, MOVE, ABORT)

# The form a move fills in: Airflow Param definitions (JSON schema), by field name.
MOVE_TARGET_TYPES = ("time", "xid", "name", "lsn", "immediate")
FORM_FIELDS: dict[str, dict[str, Any]] = {
    "new_target_type": {
        "default": "time",
        "type": "string",
        "enum": list(MOVE_TARGET_TYPES),
        "title": "New target type (Move the target only)",
    },
    "new_target": {
        "default": "",
        "type": "string",
        "maxLength": 64,
        "title": "New target (Move the target only)",
        "description": "time: 2026-11-24 02:13:00+00 · xid: 123456 · name: before-migration-42 · lsn: 0/3000060 · empty for immediate",
    },
    "new_target_exclusive": {"default": False, "type": "boolean", "title": "Exclusive (Move the target only)"},
    "question": {
        "default": 1,
        "type": "integer",
        "minimum": 1,
        "title": "Question number",
        "description": "The run note names the question being asked and where the cluster is paused for it: "
        "an answer applies to that question only",
    },
}
_FORM_NAME = {"target_type": "new_target_type", "target": "new_target", "target_exclusive": "new_target_exclusive"}


class NotThisAnswer(PitrParamError):
    """An answer that cannot be carried out as given (a bad new target, promote after a failed
    check): nothing is touched and the DBA is asked again with this line."""


def require_this_question(form: Mapping[str, Any], *, question: int, target: str) -> None:
    """An answer is bound to the question it was given to: one given to an earlier question (a page
    left open while another DBA moved the target) would act on a target its author never saw."""
    given = form.get("question")
    if isinstance(given, str) and given.strip().isdigit():
        given = int(given)
    if isinstance(given, bool) or not isinstance(given, int):
        raise NotThisAnswer(f"question: {given!r} is not a question number; this is question {question} (paused at {target})")
    if given != question:
        raise NotThisAnswer(
            f"question: this answer was given to question {given}; the cluster is now at question {question}, paused at {target}: "
            "read the run note and answer that question"
        )


def moved_request(current: PitrRequest, form: Mapping[str, Any], *, timeline: int) -> PitrRequest:
    """The request a move asks for: the form's target on the plan's timeline (a number: the move
    stays on the history being recovered), the backup chosen anew, everything else as before."""
    if form.get("new_target_type") not in MOVE_TARGET_TYPES:
        raise NotThisAnswer(
            f"new_target_type: {form.get('new_target_type')!r} is not one of {', '.join(MOVE_TARGET_TYPES)} (to go back to latest, {ABORT})"
        )
    try:
        exclusive = form_bool(form.get("new_target_exclusive"), "new_target_exclusive")
    except FormValueError as exc:
        raise NotThisAnswer(str(exc)) from None
    fields = {"target_type": form.get("new_target_type"), "target": form.get("new_target") or "", "target_exclusive": exclusive}
    try:
        moved = parse_request(
            {**current.model_dump(mode="json"), **fields, "target_timeline": str(timeline), "backup_set": None, "target_action": "decide"}
        )
    except PitrParamError as exc:
        text = str(exc).removeprefix("param ")
        name, _, rest = text.partition(":")
        raise NotThisAnswer(f"{_FORM_NAME.get(name, name)}:{rest}") from None
    if (moved.target_type, moved.pgbackrest_target, moved.target_exclusive) == (
        current.target_type,
        current.pgbackrest_target,
        current.target_exclusive,
    ):
        raise NotThisAnswer(f"new_target: the cluster is already paused at {current.describe()}; give another target")
    return moved


def back_to_latest_request(current: PitrRequest, *, timeline_before: int) -> PitrRequest:
    """Abort: all archived WAL of the timeline the cluster ran on before this run stopped it."""
    return parse_request(
        {
            **current.model_dump(mode="json"),
            "target_type": "latest",
            "target": "",
            "target_exclusive": False,
            "target_action": "promote",
            "target_timeline": str(timeline_before),
            "backup_set": None,
        }
    )


def checks_passed(checks: list[CheckResult] | None) -> bool:
    return all(check.passed for check in checks or [])


def describe_decision(decision: DecisionRecord, *, short: bool = False) -> str:
    """One line per answer, for the change's notes and the run summary; `short` (the run note,
    which Airflow bounds) leaves out where the cluster was paused when it was given."""
    who = decision.by or "unknown"
    text = f"{decision.answer} by {who} at {decision.at}"
    origin = "" if short else f" from {decision.from_}"
    if decision.answer == MOVE and decision.to:
        text += f":{origin} to {decision.to}"
    elif decision.answer == ABORT and decision.on_clone:
        text += f":{origin} the clone removed; production, never stopped, serves on timeline {decision.timeline_before} as before"
    elif decision.answer == ABORT:
        text += f":{origin} back to the latest archived WAL of timeline {decision.timeline_before}"
    elif decision.answer == PROMOTE and not short:
        text += f": at {decision.from_}"
    if decision.reapproval:
        text += f" (re-approved in {decision.reapproval})"
    if decision.refused:
        text += f" (not carried out: {decision.refused})"
    return text


def state_text(
    cluster_name: str,
    request: PitrRequest,
    *,
    change: str | None,
    recovery: RecoveryResult | None,
    checks: list[CheckResult] | None,
    decisions: list[DecisionRecord],
    problem: str | None = None,
    question: int = 1,
    compare: str | None = None,
) -> str:
    """What the DBA reads before answering (the run note and the task log, refreshed at every
    question): where the cluster is paused, what the checks found there, the answers so far.
    `compare` (clone mode): how to look at the clone and production side by side."""
    paused = f"the clone of {cluster_name} is paused read-only" if compare else f"{cluster_name} is paused read-only"
    lines = [
        f"Question {question}: {change or 'The change'}: {paused} at {request.describe()}. "
        "Waiting for a DBA's decision (answer with this question number)."
    ]
    if compare:
        lines.append(compare)
    if problem:
        lines.append(f"Last answer not carried out: {problem}")
    # the newest answers first: Airflow bounds a run note, and the task log keeps every line
    answers = [f"Decision {number}: {describe_decision(d, short=True)}" for number, d in enumerate(decisions, 1)]
    if recovery:
        lines.append(f"Recovery stopped: {recovery.stop_record or recovery.state} (replayed to {recovery.replay_lsn})")
    if checks:
        failed = [c for c in checks if not c.passed]
        lines.append(f"Data checks here: {len(checks) - len(failed)}/{len(checks)} passed")
        lines.extend(f"  FAILED: {c.sql} -> {c.got} (expected {c.expect})" for c in failed)
    else:
        lines.append("Data checks here: none given")
    if not checks_passed(checks):
        lines.append(f"{PROMOTE} is refused until the checks pass here: {MOVE} or {ABORT}.")
    lines.extend(reversed(answers))
    return "\n".join(lines)


def question_body(cluster_name: str, change: str | None, *, compare: str | None = None) -> str:
    """The question's body (Markdown). Airflow keeps the first body of a task for every later
    question of the same try, so it says where the current state is instead of repeating it.
    `compare` (clone mode): how to look at the clone and production side by side, the same for the
    whole run (the clone keeps its socket and port)."""
    if compare:
        return (
            f"A **clone** of **{cluster_name}** is paused, **read-only**, at this run's target; **production still serves, "
            "untouched**. Where the clone is paused and the data checks there are in this run's **note** and this task's log, "
            f"refreshed at every question.\n\n{compare}\n\n"
            f"- **{PROMOTE}**: cut over: production is stopped for seconds, the clone's directory takes its place, promoted "
            "(refused while a data check there fails); production's directory is kept, stopped, for salvage and undo.\n"
            f"- **{MOVE}**: fill in the new target below; it is checked first, then **the clone only** is restored again with "
            "`--delta`, paused, checked, and you are asked again. Production is not touched.\n"
            f"- **{ABORT}**: the clone is removed; production, never stopped, goes on as it is. Nothing is lost.\n\n"
            "Every answer names the **question number** the run note shows: an answer to an earlier question is refused.\n\n"
            f"{change or 'The change'} approves promoting at its target (and the window its requester asked for): "
            "promoting anywhere else first asks for a follow-on change to be approved (production serves meanwhile). "
            "Each answer is a work note on the change, with your name."
        )
    return (
        f"PostgreSQL of **{cluster_name}** is paused, **read-only**, at this run's target: nothing has been written to it.\n\n"
        "**Where it is paused now, what recovery stopped at and the data checks there** are in this run's **note** "
        "and this task's log, refreshed at every question.\n\n"
        f"- **{PROMOTE}**: open it for writes at the current target (refused while a data check there fails).\n"
        f"- **{MOVE}**: fill in the new target below; it is checked first (nothing is touched if it cannot be reached), "
        "then restored with `--delta` in this run, paused, checked, and you are asked again.\n"
        f"- **{ABORT}**: restore to the latest archived WAL of the timeline it ran on before the rewind; nothing is lost.\n\n"
        "Every answer names the **question number** the run note shows: an answer to an earlier question is refused.\n\n"
        f"{change or 'The change'} approves promoting at its target (and the window its requester asked for): "
        "promoting anywhere else first asks for a follow-on change to be approved (the cluster stays paused meanwhile). "
        "Each answer is a work note on the change, with your name."
    )
