"""The ledger incident's runbook on the real stack, in one story (one rewind): the finder names the
runaway UPDATE's xid from the archived WAL among other traffic (DAG and CLI); a PITR with the params
it names is exact; the rewind also discarded the legitimate work committed after the UPDATE, and the
salvage DAG's SQL, re-applied to the rewound cluster, gives back exactly that work."""

from __future__ import annotations

import csv
import datetime as dt
import json
import time
from pathlib import Path

import pytest

from tests.conftest import load_dags, run_once
from tests.integration.helpers import VOID_CHECK, assert_success, fresh_ledger, ledger, run_pitr, write

pytestmark = pytest.mark.integration

FINDER_FORM = {"window_end": "", "tables": [], "timeline": "current", "max_segments": 256}
ROWS = "select string_agg(id || ':' || amount || ':' || status, ',' order by id) from ledger_entry"


def xcom(run, task_id: str):
    [ti] = [ti for ti in run.get_task_instances() if ti.task_id == task_id]
    return ti.xcom_pull(task_ids=task_id, key="return_value")


def read_csv(path: Path) -> list[list[str]]:
    with open(path, newline="") as f:
        return list(csv.reader(f))


def test_the_ledger_incident_found_rewound_exactly_and_its_legitimate_work_salvaged(demo_stack, pitr, approve_all, capfd):
    from airflow.utils.state import DagRunState

    from rewind.cli import main as rewind_cli

    fresh_ledger(demo_stack)
    # identity ALWAYS and a generated column: salvage's SQL must insert into both as they are
    demo_stack.psql(
        "drop table if exists trade; create table trade (id bigint generated always as identity primary key, note text, "
        "note_length int generated always as (length(note)) stored)"
    )
    write(demo_stack, 1, 100)
    time.sleep(1.1)
    start = (dt.datetime.now(dt.timezone.utc) - dt.timedelta(seconds=0.5)).strftime("%Y-%m-%d %H:%M:%S.%f+00")
    demo_stack.psql("analyze ledger_entry")  # as autovacuum's would: statistics, never a transaction to list
    demo_stack.psql("insert into trade (note) values ('a'), ('b')")  # other tables' traffic
    demo_stack.psql("update ledger_entry set amount = amount + 1 where id <= 3")  # legitimate, before the incident
    demo_stack.psql("delete from ledger_entry where id = 100")
    bad = demo_stack.psql("begin; update ledger_entry set status = 'void'; select pg_current_xact_id(); commit;").split()[-1]
    # legitimate work after it: new entries, one corrected, one cancelled, an old one removed, another table
    write(demo_stack, 101, 20)
    demo_stack.psql("update ledger_entry set amount = 7.25 where id = 101")
    demo_stack.psql("delete from ledger_entry where id in (105, 50)")
    demo_stack.psql(
        "begin; insert into ledger_entry values (200, 3.10, 'posted'); insert into ledger_entry values (201, 0, 'x''y, \"z\"'); commit"
    )
    demo_stack.psql("insert into trade (note) select 'c' || g from generate_series(1, 40) g")  # ids 3..42: past what the sequence logged
    # what the ledger should hold in the end: the legitimate work on top of the state before the UPDATE
    expected = demo_stack.psql(
        "select string_agg(id || ':' || amount || ':' || case when id < 100 then 'posted' else status end, ',' order by id) from ledger_entry"
    )

    # ---- find the target
    finder = load_dags("rewind_find_target.py")["rewind_find_target__demo"]
    refused = run_once(finder, run_conf={**FINDER_FORM, "window_start": "2026-11-27 02:00"})  # no time zone: one line, nothing read
    assert refused.state == DagRunState.FAILED
    run = run_once(finder, run_conf={**FINDER_FORM, "window_start": start, "tables": ["ledger_entry"]})
    assert run.state == DagRunState.SUCCESS
    found = xcom(run, "find_target")
    assert found["suspect"]["xid"] == int(bad)
    assert found["suspect"]["tables"] == {"public.ledger_entry": {"inserted": 0, "updated": 99, "deleted": 0}}
    assert [t["tables"]["public.ledger_entry"] for t in found["transactions"]] == [
        {"inserted": 0, "updated": 3, "deleted": 0},
        {"inserted": 0, "updated": 0, "deleted": 1},
        {"inserted": 0, "updated": 99, "deleted": 0},
        {"inserted": 20, "updated": 0, "deleted": 0},
        {"inserted": 0, "updated": 1, "deleted": 0},
        {"inserted": 0, "updated": 0, "deleted": 2},
        {"inserted": 2, "updated": 0, "deleted": 0},
    ]  # the trade-only transactions are left out by the table filter
    params = found["suspect"]["pitr_params"]
    timeline_now = demo_stack.psql("select timeline_id from pg_control_checkpoint()")
    assert params == {"target_type": "xid", "target": bad, "target_exclusive": True, "target_timeline": timeline_now}
    assert found["recoverable"]["oldest_backup"] and found["recoverable"]["newest_segment"]
    # the CLI reads the same WAL: every table this time
    capfd.readouterr()
    assert rewind_cli(["--inventory", str(demo_stack.inventory_path), "find-target", "--cluster", "demo", "--from", start, "--json"]) == 0
    listed = json.loads(capfd.readouterr().out)
    assert listed["suspect"]["xid"] == int(bad)
    assert listed["transactions"][0]["tables"] == {"public.trade": {"inserted": 2, "updated": 0, "deleted": 0}}

    # ---- rewind with the params the finder named: everything before the UPDATE, nothing from it on
    assert_success(run_pitr(pitr, **params, validation_sql=[VOID_CHECK]))
    assert ledger(demo_stack) == (99, 0, 99)
    assert demo_stack.psql("select amount from ledger_entry where id = 3") == "5.50"
    assert demo_stack.psql("select count(*) from trade") == "2"

    # ---- salvage what the rewind discarded, minus the UPDATE
    salvage = load_dags("rewind_salvage.py")["rewind_salvage__demo"]
    refused = run_once(salvage, run_conf={"bad_xids": ["12a"], "timeline": "previous"})
    assert refused.state == DagRunState.FAILED
    run = run_once(salvage, run_conf={"bad_xids": [int(bad)], "timeline": "previous"})
    assert run.state == DagRunState.SUCCESS
    result = xcom(run, "salvage")
    assert result["bad_xids"] == [int(bad)] and int(bad) in result["discarded_xids"] and int(bad) not in result["salvaged_xids"]
    assert result["tables"] == {
        "public.ledger_entry": {"inserted": 21, "updated": 0, "deleted": 1, "review": []},
        "public.trade": {"inserted": 40, "updated": 0, "deleted": 0, "review": []},
    }
    directory = Path(result["directory"])
    assert sorted(result["files"]) == [
        "public.ledger_entry.deleted.csv",
        "public.ledger_entry.inserted.csv",
        "public.trade.inserted.csv",
        "salvage.postgres.sql",
    ]
    assert not (directory / "pg").exists()  # the scratch cluster is gone
    assert read_csv(directory / "public.ledger_entry.deleted.csv") == [["id"], ["50"]]  # 105 came after the target: nothing to delete
    inserted = read_csv(directory / "public.ledger_entry.inserted.csv")
    assert inserted[0] == ["id", "amount", "status"] and ["101", "7.25", "posted"] in inserted and ["201", "0.00", 'x\'y, "z"'] in inserted
    trade = read_csv(directory / "public.trade.inserted.csv")  # rows in the order of their key's text
    assert trade[0] == ["id", "note"] and sorted(trade[1:], key=lambda row: int(row[0])) == [[str(i + 2), f"c{i}"] for i in range(1, 41)]

    # the DBA reviews and applies the SQL to the rewound cluster: exactly the legitimate rows
    applied = demo_stack.psql((directory / "salvage.postgres.sql").read_text())
    assert applied == "sequence public.trade_id_seq at 42"  # and no REVIEW line: nothing changed since the rewind
    assert demo_stack.psql(ROWS) == expected
    assert demo_stack.psql("select count(*) || ' ' || max(id) from trade") == "42 42"
    assert demo_stack.psql("select count(*) from trade where note_length = length(note)") == "42"
    # the sequence was rewound too (to what it had logged ahead: 34): the SQL moved it past the salvaged ids
    assert demo_stack.psql("insert into trade (note) values ('d') returning id") == "43"
