"""The PITR steps' typed results (rewind.pitr.results) and the XCom they travel as.

The dicts below are what the steps returned before they were typed (stop_restore_promote's steps
and decide_at_target, key for key): a run started before an upgrade, the audit page and
close_change's templated `steps` read exactly this, so each validates into its model and dumps back
identically.
"""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from rewind.pitr.change import left_at, summary
from rewind.pitr.decision import ABORT, MOVE, PROMOTE, checks_passed, describe_decision, state_text
from rewind.pitr.plan import RestorePlan
from rewind.pitr.request import parse_request
from rewind.pitr.results import (
    CheckResult,
    DecisionRecord,
    DecisionResult,
    DowntimeResult,
    PromoteResult,
    RecoveryResult,
    StopResult,
)
from tests.factories import cluster

REQUEST = parse_request(
    {
        "target_type": "time",
        "target": "2026-11-24 02:13:30+00",
        "target_timeline": "current",
        "validation_sql": [{"sql": "select count(*) from ledger_entry where status = 'void'", "expect": 0}],
        "reason": "migration 42 voided the ledger",
    }
)
DECIDE_REQUEST = parse_request({**REQUEST.model_dump(mode="json"), "target_action": "decide"})
PLAN = {  # RestorePlan.as_dict(), as the stop's re-plan recorded it
    "backup_set": "20261124-020000F",
    "backup_type": "full",
    "backup_stopped_at": "2026-11-24 02:05:00+00",
    "backup_stop_lsn": "0/5000100",
    "backup_size_bytes": 31000000,
    "timeline": 1,
    "timeline_requested": "current",
    "target_lsn": None,
    "target_record": None,
    "wal_scanned_to": None,
    "wal_first": "000000010000000000000005",
    "wal_last": "000000010000000000000009",
    "archive_max": "00000001000000000000000C",
    "archive_id": "15-1",
}
CHECKS = [{"sql": "select count(*) from ledger_entry where status = 'void'", "expect": "0", "got": "0", "passed": True}]
FAILED_CHECKS = [{"sql": "select count(*) from ledger_entry where status = 'void'", "expect": "0", "got": "3", "passed": False}]


def downtime_xcom(*, promoted: bool = True) -> dict:
    """stop_restore_promote's return value, as the untyped code built it (target_action pause)."""
    return {
        "stop": {
            "plan": PLAN,
            "pid_before": 4242,
            "timeline_before": 1,
            "started_at": "2026-11-24T02:27:45.100000+00:00",
            "finished_at": "2026-11-24T02:28:00.200000+00:00",
        },
        "restore": {
            "backup_set": "20261124-020000F",
            "timeline": 1,
            "started_at": "2026-11-24T02:28:00.300000+00:00",
            "finished_at": "2026-11-24T02:29:01.000000+00:00",
        },
        "start": {"log_offset": 8192, "started_at": "2026-11-24T02:29:01.500000+00:00"},
        "recovery": {
            "state": "paused",
            "replay_lsn": "0/9000028",
            "stop_record": "recovery stopping before commit of transaction 7421, time 2026-11-24 02:13:31.2+00",
            "timeline": None,
            "finished_at": "2026-11-24T02:29:05.000000+00:00",
        },
        "checks": CHECKS,
        "promote": {"timeline": 2, "finished_at": "2026-11-24T02:29:07.000000+00:00"} if promoted else None,
        "timings_s": {
            "stop_postgres": 15.1,
            "restore": 60.7,
            "start_postgres": 0.5,
            "wait_for_target": 3.5,
            "validate_data": 0.2,
            **({"promote": 2.0} if promoted else {}),
        },
    }


def retried_downtime_xcom() -> dict:
    """A retry after PostgreSQL was started on the restored data: no stop, no restore, no promote yet."""
    window = downtime_xcom(promoted=False)
    return {**window, "stop": None, "restore": None, "start": {"log_offset": 8192, "started_at": "2026-11-24T02:29:01.5+00:00"}}


STOP_RETRIED = {  # an earlier try had stopped PostgreSQL: no pid_before
    "plan": PLAN,
    "started_at": "2026-11-24T02:27:45.100000+00:00",
    "finished_at": "2026-11-24T02:31:00.000000+00:00",
    "timeline_before": 1,
}
MOVE_ANSWER = {
    "answer": MOVE,
    "by": "Dana DBA (Airflow user id 7)",
    "at": "2026-11-24T02:35:00.123000+00:00",
    "from": "time 2026-11-24 02:13:30.000000+00 (inclusive, action decide, timeline current)",
    "to": "xid 7421 (exclusive, action decide, timeline 1)",
}
REFUSED_PROMOTE = {
    "answer": PROMOTE,
    "by": "Dana DBA (Airflow user id 7)",
    "at": "2026-11-24T02:33:00.000000+00:00",
    "from": "time 2026-11-24 02:13:30.000000+00 (inclusive, action decide, timeline current)",
    "refused": "Promote refused: a data check failed at time 2026-11-24 02:13:30; move the target or abort",
}
ABORT_ANSWER = {
    "answer": ABORT,
    "by": "Dana DBA (Airflow user id 7)",
    "at": "2026-11-24T02:40:00.000000+00:00",
    "from": "xid 7421 (exclusive, action decide, timeline 1)",
    "timeline_before": 1,
    "to": "latest (action promote, timeline 1)",
}


def decision_xcom(*, aborted: bool = False) -> dict:
    """decide_at_target's return value after the DBA answered, as the untyped code built it."""
    decisions = [REFUSED_PROMOTE, MOVE_ANSWER, *([ABORT_ANSWER] if aborted else [])]
    return {
        "asked": True,
        "decisions": decisions,
        "request": DECIDE_REQUEST.model_dump(mode="json"),
        "plan": PLAN,
        # a move's recovery (no finished_at: rewind_airflow.operators.pitr_decide.restore)
        "recovery": {"state": "promoted" if aborted else "paused", "replay_lsn": "0/9000100", "stop_record": None, "timeline": 2},
        "checks": [] if aborted else CHECKS,
        "timeline": 2 if aborted else None,
        "aborted": aborted,
    }


@pytest.mark.parametrize(
    ("model", "xcom"),
    [
        (DowntimeResult, downtime_xcom()),
        (DowntimeResult, downtime_xcom(promoted=False)),
        (DowntimeResult, retried_downtime_xcom()),
        (StopResult, STOP_RETRIED),
        (DecisionResult, {"asked": False}),
        (DecisionResult, decision_xcom()),
        (DecisionResult, decision_xcom(aborted=True)),
        (DecisionRecord, {**MOVE_ANSWER, "request": DECIDE_REQUEST.model_dump(mode="json"), "plan": PLAN, "log_offset": 0}),
    ],
    ids=["downtime", "downtime-decide", "downtime-retry", "stop-retry", "not-asked", "decided", "aborted", "pending-answer"],
)
def test_a_result_of_todays_shape_validates_and_dumps_back_identically(model, xcom):
    assert model.model_validate(xcom).to_xcom() == xcom


def test_the_steps_build_the_same_xcom_as_the_dicts_did():
    window = downtime_xcom()
    built = DowntimeResult(
        stop=StopResult(plan=RestorePlan.model_validate(PLAN), **{k: v for k, v in window["stop"].items() if k != "plan"}),
        restore=window["restore"],
        start=window["start"],
        recovery=RecoveryResult(
            state="paused", replay_lsn="0/9000028", stop_record=window["recovery"]["stop_record"], timeline=None
        ).model_copy(update={"finished_at": window["recovery"]["finished_at"]}),
        checks=[CheckResult(**check) for check in CHECKS],
        promote=PromoteResult(timeline=2, finished_at=window["promote"]["finished_at"]),
        timings_s=window["timings_s"],
    )
    assert built.to_xcom() == window
    assert StopResult(plan=PLAN, started_at="a", finished_at="b", timeline_before=1).to_xcom().keys() == {
        "plan",
        "started_at",
        "finished_at",
        "timeline_before",
    }  # the stop's retry never reported pid_before
    assert DecisionResult(asked=False).to_xcom() == {"asked": False}


def test_a_key_no_step_writes_is_refused_and_results_are_frozen():
    with pytest.raises(ValidationError, match="stop_started_at"):
        DowntimeResult.model_validate({**downtime_xcom(), "stop_started_at": "x"})
    window = DowntimeResult.model_validate(downtime_xcom())
    with pytest.raises(ValidationError):
        window.recovery.state = "promoted"
    assert window.stop.plan.backup_set == "20261124-020000F" and window.checks[0].passed and window.promote.timeline == 2


def test_the_close_summary_of_a_paused_and_promoted_run_comes_from_its_downtime_result():
    window = DowntimeResult.model_validate(downtime_xcom())
    request, recovery, checks, timeline = left_at(
        REQUEST, recovery=window.recovery, checks=window.checks, promoted=window.promote, decision=DecisionResult(asked=False)
    )
    assert (request, recovery, checks, timeline) == (REQUEST, window.recovery, window.checks, 2)
    text = summary(
        cluster("ledger"),
        request,
        run_id="r1",
        run_url="http://airflow/r1",
        plan=window.stop.plan,
        recovery=recovery,
        checks=checks,
        timeline=timeline,
        backup={"label": "20261124-023500F", "timeline": 2},
        timings={"downtime (stop to promoted)": 82},
    )
    assert "Restored from backup 20261124-020000F (full, ended 2026-11-24 02:05:00+00, stop LSN 0/5000100) along timeline 1" in text
    assert "Recovery: recovery stopping before commit of transaction 7421, time 2026-11-24 02:13:31.2+00; now on timeline 2" in text
    assert "Data checks: 1/1 passed" in text and "New full backup on timeline 2: 20261124-023500F" in text


def test_the_close_summary_after_the_dba_decided_is_where_the_answers_left_the_cluster():
    window = DowntimeResult.model_validate(downtime_xcom(promoted=False) | {"checks": FAILED_CHECKS})
    decision = DecisionResult.model_validate(decision_xcom(aborted=True))
    request, recovery, checks, timeline = left_at(
        DECIDE_REQUEST, recovery=window.recovery, checks=window.checks, promoted=window.promote, decision=decision
    )
    assert (request, recovery.state, checks, timeline) == (DECIDE_REQUEST, "promoted", [], 2)
    text = summary(
        cluster("ledger"),
        request,
        run_id="r1",
        run_url="http://airflow/r1",
        plan=decision.plan,
        recovery=recovery,
        checks=checks,
        timeline=timeline,
        backup={"label": "L", "timeline": 2},
        timings={},
        decisions=decision.decisions,
    )
    assert "aborted by the DBA: restored to the latest archived WAL, nothing lost." in text.splitlines()[0]
    assert "Decision 1: Promote by Dana DBA (Airflow user id 7) at 2026-11-24T02:33:00.000000+00:00" in text
    assert "(not carried out: Promote refused" in text
    assert "Decision 3: Abort: back to latest by Dana DBA" in text and "back to the latest archived WAL of timeline 1" in text
    assert "Data checks: 0/0 passed" in text


def test_what_the_dba_reads_comes_from_the_typed_journal_entries():
    decision = DecisionResult.model_validate(decision_xcom())
    moved = describe_decision(decision.decisions[1])
    assert moved == (
        "Move the target by Dana DBA (Airflow user id 7) at 2026-11-24T02:35:00.123000+00:00: "
        "from time 2026-11-24 02:13:30.000000+00 (inclusive, action decide, timeline current) to xid 7421 (exclusive, action decide, timeline 1)"
    )
    failed = [CheckResult.model_validate(check) for check in FAILED_CHECKS]
    text = state_text("ledger", DECIDE_REQUEST, change="CHG1", recovery=decision.recovery, checks=failed, decisions=decision.decisions)
    assert "Recovery stopped: paused (replayed to 0/9000100)" in text
    assert "FAILED: select count(*) from ledger_entry where status = 'void' -> 3 (expected 0)" in text
    assert text.splitlines()[-1].startswith("Decision 1: Promote by Dana DBA") and "(not carried out:" in text.splitlines()[-1]
    assert checks_passed(decision.checks) and not checks_passed(failed)


def test_an_answer_being_carried_out_and_done_keeps_the_journal_shapes_of_the_dicts():
    """decide_at_target's pending answer (with its new request, plan, restart) and the record kept
    once it is done (without them), as the untyped code wrote them to the run's journal."""
    asked = DecisionRecord(answer=MOVE, by=MOVE_ANSWER["by"], at=MOVE_ANSWER["at"], from_=MOVE_ANSWER["from"])
    moved_to = parse_request({**DECIDE_REQUEST.model_dump(mode="json"), "target_type": "xid", "target": "7421", "target_timeline": "1"})
    prepared = asked.model_copy(update={"to": MOVE_ANSWER["to"], "request": moved_to, "plan": RestorePlan.model_validate(PLAN)})
    pending = {**MOVE_ANSWER, "request": moved_to.model_dump(mode="json"), "plan": PLAN}
    assert prepared.to_xcom() == pending
    started = DecisionRecord.model_validate(pending).model_copy(update={"started": "2026-11-24T02:35:10+00:00", "log_offset": 9000})
    assert started.to_xcom() == {**pending, "started": "2026-11-24T02:35:10+00:00", "log_offset": 9000}
    assert started.answered() == MOVE_ANSWER
    refused = asked.model_copy(update={"refused": "new_target: bad"})
    assert refused.to_xcom() == {key: MOVE_ANSWER[key] for key in ("answer", "by", "at", "from")} | {"refused": "new_target: bad"}
