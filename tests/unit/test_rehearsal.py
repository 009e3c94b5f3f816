"""The rehearsal's rules without a database: the form, the inventory section, the scratch path,
the row comparison, the archive check, and the standard change with its change task over the
simulator's change model."""

from __future__ import annotations

import datetime as dt
import uuid

import pytest

from rewind.change_control import ChangeNotUsable
from rewind.errors import PreflightError
from rewind.inventory import InventoryError
from rewind.rehearsal import change as rehearsal_change
from rewind.rehearsal.checks import archive_untouched, compare_counts
from rewind.rehearsal.production import mark_statements
from rewind.rehearsal.request import RehearsalRefused, parse_request
from rewind.rehearsal.site import check_scratch_path
from rewind.servicenow import ChangeState
from rewind.wal import ArchiveListing
from tests.factories import cluster

NOW = dt.datetime(2026, 11, 27, 4, 0, tzinfo=dt.timezone.utc)
TEMPLATE = uuid.uuid4().hex
REASON = "monthly restore rehearsal"


def rehearsal_cluster(**rehearsal):
    return cluster(rehearsal={"change_template": TEMPLATE, "tables": ["public.ledger_entry"], **rehearsal})


def test_the_form_targets_latest_an_age_or_a_time_and_refuses_the_rest_in_one_line():
    ledger = rehearsal_cluster()
    assert parse_request({"target": "", "reason": REASON}, ledger, now=NOW).target == "latest"  # the inventory's
    hour = parse_request({"target": "1h", "reason": REASON}, ledger, now=NOW)
    assert (hour.target, hour.target_time, hour.exact) == ("time", NOW - dt.timedelta(hours=1), False)
    at = parse_request({"target": "2026-11-24 02:13:30+01", "reason": REASON}, ledger, now=NOW)
    assert at.target_time == dt.datetime(2026, 11, 24, 1, 13, 30, tzinfo=dt.timezone.utc)
    refusals = {
        "yesterday": "param target: 'yesterday' is neither latest, an age nor a time",
        "2026-12-24 00:00:00+00": "param target: 2026-12-24 00:00:00 UTC is in the future",
        "1h\n--delta": "param target: '1h\\n--delta' is not a target",
    }
    for target, message in refusals.items():
        with pytest.raises(RehearsalRefused, match="^" + message.replace("(", r"\(").replace("\\n", "\\\\n")):
            parse_request({"target": target, "reason": REASON}, ledger, now=NOW)
    with pytest.raises(RehearsalRefused, match="^param reason: say why"):
        parse_request({"target": "latest", "reason": "x"}, ledger, now=NOW)


@pytest.mark.parametrize(
    ("rehearsal", "message"),
    [
        ({"change_template": "CHG0010001"}, "is not a ServiceNow sys_id"),
        ({"tables": ["ledger_entry; drop table x"]}, "is not a table name"),
        ({"scratch_path": "/srv/a b"}, "must be an absolute path at least two levels deep"),
        ({"scratch_path": "/scratch"}, "must be an absolute path at least two levels deep"),
        ({"target": "yesterday"}, "is neither 'latest' nor an age"),
    ],
)
def test_the_inventory_section_refuses_what_could_not_work(rehearsal, message):
    with pytest.raises(InventoryError, match=message):
        cluster(rehearsal=rehearsal)


def test_the_scratch_path_never_overlaps_production(tmp_path):
    ledger = rehearsal_cluster(scratch_path="/var/lib/postgresql/15/main/rehearsal")
    with pytest.raises(PreflightError, match="overlaps postgres.data_dir /var/lib/postgresql/15/main"):
        check_scratch_path(ledger)
    around = rehearsal_cluster(scratch_path="/var/lib/postgresql")
    with pytest.raises(PreflightError, match="overlaps postgres.data_dir"):
        check_scratch_path(around)
    someone_elses = tmp_path / "scratch"
    someone_elses.mkdir()
    (someone_elses / "notes.txt").write_text("mine")
    with pytest.raises(PreflightError, match="is not empty and was not made by Rewind"):
        check_scratch_path(rehearsal_cluster(scratch_path=str(someone_elses)))


def test_row_counts_are_compared_exactly_for_latest_and_reported_for_a_time():
    assert compare_counts({"public.t": 600}, {"public.t": 600}, exact=True).ok
    differ = compare_counts({"public.t": 600}, {"public.t": 599}, exact=True)
    assert not differ.ok and "public.t production 600, copy 599" in differ.summary
    assert compare_counts({"public.t": 650}, {"public.t": 600}, exact=False).ok


def test_the_copy_must_leave_nothing_of_its_timeline_in_the_repository():
    clean = ArchiveListing(segments={1: {1: "a"}, 2: {1: "b"}}, histories=frozenset())
    assert archive_untouched(clean, timeline=2, production_timeline=1).ok
    leaked = ArchiveListing(segments={1: {1: "a"}, 2: {1: "b", 2: "c"}}, histories=frozenset({2}))
    result = archive_untouched(leaked, timeline=2, production_timeline=1)
    assert not result.ok and "00000002.history" in result.summary and "000000020000000000000002" in result.summary
    assert not archive_untouched(clean, timeline=1, production_timeline=1).ok  # not promoted onto its own timeline


def test_the_restore_point_is_made_with_the_declared_tables_held_and_counted_in_one_transaction():
    statements = mark_statements(["public.ledger_entry"], "rewind-rehearsal-x")
    assert statements[0] == "BEGIN ISOLATION LEVEL REPEATABLE READ" and statements[-1] == "COMMIT"
    assert 'LOCK TABLE "public"."ledger_entry" IN SHARE MODE' in statements
    assert statements.index("select pg_create_restore_point('rewind-rehearsal-x')") < statements.index(
        'select concat_ws(\' \', (select count(*) from "public"."ledger_entry"))'
    )


def open_rehearsal(fake_servicenow, ledger, run_id="scheduled__1"):
    request = parse_request({"target": "latest", "reason": REASON}, ledger, now=NOW)
    return rehearsal_change.open_change(
        fake_servicenow, ledger, request, dag_id="rewind_rehearsal__ledger", run_id=run_id, run_url="http://airflow/run", scratch="/s/x"
    )


def test_a_standard_change_and_its_task_open_implement_and_close_with_the_evidence(fake_servicenow):
    ledger = rehearsal_cluster()
    fake_servicenow.state.templates[TEMPLATE] = {"short_description": "Monthly restore rehearsal"}
    opened = open_rehearsal(fake_servicenow, ledger)
    assert open_rehearsal(fake_servicenow, ledger) == {**opened, "created": False}  # a retry finds both again
    change = fake_servicenow.get_change(opened["sys_id"])
    assert (change["type"], change["state"], change["std_change_producer_version"]) == ("standard", "-2", TEMPLATE)
    # pre-approved by its template: no approver, no separation-of-duties check, straight to Implement
    rehearsal_change.implement(fake_servicenow, opened, "marking production")
    assert fake_servicenow.get_change(opened["sys_id"])["state"] == str(ChangeState.IMPLEMENT.value)
    assert fake_servicenow.get_change_task(opened["sys_id"], opened["task_sys_id"])["state"] == "2"
    rehearsal_change.succeed(fake_servicenow, opened, "PASSED: RTO 12 s")
    task = fake_servicenow.get_change_task(opened["sys_id"], opened["task_sys_id"])
    change = fake_servicenow.get_change(opened["sys_id"])
    assert (task["state"], task["close_code"], task["close_notes"]) == ("3", "successful", "PASSED: RTO 12 s")
    assert (change["state"], change["close_code"]) == ("3", "successful")
    with pytest.raises(Exception, match="takes no new task"):
        fake_servicenow.create_change_task(opened["sys_id"], {"short_description": "one more"})


def test_a_retired_or_unknown_template_and_a_cancelled_change_refuse_before_anything(fake_servicenow):
    ledger = rehearsal_cluster()
    with pytest.raises(rehearsal_change.TemplateUnusable, match="ServiceNow has no standard change template with this sys_id"):
        open_rehearsal(fake_servicenow, ledger)
    fake_servicenow.state.templates[TEMPLATE] = {"short_description": "Monthly restore rehearsal", "active": "false"}
    with pytest.raises(rehearsal_change.TemplateUnusable, match="is not active"):
        open_rehearsal(fake_servicenow, ledger, run_id="scheduled__2")
    assert not fake_servicenow.records("change_request")
    with pytest.raises(RehearsalRefused, match="rehearsal.change_template is not set"):
        rehearsal_change.require_template(cluster())

    fake_servicenow.state.templates[TEMPLATE]["active"] = "true"
    opened = open_rehearsal(fake_servicenow, ledger, run_id="scheduled__3")
    fake_servicenow.state.update_change(opened["sys_id"], {"state": ChangeState.CANCELED.value})
    with pytest.raises(ChangeNotUsable, match="mark_production refused"):
        rehearsal_change.implement(fake_servicenow, opened, "marking production")
    done = rehearsal_change.fail(fake_servicenow, opened, "mark_production refused", log=lambda _: None)
    assert "closed unsuccessful" in done and "was already Canceled" in done
    assert fake_servicenow.get_change(opened["sys_id"])["state"] == str(ChangeState.CANCELED.value)


def test_a_failure_before_implement_cancels_the_change_and_after_closes_it_unsuccessful(fake_servicenow):
    ledger = rehearsal_cluster()
    fake_servicenow.state.templates[TEMPLATE] = {"short_description": "Monthly restore rehearsal"}
    before = open_rehearsal(fake_servicenow, ledger, run_id="manual__1")
    rehearsal_change.fail(fake_servicenow, before, "restore_scratch failed", log=lambda _: None)
    assert fake_servicenow.get_change(before["sys_id"])["state"] == str(ChangeState.CANCELED.value)
    after = open_rehearsal(fake_servicenow, ledger, run_id="manual__2")
    rehearsal_change.implement(fake_servicenow, after, "marking production")
    rehearsal_change.fail(fake_servicenow, after, "check_scratch failed: pg_amcheck", log=lambda _: None)
    change, task = fake_servicenow.get_change(after["sys_id"]), fake_servicenow.get_change_task(after["sys_id"], after["task_sys_id"])
    assert (change["state"], change["close_code"], task["state"], task["close_code"]) == ("3", "unsuccessful", "3", "unsuccessful")
    # a closed task stays closed, and closing one needs its close code and notes
    with pytest.raises(Exception, match="a closed task stays closed"):
        fake_servicenow.update_change_task(after["sys_id"], after["task_sys_id"], {"state": "2"})
    third = open_rehearsal(fake_servicenow, ledger, run_id="manual__3")
    with pytest.raises(Exception, match="mandatory: Close code, Close notes"):
        fake_servicenow.update_change_task(third["sys_id"], third["task_sys_id"], {"state": "3"})
