"""A PITR run's journal (rewind.pitr.journal) on a tmp_path state dir: what it records, when it
refuses a second rewind, what it tells the change, and which run used a change."""

from __future__ import annotations

import json
import re

import pytest

from rewind.pitr.journal import AlreadyRewound, RunJournal, journal_dir, run_using_change
from rewind.state import StateFileDamaged, file_key

DAG = "rewind_pitr__ledger"
RUN = "manual__2026-11-24T02:20:00+00:00"
STAMP = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}\+00:00$")


def journal(cluster, run_id=RUN) -> RunJournal:
    return RunJournal.load(cluster, run_id, dag_id=DAG)


def test_a_new_journal_touched_nothing_and_is_not_written_yet(ledger):
    fresh = journal(ledger)
    assert fresh.data == {"run_id": RUN, "dag_id": DAG, "cluster": "ledger", "steps": {}}
    assert not fresh.path.exists() and fresh.path.name == "manual__2026-11-24T02_20_00_00_00.json"
    assert fresh.at("stopped") is None and not fresh.rewound and fresh.change is None
    fresh.refuse_if_rewound("stop_postgres")
    assert fresh.describe() == "nothing was touched: PostgreSQL was never stopped; no new full backup was taken"


def test_record_persists_each_step_with_its_time(ledger):
    run = journal(ledger)
    run.set(change="CHG0010001", change_sys_id="abc")
    run.record("stopped")
    run.record("backup", "20261124-031500F")
    again = journal(ledger)
    assert STAMP.match(again.at("stopped")) and again.at("backup") == "20261124-031500F"
    assert (again.change, again.data["change_sys_id"]) == ("CHG0010001", "abc")
    assert json.loads(again.path.read_text())["steps"] == again.data["steps"]
    with pytest.raises(ValueError, match="unknown PITR step 'stoped'"):
        run.record("stoped")


def steps_journal(cluster, *steps: str, **values: str) -> RunJournal:
    run = journal(cluster)
    for step in steps:
        run.record(step, values.get(step, f"T-{step}"))
    return run


@pytest.mark.parametrize(
    "steps, described",
    [
        (("stopped",), "PostgreSQL stopped at T-stopped; no new full backup was taken"),
        (
            ("stopped", "restore_started"),
            "PostgreSQL stopped at T-stopped; restore started at T-restore_started and not finished; no new full backup was taken",
        ),
        (
            ("stopped", "restore_started", "restored"),
            "PostgreSQL stopped at T-stopped; data directory restored at T-restored; no new full backup was taken",
        ),
        (
            ("stopped", "restore_started", "restored", "started"),
            "PostgreSQL stopped at T-stopped; data directory restored at T-restored; PostgreSQL started on the restored data at T-started; "
            "no new full backup was taken",
        ),
        (
            ("stopped", "restored", "started", "at_target"),
            "PostgreSQL stopped at T-stopped; data directory restored at T-restored; PostgreSQL started on the restored data at T-started; "
            "recovery reached the target at T-at_target (not promoted); no new full backup was taken",
        ),
        (
            ("stopped", "restored", "started", "at_target", "checked", "promoted", "backup"),
            "PostgreSQL stopped at T-stopped; data directory restored at T-restored; PostgreSQL started on the restored data at T-started; "
            "promoted at T-promoted; new full backup T-backup exists",
        ),
    ],
)
def test_describe_says_what_the_run_really_did(ledger, steps, described):
    assert steps_journal(ledger, *steps).describe() == described


def test_once_started_on_restored_data_the_run_refuses_to_stop_or_restore_again(ledger):
    run = steps_journal(ledger, "stopped", "restore_started", "restored")
    run.refuse_if_rewound("restore")  # a retry of the same rewind may still finish it
    run.set(change="CHG0010001")
    run.record("started", "2026-11-24T02:31:00.000+00:00")
    assert run.rewound
    with pytest.raises(
        AlreadyRewound,
        match=(
            r"this run already rewound cluster 'ledger' \(PostgreSQL started on the restored data at 2026-11-24T02:31:00.000\+00:00, "
            r"change CHG0010001\): stop_postgres will not stop or restore it again; a new rewind needs a new run and a newly approved change"
        ),
    ) as raised:
        journal(ledger).refuse_if_rewound("stop_postgres")
    assert raised.value.opens_incident is False


def test_run_using_change_names_the_other_run(ledger):
    assert run_using_change(ledger, "CHG0010001", except_run=RUN) is None  # no journal directory yet
    journal(ledger, "manual__earlier").set(change="CHG0010001")
    journal(ledger, RUN).set(change="CHG0010002")
    assert run_using_change(ledger, "CHG0010001", except_run=RUN) == "manual__earlier"
    assert run_using_change(ledger, "CHG0010001", except_run="manual__earlier") is None
    assert run_using_change(ledger, "CHG0010003", except_run=RUN) is None


def test_a_damaged_journal_is_reported_not_taken_as_empty(ledger):
    journal(ledger).set(change="CHG0010001")
    path = journal_dir(ledger) / f"{file_key(RUN)}.json"
    path.write_text('{"run_id": "manual__')
    with pytest.raises(StateFileDamaged, match=f"PITR run journal {re.escape(str(path))} is damaged .*: restore it from the task logs"):
        journal(ledger)
    with pytest.raises(StateFileDamaged):
        run_using_change(ledger, "CHG0010001", except_run="other")


def test_file_key_keeps_run_ids_readable_and_safe():
    assert file_key("scheduled__2026-11-24T02:00:00+00:00") == "scheduled__2026-11-24T02_00_00_00_00"
    assert file_key("../../etc/passwd") == ".._.._etc_passwd"
    assert len(file_key("x" * 500)) == 200
