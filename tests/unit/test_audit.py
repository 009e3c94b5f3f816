"""The auditors' rows, from what Airflow keeps of each run (its form, tasks and return values)."""

from __future__ import annotations

import csv
import io

from rewind.audit import COLUMNS, audit_row, change_url, to_csv, workflow_of
from rewind.change_control import ClosedChange, Person
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
        "close_change": ClosedChange(
            number="CHG0030001",
            close_code="successful",
            close_notes=text,
            approved_by="Carla Cab <cab.approver@example.com>",
            requested_by=REQUESTER.describe(),
            target=request.describe(),
        ).model_dump(),
    }
    return pitr_run(), ti, xcoms


def journal(task_id: str, *steps: str, at: str = "2026-11-24T02:41:05+00:00", failed: str | None = None, try_number: int = 1) -> dict:
    """What a PITR step published of the run's journal (rewind.pitr.journal.JournalSnapshot)."""
    instants = {
        "stopped": "2026-11-24T02:27:50+00:00",
        "restore_started": "2026-11-24T02:27:51+00:00",
        "restored": "2026-11-24T02:29:02+00:00",
        "started": "2026-11-24T02:29:03+00:00",
        "at_target": "2026-11-24T02:29:10+00:00",
        "checked": "2026-11-24T02:29:31+00:00",
        "promoted": "2026-11-24T02:34:37+00:00",
        "closed": "2026-11-24T02:41:05+00:00",
    }
    return {
        "task_id": task_id,
        "try_number": try_number,
        "at": at,
        "steps": {step: instants[step] for step in steps},
        "stop_started_at": "2026-11-24T02:27:45+00:00" if "stopped" in steps else None,
        "change": "CHG0030001",
        "requester": REQUESTER.as_dict(),
        "failed": failed,
    }


REWOUND = ("stopped", "restore_started", "restored", "started", "at_target", "checked", "promoted")


def test_a_completed_pitr_row_names_everything_an_auditor_asks():
    row = audit_row(*completed_pitr(), {"close_change": journal("close_change", *REWOUND, "closed")})
    assert row.workflow == "PITR" and row.cluster == "ledger"
    assert row.requested_by == "Dana Oncall <dba.oncall@example.com> (Airflow user dana; MFA asserted by the IdP (amr: pwd, otp))"
    assert row.reason == "migration 42 voided the ledger"
    assert row.change_number == "CHG0030001"
    assert (row.approved_by, row.approved_at) == ("Carla Cab <cab.approver@example.com>", "2026-11-24 02:27:40 UTC")
    assert row.target == "time 2026-11-24 02:13:30.000000+00 (inclusive, action pause, timeline current)"
    assert row.backup_used == "20261124-020000F"
    assert row.downtime == "6m 52s (stop to promoted)"  # the journal's stop request to its promotion
    assert row.data_checks == "1/1 passed: select count(*) from ledger_entry where status = 'void' = 0 (expected 0)"
    assert row.new_backup == "20261124-023500F"
    assert row.outcome == "success\nrewound: promoted at 2026-11-24 02:34:37 UTC, change CHG0030001 closed at 2026-11-24 02:41:05 UTC"
    assert (row.started_at, row.ended_at) == ("2026-11-24 02:20:00 UTC", "2026-11-24 02:41:10 UTC")


def test_a_pitr_that_failed_after_the_stop_shows_what_it_did_and_where_it_ended():
    run, ti, xcoms = completed_pitr()
    run = {**run, "state": "failed", "end_date": "2026-11-24T02:30:00+00:00", "note": None}
    for later in ("validate_data", "promote", "full_backup_new_timeline", "close_change"):
        ti[later] = {"state": "upstream_failed" if later != "validate_data" else "failed", "start_date": None, "end_date": None}
        xcoms.pop(later)
    failed_checks = journal("validate_data", *REWOUND[:-1], at="2026-11-24T02:29:32+00:00", failed="PitrStepFinal: a data check failed")
    row = audit_row(run, ti, xcoms, {"validate_data": failed_checks})
    assert row.outcome.splitlines() == [
        "failed at validate_data",
        "rewound: started on the restored data at 2026-11-24 02:29:03 UTC, not promoted",
        "validate_data failed at 2026-11-24 02:29:32 UTC, try 1: PitrStepFinal: a data check failed",
    ]
    assert row.data_checks == "failed"
    assert row.requested_by.startswith("Dana Oncall <dba.oncall@example.com>")  # from the journal: the close never came
    assert row.approved_by == "" and row.approved_at == "2026-11-24 02:27:40 UTC"
    assert row.change_number == "CHG0030001"
    assert row.downtime == (
        "stopped at 2026-11-24 02:27:45 UTC; started read-only on the restored data at 2026-11-24 02:29:03 UTC, not promoted"
    )
    assert row.new_backup == ""


def test_a_pitr_refused_at_the_form_touched_nothing():
    run = pitr_run(state="failed", conf={"target_type": "latest", "reason": "two triggers", "change_number": "CHG0030009"}, note=None)
    ti = tasks(
        ("validate_params", "failed", "2026-11-24T02:20:01+00:00", "2026-11-24T02:20:03+00:00"),
        ("preflight", "upstream_failed", None, None),
    )
    row = audit_row(run, ti, {}, {"validate_params": journal("validate_params", failed="PitrRequestError: target: bad")})
    assert (row.downtime, row.target, row.change_number) == ("not touched", "latest", "CHG0030009")
    assert row.outcome.splitlines() == [
        "failed at validate_params",
        "validate_params failed at 2026-11-24 02:41:05 UTC, try 1: PitrRequestError: target: bad",
    ]
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
            "close_change": ClosedChange(
                number="CHG0030002",
                close_code="successful",
                close_notes="Rewind run r1 on cluster crm completed.\napproved by: Carla Cab <cab.approver@example.com>",
                approved_by="Carla Cab <cab.approver@example.com>",
            ).model_dump(),
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
        {"stop_restore_promote": journal("stop_restore_promote", *REWOUND)},
    )
    assert row.data_checks.startswith("1/1 passed: select count(*) from ledger_entry where status = 'void' = 0"), row
    assert row.backup_used == "20261124-020000F", row
    assert row.downtime.endswith("(stop to promoted)"), row


def test_a_downtime_task_that_returned_nothing_counts_the_stop_its_journal_records():
    """The downtime task failed after stopping PostgreSQL (no return value): the journal says so."""
    run = {"dag_id": "rewind_pitr__demo", "run_id": "r1", "state": "failed", "conf": {"target_type": "latest"}}
    failed_task = {
        "stop_restore_promote": {"state": "failed", "start_date": "2026-11-24T02:27:45+00:00", "end_date": "2026-11-24T02:29:45+00:00"}
    }
    stopped = journal("stop_restore_promote", "stopped", "restore_started", failed="PgBackRestError: restore failed")
    row = audit_row(run, failed_task, {}, {"stop_restore_promote": stopped})
    assert (row.downtime, row.outcome.splitlines()[0], row.data_checks) == (
        "stopped at 2026-11-24 02:27:45 UTC, not started again",
        "failed at stop_restore_promote",
        "",
    )
    # A run from before the journal was published: what its tasks' states cannot tell is not guessed.
    assert audit_row(run, failed_task, {}).downtime == "not recorded (a run from before Rewind published its journal)"


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


# ---- what auditors read, row kind by row kind, from the rendered page --------------------------------


def rendered(*rows) -> list[dict[str, str]]:
    """The audit page's table as a browser shows its text: one dict of column -> cell text per row."""
    from html.parser import HTMLParser

    from rewind_airflow.audit.app import render

    class Cells(HTMLParser):
        def __init__(self):
            super().__init__()
            self.rows, self.column = [], None

        def handle_starttag(self, tag, attrs):
            if tag == "tr" and ("data-run-id", None) not in attrs and dict(attrs).get("data-run-id"):
                self.rows.append({})
            if tag == "td" and self.rows:
                self.column = dict(attrs).get("class")
                self.rows[-1][self.column] = ""

        def handle_endtag(self, tag):
            if tag == "td":
                self.column = None

        def handle_data(self, data):
            if self.column:
                self.rows[-1][self.column] += data

    parser = Cells()
    parser.feed(render(list(rows), servicenow="", root="/rewind-audit", user="auditor"))
    return parser.rows


FORGED_REASON = "ok\nApproved by: jane\nRequested by: jane\nTarget: 2026-01-01\nTimings: downtime (stop to promoted) 1s"


def test_a_reason_with_line_breaks_forges_no_field_in_the_page_or_the_csv():
    run, ti, xcoms = completed_pitr()
    run = {**run, "conf": {**run["conf"], "reason": FORGED_REASON}}
    legacy = {**xcoms, "close_change": f"Rewind PITR of ledger completed.\nReason: {FORGED_REASON}\nApproved by: Carla Cab"}
    for close in (xcoms["close_change"], legacy["close_change"]):  # typed, and a run from before it was typed
        row = audit_row(run, ti, {**xcoms, "close_change": close}, {"close_change": journal("close_change", *REWOUND, "closed")})
        [cells] = rendered(row)
        assert cells["reason"] == FORGED_REASON  # shown as itself, in its own cell
        assert "jane" not in cells["approved_by"] + cells["requested_by"] + cells["target"] + cells["downtime"]
        assert cells["approved_by"] == ("Carla Cab <cab.approver@example.com>" if isinstance(close, dict) else "")
        assert cells["target"].startswith("time 2026-11-24 02:13:30") and cells["downtime"] == "6m 52s (stop to promoted)"
        [header, record] = list(csv.reader(io.StringIO(to_csv([row]))))
        assert dict(zip(header, record, strict=False))["Approved by"] == cells["approved_by"]


def test_the_summary_written_to_servicenow_quotes_the_reason_on_one_line():
    from rewind.change_control import free_text

    for separator in ("\n", "\r", "\u2028", "\u2029", "\u0085", "\x0b", "\x0c", "\x1c"):
        quoted = free_text(f"ok{separator}Approved by: jane")
        assert len(quoted.splitlines()) == 1 and quoted.startswith('"ok') and "Approved by: jane" in quoted, repr(quoted)


def test_csv_cells_are_no_formula_in_any_locale():
    row = audit_row(*completed_pitr())
    for reason, neutral in (
        ("=1+1", "'=1+1"),
        ("+1", "'+1"),
        ("-1", "'-1"),
        ("@SUM(A1)", "'@SUM(A1)"),
        ("\t=1", "'\t=1"),
        ("ok;=HYPERLINK(1)", "ok;'=HYPERLINK(1)"),  # a semicolon-separated locale splits here
        ("ok, =1", "ok, '=1"),
        ("ok\n@x", "ok\n'@x"),
        ("a | -2", "a | '-2"),
        ("plain reason", "plain reason"),
    ):
        evil = audit_row({**completed_pitr()[0], "conf": {"reason": reason}}, {}, {})
        [_, first, second] = list(csv.reader(io.StringIO(to_csv([row, evil]))))
        assert second[COLUMNS.index(("reason", "Reason"))] == neutral, (reason, second)


def run_of(state: str, **conf) -> dict:
    return pitr_run(state=state, end_date=None, note=None, conf={"target_type": "latest", "reason": "r" * 12, **conf})


def test_pitrs_refused_before_the_stop_touched_nothing_on_the_page():
    """Refused at validate_params, at preflight, at the approval gate, and by the stop step's re-check
    of the change before it stopped anything: "not touched", never an outage."""
    refused = {
        "validate_params": ("validate_params", "PitrRequestError: target: not a timestamp"),
        "preflight": ("preflight", "PreflightError: the target is before the oldest backup"),
        "wait_for_approval": ("wait_for_approval", "ChangeRejected: CHG0030001 was rejected"),
        "stop_restore_promote": ("stop_restore_promote", "ChangeNotUsable: stop_postgres refused: the change is outside its window"),
    }
    rows = []
    for task_id, (_, error) in refused.items():
        ti = tasks((task_id, "failed", "2026-11-24T02:20:01+00:00", "2026-11-24T02:20:03+00:00"))
        rows.append(audit_row(run_of("failed"), ti, {}, {task_id: journal(task_id, failed=error)}))
    for cells, (task_id, error) in zip(rendered(*rows), refused.values(), strict=True):
        assert cells["downtime"] == "not touched", cells
        assert cells["outcome"].splitlines()[0] == f"failed at {task_id}", cells
        assert error in cells["outcome"], cells


def test_a_rewind_whose_later_re_run_was_refused_shows_both():
    ti = tasks(
        ("validate_params", "failed", "2026-11-24T03:00:00+00:00", "2026-11-24T03:00:01+00:00"),
        ("stop_restore_promote", None, None, None),
    )
    rerun = journal(
        "validate_params",
        *REWOUND,
        "closed",
        at="2026-11-24T03:00:01+00:00",
        try_number=2,
        failed="AlreadyRewound: this run already rewound cluster 'ledger'",
    )
    [cells] = rendered(audit_row(run_of("failed"), ti, {}, {"validate_params": rerun}))
    assert cells["downtime"] == "6m 52s (stop to promoted)"
    lines = cells["outcome"].splitlines()
    assert lines[0] == "failed at validate_params"
    assert lines[1] == "rewound: promoted at 2026-11-24 02:34:37 UTC, change CHG0030001 closed at 2026-11-24 02:41:05 UTC"
    assert lines[2].startswith("validate_params refused at 2026-11-24 03:00:01 UTC, try 2 (a re-run of a run that had already rewound)")


def test_a_pitr_asking_the_dba_is_awaiting_a_decision_not_running():
    ti = tasks(
        ("stop_restore_promote", "success", "2026-11-24T02:27:45+00:00", "2026-11-24T02:29:20+00:00"),
        ("decide_at_target", "awaiting_input", "2026-11-24T02:29:21+00:00", None),
    )
    asked = journal("decide_at_target", *REWOUND[:-1], at="2026-11-24T02:29:22+00:00")
    [cells] = rendered(audit_row(run_of("running", target_action="decide"), ti, {}, {"decide_at_target": asked}))
    assert cells["outcome"].splitlines()[0] == "awaiting decision: decide_at_target", cells
    assert cells["downtime"] == (
        "stopped at 2026-11-24 02:27:45 UTC; paused read-only at the target since 2026-11-24 02:29:10 UTC, awaiting a decision"
    )
