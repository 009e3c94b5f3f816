"""Change control: the gate rule (rewind.servicenow.change_gate), and rewind.pitr.change against a
fake ServiceNow: what a change says, how a given change is checked and bound to one run, how one
is created or found again on a retry, and the re-check at each destructive step."""

from __future__ import annotations

import datetime as dt

import pytest

from rewind.airflow_rest import AIRFLOW_NOTE_MAX_CHARS
from rewind.change_control import MAX_NOTE_CHARS, ChangeNotUsable, cancel_change, correlation_id, require_gate
from rewind.pitr.change import change_fields, check_given_change, ensure_change, run_note
from rewind.pitr.journal import RunJournal
from rewind.pitr.request import parse_request
from rewind.servicenow import CHANGE_TABLE, ChangeState, ChangeStatus, change_gate, sn_time

NOW = dt.datetime(2026, 11, 24, 2, 20, tzinfo=dt.timezone.utc)
DAG = "rewind_pitr__ledger"
RUN = "manual__2026-11-24T02:20:00+00:00"
OURS = f"rewind:{DAG}:{RUN}"
URL = "http://airflow.example.com/dags/rewind_pitr__ledger/runs/manual__2026-11-24T02:20:00+00:00"
REASON = "migration 42 voided every ledger entry"


def status(state=-2, approval="approved", start=None, end=None):
    return ChangeStatus("CHG0010001", "s", state, approval, start, end)


# ---- the gate -----------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "change, decision, words",
    [
        (status(), "proceed", "approved and inside its window"),
        (status(state=-1), "proceed", "inside"),
        (status(state=-3, approval="requested"), "wait", "waiting for approval"),
        (status(state=-3, approval=""), "wait", "(state Authorize, approval not requested): waiting for approval"),
        (status(state=-3, approval="approved"), "wait", "waiting for state Scheduled or Implement"),
        (status(state=0, approval="approved"), "reject", "(state Review, approval approved) is Review: the restore will not run"),
        (status(start=NOW + dt.timedelta(minutes=5)), "wait", "window opens at 2026-11-24 02:25:00 UTC"),
        (status(start=NOW - dt.timedelta(hours=1), end=NOW + dt.timedelta(hours=1)), "proceed", "inside"),
        (status(start=NOW, end=NOW), "proceed", "inside"),  # both ends of the window belong to it
        (status(end=NOW - dt.timedelta(minutes=1)), "reject", "window ended at 2026-11-24 02:19:00 UTC: reschedule the change"),
        (status(state=-3, approval="requested", end=NOW - dt.timedelta(seconds=1)), "reject", "window ended"),  # no use waiting
        (status(state=-5, approval="rejected"), "reject", "was rejected: the restore will not run"),
        (status(state=4, approval="approved"), "reject", "is Canceled: the restore will not run"),
        (status(state=3, approval="approved"), "reject", "is Closed"),
        (status(state=-2, approval="rejected", start=NOW + dt.timedelta(hours=1)), "reject", "was rejected"),
    ],
)
def test_change_gate(change, decision, words):
    got, reason = change_gate(change, NOW)
    assert got == decision and words in reason, reason
    assert reason.startswith("CHG0010001 ")


# ---- the change Rewind raises ----------------------------------------------------------------------------
def request(**params):
    return parse_request({"target_type": "time", "target": "2026-11-24 02:13:30+00", "reason": REASON, **params})


def test_change_fields_describe_the_rewind_and_bind_the_run(ledger):
    checks = [{"sql": "select count(*) from ledger_entry where status = 'void'", "expect": 0}]
    fields = change_fields(ledger, request(validation_sql=checks, mode="in_place"), dag_id=DAG, run_id=RUN, run_url=URL)
    assert fields["short_description"] == (
        "Rewind PITR: restore ledger (stanza ledger) to time 2026-11-24 02:13:30.000000+00 (inclusive, action pause, timeline current)"
    )
    assert (fields["cmdb_ci"], fields["correlation_id"]) == ("ledger", OURS)
    assert "state" not in fields and "approval" not in fields  # the change model decides those, not the requester
    assert f'Reason: "{REASON}"' in fields["description"] and URL in fields["description"]
    assert "s3://backups/pg/ledger" in fields["description"]
    assert "4. Run the data checks on the paused, read-only cluster.\n5. Promote only if they pass." in fields["implementation_plan"]
    assert fields["test_plan"] == "Data checks (before promotion): select count(*) from ledger_entry where status = 'void'"
    promote = change_fields(ledger, request(target_action="promote", mode="in_place"), dag_id=DAG, run_id=RUN, run_url=URL)
    assert "4. PostgreSQL promotes itself at the target.\n5. Run the data checks." in promote["implementation_plan"]
    assert promote["test_plan"] == "Data checks (after promotion): none given"


def test_the_approved_plan_is_the_one_the_run_carries_out_in_its_mode(ledger):
    """The approver approves what will run: a clone and a cutover (the inventory's default mode), an
    undo's swap and what it sets aside, or the in-place restore; never the in-place steps for a clone."""
    assert ledger.pitr.mode == "clone"
    clone = change_fields(ledger, request(target_action="decide"), dag_id=DAG, run_id=RUN, run_url=URL)
    plan = clone["implementation_plan"]
    assert plan.startswith("1. Restore the backup into a clone beside the data directory") and "stop PostgreSQL" not in plan
    assert "production is not touched and keeps serving" in plan and "move the target (the clone alone is restored again" in plan
    assert ".pre-rewind-<run> (kept, stopped, held" in plan and plan.endswith("6. Close this change with the run summary.")
    assert "a PITR with mode undo swaps it back in seconds" in clone["backout_plan"]

    undo = change_fields(
        ledger,
        request(target_type="latest", target="", target_timeline="3", mode="undo"),
        dag_id=DAG,
        run_id=RUN,
        run_url=URL,
        undo_abandons=4,
    )
    plan = undo["implementation_plan"]
    assert "2. Swap back: the directory the clone-mode rewind kept (the end of timeline 3) goes back" in plan
    assert "The writes made since the rewind (timeline 4) are set aside with it, not lost: rewind_salvage__ledger with timeline 4" in plan
    assert "3. Start PostgreSQL and recover to the end of timeline 3." in plan and "restore --delta" not in plan

    in_place = change_fields(ledger, request(mode="in_place"), dag_id=DAG, run_id=RUN, run_url=URL)
    assert in_place["implementation_plan"].startswith("1. Archive current WAL and stop PostgreSQL.\n2. pgbackrest restore --delta")
    assert in_place["backout_plan"].startswith("Before promotion: stop PostgreSQL and restore again")


# ---- a change named in the form --------------------------------------------------------------------------
def test_a_given_change_must_exist_be_open_be_this_clusters_and_be_unused(ledger, fake_servicenow):
    sn = fake_servicenow

    def check(number):
        return check_given_change(sn, ledger, number, dag_id=DAG, run_id=RUN)

    with pytest.raises(ChangeNotUsable, match="param change_number: CHG0099999 does not exist in ServiceNow"):
        check("CHG0099999")
    for state, approval, words in ((3, "approved", "is Closed"), (4, "approved", "is Canceled"), (-5, "rejected", "approval rejected")):
        number = sn.change(cmdb_ci="ledger", state=state, approval=approval)["number"]
        with pytest.raises(ChangeNotUsable, match=f"param change_number: {number} .*{words}.*: use an open change"):
            check(number)
    other_ci = sn.change(cmdb_ci="crm")["number"]
    with pytest.raises(ChangeNotUsable, match=f"param change_number: {other_ci} is for configuration item crm, not cluster ledger"):
        check(other_ci)
    no_ci = sn.change()["number"]
    with pytest.raises(ChangeNotUsable, match=r"is for configuration item \(none\), not cluster ledger"):
        check(no_ci)
    bound = sn.change(cmdb_ci="ledger", correlation_id=f"rewind:{DAG}:manual__earlier")["number"]
    with pytest.raises(ChangeNotUsable, match=f"param change_number: {bound} already drives rewind:{DAG}:manual__earlier: one change"):
        check(bound)

    usable = sn.change(cmdb_ci="ledger")
    assert check(usable["number"]) == ChangeStatus.from_record(usable)
    assert check(sn.change(cmdb_ci="ledger", correlation_id=OURS)["number"]).number  # a retry of this very run


def test_a_change_another_run_used_is_refused_even_when_unbound_in_servicenow(ledger, fake_servicenow):
    number = fake_servicenow.change(cmdb_ci="ledger")["number"]
    RunJournal.load(ledger, "manual__earlier", dag_id=DAG).set(change=number)
    with pytest.raises(ChangeNotUsable, match=f"param change_number: {number} was already used by PITR run manual__earlier"):
        check_given_change(fake_servicenow, ledger, number, dag_id=DAG, run_id=RUN)
    # the run that used it may check it again (a retry of validate_params)
    assert check_given_change(fake_servicenow, ledger, number, dag_id=DAG, run_id="manual__earlier").number == number


# ---- binding, finding or creating the run's change ------------------------------------------------------
def test_ensure_change_binds_a_given_change_to_this_run(ledger, fake_servicenow):
    given = fake_servicenow.change(cmdb_ci="ledger", approval="approved", state=-2)
    result = ensure_change(fake_servicenow, ledger, request(change_number=given["number"]), dag_id=DAG, run_id=RUN, run_url=URL)
    assert result == {"number": given["number"], "sys_id": given["sys_id"], "created": False}
    record = fake_servicenow.get(CHANGE_TABLE, given["sys_id"])
    assert record["correlation_id"] == OURS
    [note] = fake_servicenow.work_notes(CHANGE_TABLE, given["sys_id"])
    assert note.startswith(f"Rewind PITR run {RUN} will implement this change: time 2026-11-24 02:13:30.000000+00") and URL in note
    assert fake_servicenow.records(CHANGE_TABLE) == [record]  # nothing created


def test_ensure_change_creates_one_and_a_retry_finds_it(ledger, fake_servicenow):
    first = ensure_change(fake_servicenow, ledger, request(), dag_id=DAG, run_id=RUN, run_url=URL)
    assert first["created"] and first["number"] == "CHG0010001"
    record = fake_servicenow.get(CHANGE_TABLE, first["sys_id"])
    # a normal change, created New through the Change Management API, asks for approval by moving to Assess
    assert (record["correlation_id"], record["cmdb_ci"], record["type"], record["state"], record["approval"]) == (
        OURS,
        "ledger",
        "normal",
        "-4",
        "requested",
    )
    retry = ensure_change(fake_servicenow, ledger, request(), dag_id=DAG, run_id=RUN, run_url=URL)
    assert retry == {**first, "created": False}
    other_run = ensure_change(fake_servicenow, ledger, request(), dag_id=DAG, run_id="manual__other", run_url=URL)
    assert other_run["created"] and other_run["number"] == "CHG0010002"
    assert correlation_id(DAG, RUN) == OURS


def test_an_emergency_change_asks_the_emergency_approvers(ledger, fake_servicenow):
    made = ensure_change(fake_servicenow, ledger, request(change_type="emergency"), dag_id=DAG, run_id=RUN, run_url=URL)
    record = fake_servicenow.get(CHANGE_TABLE, made["sys_id"])
    assert (record["type"], record["state"], record["approval"]) == ("emergency", "-3", "requested")


def test_a_retry_submits_a_change_left_new_by_an_earlier_try(ledger, fake_servicenow):
    left = fake_servicenow.create_change("normal", {"correlation_id": OURS, "cmdb_ci": "ledger"})
    assert left["state"] == "-5"
    again = ensure_change(fake_servicenow, ledger, request(), dag_id=DAG, run_id=RUN, run_url=URL)
    assert again == {"number": left["number"], "sys_id": left["sys_id"], "created": False}
    assert fake_servicenow.get(CHANGE_TABLE, left["sys_id"])["state"] == "-4"


def test_closing_walks_the_model_and_a_move_it_forbids_is_refused(ledger, fake_servicenow):
    from rewind.change_control import close_change, start_implementing
    from rewind.servicenow import ServiceNowError

    made = ensure_change(fake_servicenow, ledger, request(), dag_id=DAG, run_id=RUN, run_url=URL)
    with pytest.raises(ServiceNowError, match=r"cannot move from Assess to Implement \(its model allows: New, Authorize, Canceled\)"):
        start_implementing(fake_servicenow, ChangeStatus.from_record(fake_servicenow.get_change(made["sys_id"])), "go")
    fake_servicenow.state.decide(made["number"], "approve")  # the CAB: Scheduled, approved
    start_implementing(fake_servicenow, ChangeStatus.from_record(fake_servicenow.get_change(made["sys_id"])), "go")
    close_change(fake_servicenow, made["sys_id"], close_code="successful", close_notes="done")
    record = fake_servicenow.get(CHANGE_TABLE, made["sys_id"])
    assert (record["state"], record["close_code"]) == ("3", "successful")


def test_ensure_change_refuses_a_given_change_it_may_not_use(ledger, fake_servicenow):
    other = fake_servicenow.change(cmdb_ci="crm")
    with pytest.raises(ChangeNotUsable, match="not cluster ledger"):
        ensure_change(fake_servicenow, ledger, request(change_number=other["number"]), dag_id=DAG, run_id=RUN, run_url=URL)
    assert "correlation_id" not in fake_servicenow.get(CHANGE_TABLE, other["sys_id"])  # not bound to this run


# ---- the re-check at each destructive step ---------------------------------------------------------------
def test_require_gate_before_implementing(fake_servicenow):
    sys_id = fake_servicenow.change(state=-2, approval="approved")["sys_id"]
    assert require_gate(fake_servicenow, sys_id, step="stop_postgres", implementing=False, now=NOW).state == ChangeState.SCHEDULED
    with pytest.raises(ChangeNotUsable, match="restore refused: CHG0010001 is Scheduled, not Implement: it is no longer this run's"):
        require_gate(fake_servicenow, sys_id, step="restore", implementing=True, now=NOW)


def test_require_gate_while_implementing(fake_servicenow):
    sys_id = fake_servicenow.change(state=-1, approval="approved")["sys_id"]
    assert require_gate(fake_servicenow, sys_id, step="restore", implementing=True, now=NOW).state == ChangeState.IMPLEMENT
    assert require_gate(fake_servicenow, sys_id, step="stop_postgres", implementing=False, now=NOW).number == "CHG0010001"


@pytest.mark.parametrize(
    "fields, words",
    [
        ({"state": -2, "approval": "requested"}, "waiting for approval"),
        ({"state": 4, "approval": "approved"}, "is Canceled"),
        (
            {"state": -1, "approval": "approved", "end_date": sn_time(NOW - dt.timedelta(minutes=1))},
            "its window ended at 2026-11-24 02:19:00",
        ),
        (
            {"state": -1, "approval": "approved", "start_date": sn_time(NOW + dt.timedelta(hours=1))},
            "window opens at 2026-11-24 03:20:00 UTC",
        ),
    ],
)
def test_require_gate_refuses_a_step_the_change_no_longer_allows(fake_servicenow, fields, words):
    sys_id = fake_servicenow.change(**fields)["sys_id"]
    for implementing in (False, True):
        with pytest.raises(ChangeNotUsable, match=f"start_postgres refused: CHG0010001 .*{words}.*: nothing was done by this step"):
            require_gate(fake_servicenow, sys_id, step="start_postgres", implementing=implementing, now=NOW)


def test_cancel_change_bounds_its_note(fake_servicenow):
    sys_id = fake_servicenow.change(type="normal")["sys_id"]
    cancel_change(fake_servicenow, sys_id, "x" * (MAX_NOTE_CHARS + 10))
    assert fake_servicenow.get(CHANGE_TABLE, sys_id)["state"] == "4"
    assert fake_servicenow.work_notes(CHANGE_TABLE, sys_id) == ["x" * MAX_NOTE_CHARS]


def test_the_run_note_fits_what_airflow_accepts():
    """Airflow's REST API refuses a run note over 1000 characters (422), and a summary naming the
    requester and the approvers is longer than that: the note is cut, the change keeps all of it."""
    short = run_note("CHG0030001", "Rewind PITR of ledger completed.")
    assert short == "CHG0030001 closed successful\nRewind PITR of ledger completed."
    summary_text = "Rewind PITR of ledger completed.\n" + "\n".join(f"Line {n}: " + "x" * 60 for n in range(30))
    note = run_note("CHG0030001", summary_text)
    assert len(note) <= AIRFLOW_NOTE_MAX_CHARS
    assert note.startswith("CHG0030001 closed successful\nRewind PITR of ledger completed.\nLine 0: ")
    assert note.endswith("… (the full summary is in CHG0030001's close notes)")


def test_every_run_note_is_cut_at_a_line_end_to_what_airflow_accepts():
    from rewind.airflow_rest import bounded_note

    report = "\n".join(f"xid {n}: " + "y" * 70 for n in range(100))
    note = bounded_note(report, "the whole list is in the task log")
    assert len(note) <= AIRFLOW_NOTE_MAX_CHARS and note.endswith("\n… (the whole list is in the task log)")
    assert note.splitlines()[-2] == f"xid {len(note.splitlines()) - 2}: " + "y" * 70  # no line cut in half
    assert bounded_note("short", "x") == "short"
