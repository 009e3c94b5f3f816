"""The auditors' rows, from what Airflow keeps of each run (its form, tasks and return values)."""

from __future__ import annotations

import csv
import io

from rewind.audit import COLUMNS, audit_row, change_url, summary_fields, to_csv, workflow_of
from rewind.change_control import Person
from rewind.pitr.change import summary
from rewind.pitr.plan import RestorePlan
from rewind.pitr.request import parse_request
from rewind.pitr.results import CheckResult, RecoveryResult
from tests.factories import cluster
from tests.unit.test_pitr_results import downtime_xcom

REQUESTER = Person(
    sys_id="u1", user_name="dba.oncall", email="dba.oncall@example.com", name="Dana Oncall", airflow_user="dana", amr=("pwd", "otp")
)


def tasks(*specs: tuple[str, str, str | None, str | None]) -> dict[str, dict]:
    return {task_id: {"state": state, "start_date": start, "end_date": end} for task_id, state, start, end in specs}


def pitr_run(**overrides) -> dict:
    return {
        "dag_id": "rewind_pitr__ledger",
        "run_id": "manual__2026-11-24T02:20:00+00:00",
        "state": "success",
        "start_date": "2026-11-24T02:20:00+00:00",
        "end_date": "2026-11-24T02:41:10+00:00",
        "triggering_user_name": "dana",
        "conf": {
            "target_type": "time",
            "target": "2026-11-24 02:13:30+00",
            "target_timeline": "current",
            "reason": "migration 42 voided the ledger",
        },
        "note": "CHG0030001 closed successful\n…",
        **overrides,
    }


def completed_pitr() -> tuple[dict, dict, dict]:
    ledger = cluster("ledger")
    request = parse_request(pitr_run()["conf"])
    plan = {
        "backup_set": "20261124-020000F",
        "backup_type": "full",
        "backup_stopped_at": "2026-11-24 02:05:00+00",
        "backup_stop_lsn": "0/5000100",
        "backup_size_bytes": 31_000_000,
        "timeline": 1,
        "timeline_requested": "current",
        "wal_first": "000000010000000000000005",
        "wal_last": "000000010000000000000009",
    }
    checks = [{"sql": "select count(*) from ledger_entry where status = 'void'", "expect": "0", "got": "0", "passed": True}]
    text = summary(
        ledger,
        request,
        run_id="manual__2026-11-24T02:20:00+00:00",
        run_url="http://airflow/dags/rewind_pitr__ledger/runs/manual__2026-11-24T02:20:00+00:00",
        plan=RestorePlan.model_validate(plan),
        recovery=RecoveryResult(state="paused at target", replay_lsn=None, stop_record=None, timeline=1),
        checks=[CheckResult.model_validate(check) for check in checks],
        timeline=2,
        backup={"label": "20261124-023500F", "timeline": 2},
        timings={"restore": 61, "recovery": 4, "downtime (stop to promoted)": 412, "full backup": 300},
        requested_by=REQUESTER.describe(),
        approved_by="Carla Cab <cab.approver@example.com>",
    )
    ti = tasks(
        ("validate_params", "success", "2026-11-24T02:20:01+00:00", "2026-11-24T02:20:03+00:00"),
        ("ensure_change", "success", "2026-11-24T02:20:10+00:00", "2026-11-24T02:20:11+00:00"),
        ("wait_for_approval", "success", "2026-11-24T02:20:12+00:00", "2026-11-24T02:27:40+00:00"),
        ("stop_postgres", "success", "2026-11-24T02:27:45+00:00", "2026-11-24T02:28:00+00:00"),
        ("restore", "success", "2026-11-24T02:28:01+00:00", "2026-11-24T02:29:02+00:00"),
        ("validate_data", "success", "2026-11-24T02:29:30+00:00", "2026-11-24T02:29:31+00:00"),
        ("promote", "success", "2026-11-24T02:34:30+00:00", "2026-11-24T02:34:37+00:00"),
        ("full_backup_new_timeline", "success", "2026-11-24T02:34:40+00:00", "2026-11-24T02:39:40+00:00"),
        ("close_change", "success", "2026-11-24T02:41:00+00:00", "2026-11-24T02:41:05+00:00"),
    )
    xcoms = {
        "validate_params": request.model_dump(mode="json"),
        "preflight": {**plan, "backup_set": "20261124-010000F"},  # re-planned at the stop: the stop's plan wins
        "ensure_change": {"number": "CHG0030001", "sys_id": "c1", "created": True},
        "stop_postgres": {"plan": plan, "started_at": "2026-11-24T02:27:45+00:00"},
        "restore": {"backup_set": "20261124-020000F", "timeline": 1},
        "validate_data": checks,
        "promote": {"timeline": 2},
        "full_backup_new_timeline": {"label": "20261124-023500F", "type": "full", "timeline": 2},
        "close_change": text,
    }
    return pitr_run(), ti, xcoms


def test_a_completed_pitr_row_names_everything_an_auditor_asks():
    row = audit_row(*completed_pitr())
    assert row.workflow == "PITR" and row.cluster == "ledger"
    assert row.requested_by == "Dana Oncall <dba.oncall@example.com> (Airflow user dana; MFA asserted by the IdP (amr: pwd, otp))"
    assert row.reason == "migration 42 voided the ledger"
    assert row.change_number == "CHG0030001"
    assert (row.approved_by, row.approved_at) == ("Carla Cab <cab.approver@example.com>", "2026-11-24 02:27:40 UTC")
    assert row.target == "time 2026-11-24 02:13:30.000000+00 (inclusive, action pause, timeline current)"
    assert row.backup_used == "20261124-020000F"
    assert row.downtime == "6m 52s (stop to promoted)"
    assert row.data_checks == "1/1 passed: select count(*) from ledger_entry where status = 'void' = 0 (expected 0)"
    assert row.new_backup == "20261124-023500F"
    assert row.outcome == "success"
    assert (row.started_at, row.ended_at) == ("2026-11-24 02:20:00 UTC", "2026-11-24 02:41:10 UTC")


def test_a_pitr_that_failed_after_the_stop_shows_what_it_did_and_where_it_ended():
    run, ti, xcoms = completed_pitr()
    run = {**run, "state": "failed", "end_date": "2026-11-24T02:30:00+00:00", "note": None}
    for later in ("validate_data", "promote", "full_backup_new_timeline", "close_change"):
        ti[later] = {"state": "upstream_failed" if later != "validate_data" else "failed", "start_date": None, "end_date": None}
        xcoms.pop(later)
    row = audit_row(run, ti, xcoms)
    assert row.outcome == "failed at validate_data"
    assert row.data_checks == "failed"
    assert row.requested_by == "Airflow user dana"  # the close summary never came: the triggering user
    assert row.approved_by == "" and row.approved_at == "2026-11-24 02:27:40 UTC"
    assert row.change_number == "CHG0030001"
    assert row.downtime == "stopped at 2026-11-24 02:27:45 UTC, not back"
    assert row.new_backup == ""


def test_a_pitr_refused_at_the_form_touched_nothing():
    run = pitr_run(state="failed", conf={"target_type": "latest", "reason": "two triggers", "change_number": "CHG0030009"}, note=None)
    ti = tasks(
        ("validate_params", "failed", "2026-11-24T02:20:01+00:00", "2026-11-24T02:20:03+00:00"),
        ("preflight", "upstream_failed", None, None),
    )
    row = audit_row(run, ti, {})
    assert (row.outcome, row.downtime, row.target, row.change_number) == ("failed at validate_params", "none", "latest", "CHG0030009")
    assert row.backup_used == row.new_backup == row.approved_at == ""


def test_onboarding_and_decommissioning_rows():
    requester = REQUESTER.as_dict()
    onboard = audit_row(
        {"dag_id": "rewind_onboard__crm", "run_id": "r1", "state": "success", "conf": {"reason": "onboard crm into Rewind"}},
        tasks(
            ("plan", "success", None, None),
            ("wait_for_approval", "success", "2026-11-24T02:00:00+00:00", "2026-11-24T02:05:00+00:00"),
            ("restart_postgres", "success", "2026-11-24T02:06:00+00:00", "2026-11-24T02:06:07+00:00"),
            ("check", "success", None, None),
            ("verify", "success", None, None),
        ),
        {
            "plan": {"requester": requester, "approval_group": "g1"},
            "open_change": {"number": "CHG0030002", "sys_id": "c2", "requester": "u1"},
            "restart_postgres": "archive_mode=on",
            "first_full_backup": {"label": "20261124-020700F"},
            "close_change": "Rewind run r1 on cluster crm completed.\napproved by: Carla Cab <cab.approver@example.com>",
        },
    )
    assert (onboard.workflow, onboard.cluster, onboard.change_number) == ("Onboarding", "crm", "CHG0030002")
    assert onboard.requested_by.startswith("Dana Oncall <dba.oncall@example.com>")
    assert onboard.approved_by == "Carla Cab <cab.approver@example.com>"
    assert (onboard.downtime, onboard.data_checks, onboard.new_backup) == (
        "7s (restart)",
        "check success, verify success",
        "20261124-020700F",
    )

    reloaded = audit_row(
        {"dag_id": "rewind_onboard__crm", "run_id": "r2", "state": "success"},
        tasks(("restart_postgres", "success", "2026-11-24T02:06:00+00:00", "2026-11-24T02:06:01+00:00")),
        {"restart_postgres": "not needed (reloaded only)"},
    )
    assert reloaded.downtime == "none (reloaded only)"

    decommission = audit_row(
        {"dag_id": "rewind_decommission__crm", "run_id": "r3", "state": "running", "conf": {"reason": "retired"}},
        tasks(("validate", "success", None, None), ("wait_for_approval", "deferred", "2026-11-24T02:00:00+00:00", None)),
        {"validate": {"requester": requester, "delete_repository": True}, "open_change": {"number": "CHG0030003"}},
    )
    assert decommission.outcome == "running: wait_for_approval"
    assert decommission.target == "cluster crm; stanza deleted from the repository"
    assert decommission.approved_at == ""


def test_a_rehearsal_is_recognised_by_its_dag_id_and_read_like_a_pitr():
    row = audit_row(
        {"dag_id": "rewind_rehearsal__ledger", "run_id": "scheduled__x", "state": "success", "conf": {"target_type": "latest"}},
        tasks(("restore", "success", None, None), ("validate_data", "success", None, None)),
        {"restore": {"backup_set": "20261124-020000F"}, "validate_data": [{"sql": "select 1", "expect": 1, "got": "1", "passed": True}]},
    )
    assert (row.workflow, row.backup_used, row.downtime, row.data_checks) == (
        "Rehearsal",
        "20261124-020000F",
        "none",
        "1/1 passed: select 1 = 1 (expected 1)",
    )
    assert row.requested_by == ""  # scheduled: nobody triggered it


def test_a_rehearsal_row_names_the_backup_it_proved_and_the_checks_of_the_copy():
    row = audit_row(
        {"dag_id": "rewind_rehearsal__ledger", "run_id": "scheduled__y", "state": "success", "conf": {}},
        tasks(("restore_scratch", "success", None, None), ("check_scratch", "success", None, None)),
        {
            "open_change": {"number": "CHG0030004", "task_number": "CTASK0010001"},
            "restore_scratch": {"backup": {"label": "20261124-020000F", "type": "full"}, "rto_s": 12.5},
            "check_scratch": {
                "checks": [
                    {"name": "pg_amcheck", "ok": True, "summary": "every relation consistent"},
                    {"name": "pg_dump", "ok": True, "summary": "3 databases dumped"},
                ]
            },
        },
    )
    assert (row.change_number, row.backup_used, row.downtime, row.new_backup) == ("CHG0030004", "20261124-020000F", "none", "")
    assert row.data_checks == "2/2 passed: pg_amcheck: every relation consistent; pg_dump: 3 databases dumped"


def test_other_dags_are_not_audited():
    assert workflow_of("rewind_backup_full__ledger") is None
    assert workflow_of("rewind_pitr__ledger") == ("pitr", "ledger")
    assert audit_row({"dag_id": "rewind_verify__ledger", "run_id": "x"}, {}, {}) is None


def test_summary_fields_take_the_first_of_each_key_and_ignore_prose():
    assert summary_fields("Reason: a: b\nRequested by: X\nrequested by: Y\nno colon here") == {"reason": "a: b", "requested by": "X"}
    assert summary_fields(None) == {}


def test_change_link_and_csv_carry_the_same_rows():
    row = audit_row(*completed_pitr())
    base = "https://example.service-now.com"
    assert change_url(base + "/", "CHG0030001") == f"{base}/nav_to.do?uri=change_request.do?sysparm_query=number=CHG0030001"
    assert change_url(base, "") == "" and change_url(base, "CHG1^ORnumber=x") == ""
    evil = audit_row({**completed_pitr()[0], "conf": {"reason": '=HYPERLINK("http://x")'}}, {}, {})
    parsed = list(csv.reader(io.StringIO(to_csv([row, evil], servicenow_base=base))))
    assert parsed[0] == [header for _, header in COLUMNS] + ["Change link"]
    assert dict(zip(parsed[0], parsed[1], strict=True))["Approved by"] == "Carla Cab <cab.approver@example.com>"
    assert parsed[1][-1] == change_url(base, "CHG0030001")
    assert dict(zip(parsed[0], parsed[2], strict=True))["Reason"] == '\'=HYPERLINK("http://x")'


def test_the_downtime_task_s_steps_fill_the_row_as_separate_tasks_did():
    """The PITR's downtime is one task (stop_restore_promote); its XCom holds each step's result
    (rewind.pitr.results.DowntimeResult, in the shape tests/unit/test_pitr_results.py pins)."""
    window = downtime_xcom()
    row = audit_row(
        {"dag_id": "rewind_pitr__demo", "run_id": "r1", "state": "success", "conf": {"target_type": "latest"}},
        {
            "wait_for_approval": {"state": "success", "start_date": None, "end_date": "2026-11-24T02:27:40+00:00"},
            "stop_restore_promote": {
                "state": "success",
                "start_date": "2026-11-24T02:27:45+00:00",
                "end_date": "2026-11-24T02:29:45+00:00",
            },
        },
        {"stop_restore_promote": window},
    )
    assert row.data_checks.startswith("1/1 passed: select count(*) from ledger_entry where status = 'void' = 0"), row
    assert row.backup_used == "20261124-020000F", row
    assert row.downtime.endswith("(stop to promoted)"), row


def test_a_downtime_task_that_returned_nothing_still_counts_its_stop():
    """The downtime task failed (no return value): the row shows the stop and that it is not back."""
    row = audit_row(
        {"dag_id": "rewind_pitr__demo", "run_id": "r1", "state": "failed", "conf": {"target_type": "latest"}},
        {"stop_restore_promote": {"state": "failed", "start_date": "2026-11-24T02:27:45+00:00", "end_date": "2026-11-24T02:29:45+00:00"}},
        {},
    )
    assert (row.downtime, row.outcome, row.data_checks) == (
        "stopped at 2026-11-24 02:27:45 UTC, not back",
        "failed at stop_restore_promote",
        "",
    )


def test_a_decided_pitr_shows_the_target_checks_and_backup_the_dba_left_it_at_and_who_answered():
    """target_action decide: the downtime task's checks failed at the first target; the DBA moved it
    (a new backup chosen), then promoted. The row reads the decide task's result."""
    failed = [{"sql": "select count(*) from trade where status = 'void'", "expect": "0", "got": "50", "passed": False}]
    passed = [{**failed[0], "got": "0", "passed": True}]
    window = {**downtime_xcom(promoted=False), "checks": failed}  # backup 20261124-020000F, not promoted
    decided = {
        "asked": True,
        "decisions": [
            {"answer": "Promote", "by": "dba (Airflow user id 3)", "at": "t1", "refused": "a data check failed"},
            {"answer": "Move the target", "by": "dba (Airflow user id 3)", "at": "t2", "to": "time 02:13:30"},
            {"answer": "Promote", "by": "dba (Airflow user id 3)", "at": "t3"},
        ],
        "plan": {"backup_set": "20261124-010000F"},
        "checks": passed,
        "aborted": False,
    }
    run = {"dag_id": "rewind_pitr__demo", "run_id": "r1", "state": "success", "conf": {"target_type": "time", "target": "x"}}
    downtime = {"state": "success", "start_date": "2026-11-24T02:27:45+00:00", "end_date": "2026-11-24T02:29:45+00:00"}
    row = audit_row(run, {"stop_restore_promote": downtime}, {"stop_restore_promote": window, "decide_at_target": decided})
    assert row.data_checks.startswith("1/1 passed"), row
    assert row.backup_used == "20261124-010000F", row
    assert row.outcome == "success (3 DBA answer(s), 1 move(s) of the target; Promote by dba (Airflow user id 3))", row
    aborted = {**decided, "decisions": [{"answer": "Abort: back to latest", "by": "dba (Airflow user id 3)", "at": "t1"}], "aborted": True}
    row = audit_row(run, {"stop_restore_promote": downtime}, {"stop_restore_promote": window, "decide_at_target": aborted})
    assert row.outcome.endswith("Abort: back to latest by dba (Airflow user id 3))") and row.data_checks.startswith("0/1 passed"), row
    plain = audit_row(run, {"stop_restore_promote": downtime}, {"stop_restore_promote": window, "decide_at_target": {"asked": False}})
    assert plain.outcome == "success" and plain.backup_used == "20261124-020000F"
