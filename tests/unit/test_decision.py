"""Decide while paused: the new request a move asks for, the abort's, and what the DBA reads."""

from __future__ import annotations

import pytest

from rewind.pitr.decision import (
    ABORT,
    MOVE,
    PROMOTE,
    NotThisAnswer,
    back_to_latest_request,
    checks_passed,
    describe_decision,
    moved_request,
    state_text,
)
from rewind.pitr.request import PitrParamError, parse_request
from rewind.pitr.results import CheckResult, DecisionRecord, RecoveryResult

CURRENT = parse_request(
    {
        "target_type": "time",
        "target": "2026-11-24 02:13:30+00",
        "target_action": "decide",
        "target_timeline": "current",
        "backup_set": "20261124-010000F",
        "validation_sql": [{"sql": "select count(*) from ledger_entry where status = 'void'", "expect": 0}],
        "reason": "runaway UPDATE at 02:14",
    }
)


def test_a_move_keeps_the_checks_and_reason_stays_on_the_plans_timeline_and_chooses_the_backup_anew():
    moved = moved_request(CURRENT, {"new_target_type": "xid", "new_target": "7421", "new_target_exclusive": True}, timeline=2)
    assert (moved.target_type, moved.target, moved.target_exclusive) == ("xid", "7421", True)
    assert (moved.target_timeline, moved.backup_set, moved.target_action, moved.action) == ("2", None, "decide", "pause")
    assert moved.validation_sql == CURRENT.validation_sql and moved.reason == CURRENT.reason


@pytest.mark.parametrize(
    ("form", "message"),
    [
        ({"new_target_type": "time", "new_target": "02:13"}, "new_target: '02:13' is not a timestamp"),
        ({"new_target_type": "time", "new_target": "2026-11-24 02:13:00"}, "new_target: '2026-11-24 02:13:00' has no time zone"),
        ({"new_target_type": "xid", "new_target": "12; drop"}, "new_target: '12; drop' is not a transaction id"),
        ({"new_target_type": "immediate", "new_target": "x"}, "new_target: must be empty for target_type immediate"),
        ({"new_target_type": "name", "new_target": "p", "new_target_exclusive": True}, "new_target_exclusive: not supported"),
        (
            {"new_target_type": "latest", "new_target": ""},
            "new_target_type: 'latest' is not one of time, xid, name, lsn, immediate (to go back to latest, Abort: back to latest)",
        ),
        ({"new_target_type": "time", "new_target": "2026-11-24 02:13:30+00"}, "new_target: the cluster is already paused at"),
    ],
)
def test_a_bad_move_is_one_line_naming_the_form_field(form, message):
    with pytest.raises(NotThisAnswer) as refused:
        moved_request(CURRENT, form, timeline=1)
    assert str(refused.value).startswith(message), str(refused.value)
    assert "\n" not in str(refused.value)


def test_abort_is_all_wal_of_the_timeline_the_cluster_ran_on_and_promotes():
    back = back_to_latest_request(CURRENT, timeline_before=3)
    assert (back.target_type, back.target, back.target_timeline, back.action, back.backup_set) == ("latest", "", "3", "promote", None)
    with pytest.raises(Exception, match="target_action: decide needs a target"):
        parse_request({**CURRENT.model_dump(mode="json"), "target_type": "latest", "target": ""})


def test_what_the_dba_reads_names_the_failed_check_the_refusal_and_every_answer_with_who():
    decisions = [
        DecisionRecord.model_validate(d)
        for d in (
            {"answer": MOVE, "by": "Dana DBA (Airflow user id 7)", "at": "2026-11-24T02:20:01+00:00", "from": "time A", "to": "xid 7421"},
            {
                "answer": PROMOTE,
                "by": "Dana DBA (Airflow user id 7)",
                "at": "2026-11-24T02:21:00+00:00",
                "from": "xid 7421",
                "refused": "a check failed",
            },
        )
    ]
    checks = [
        CheckResult(sql="select 1", expect="1", got="1", passed=True),
        CheckResult(sql="select 2", expect="0", got="2", passed=False),
    ]
    text = state_text(
        "ledger",
        CURRENT,
        change="CHG0010001",
        recovery=RecoveryResult(
            state="paused", stop_record="recovery stopping before commit of transaction 7421", replay_lsn="0/3000060", timeline=None
        ),
        checks=checks,
        decisions=decisions,
        problem="a check failed",
    )
    assert text.splitlines()[0].startswith("Question 1: CHG0010001: ledger is paused read-only at time 2026-11-24 02:13:30")
    assert "Last answer not carried out: a check failed" in text
    assert "Data checks here: 1/2 passed" in text and "FAILED: select 2 -> 2 (expected 0)" in text
    assert f"{PROMOTE} is refused until the checks pass here" in text
    lines = text.splitlines()
    assert lines[-2].startswith("Decision 2: Promote by Dana DBA") and "(not carried out: a check failed)" in lines[-2]  # newest first
    assert lines[-1] == "Decision 1: Move the target by Dana DBA (Airflow user id 7) at 2026-11-24T02:20:01+00:00: to xid 7421"
    assert describe_decision(decisions[0]).endswith(": from time A to xid 7421")
    assert checks_passed([]) and not checks_passed(checks)
    assert "back to the latest archived WAL of timeline 1" in describe_decision(
        DecisionRecord.model_validate({"answer": ABORT, "by": "x", "at": "t", "from": "f", "timeline_before": 1})
    )


@pytest.mark.parametrize(
    "sent, exclusive", [(False, False), ("false", False), ("False", False), (None, False), (True, True), ("true", True)]
)
def test_a_rest_answer_s_false_is_false(sent, exclusive):
    """Issue: the string "false" sent over REST was read as true (Python truthiness)."""
    moved = moved_request(CURRENT, {"new_target_type": "xid", "new_target": "7421", "new_target_exclusive": sent}, timeline=2)
    assert moved.target_exclusive is exclusive


def test_a_yes_no_field_that_is_neither_is_refused_naming_it():
    with pytest.raises(NotThisAnswer, match=r"^new_target_exclusive: 'maybe' is not true or false$"):
        moved_request(CURRENT, {"new_target_type": "xid", "new_target": "7421", "new_target_exclusive": "maybe"}, timeline=2)
    from rewind.forms import FormValueError, form_bool

    assert form_bool("no", "x") is False and form_bool(1, "x") is True
    with pytest.raises(FormValueError, match=r"^param delete_repository: \[\] is not true or false$"):
        form_bool([], "param delete_repository")


def test_the_approval_covers_its_target_and_the_window_its_requester_asked_for_only():

    base = {"target_type": "time", "target": "2026-11-24 02:13:30+00", "target_action": "decide", "reason": "runaway UPDATE at 02:14"}
    exact = parse_request(base)
    windowed = parse_request({**base, "approved_window_s": 60})
    at = lambda target, kind="time": parse_request({**base, "target_type": kind, "target": target})  # noqa: E731
    assert exact.covers(at("2026-11-24 02:13:30.000+00")) and not exact.covers(at("2026-11-24 02:13:31+00"))
    assert windowed.covers(at("2026-11-24 02:14:30+00")) and not windowed.covers(at("2026-11-24 02:14:31+00"))
    assert not windowed.covers(at("7421", "xid"))  # another kind of target is never inside a time window
    assert "or a time within 60 s of it" in windowed.approval_text()
    with pytest.raises(PitrParamError, match="approved_window_s: a window is only for target_type time"):
        parse_request({**base, "target_type": "xid", "target": "7421", "approved_window_s": 5})
