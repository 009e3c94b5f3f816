"""Salvage on the real stack: in the ledger incident with legitimate work after the bad UPDATE, the
rewind (xid exclusive, as the finder names it) discards that work too; the salvage DAG's SQL,
re-applied to the rewound cluster, gives back exactly the legitimate rows, and nothing of the bad one."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from tests.conftest import load_dags, run_once
from tests.integration.helpers import VOID_CHECK, assert_success, fresh_ledger, ledger, run_pitr, write

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("clean_guard")]

ROWS = "select string_agg(id || ':' || amount || ':' || status, ',' order by id) from ledger_entry"


def xcom(run, task_id: str):
    [ti] = [ti for ti in run.get_task_instances() if ti.task_id == task_id]
    return ti.xcom_pull(task_ids=task_id, key="return_value")


def test_salvage_gives_back_exactly_the_legitimate_rows_the_rewind_discarded(demo_stack, pitr, approve_all):
    from airflow.utils.state import DagRunState

    fresh_ledger(demo_stack)
    write(demo_stack, 1, 100)
    bad = demo_stack.psql("begin; update ledger_entry set status = 'void'; select pg_current_xact_id(); commit;").split()[-1]
    # legitimate work after it: new trades, one corrected, one cancelled, and an old entry removed
    write(demo_stack, 101, 20)
    demo_stack.psql("update ledger_entry set amount = 7.25 where id = 101")
    demo_stack.psql("delete from ledger_entry where id in (105, 50)")
    demo_stack.psql(
        "begin; insert into ledger_entry values (200, 3.10, 'posted'); insert into ledger_entry values (201, 0, 'x''y, \"z\"'); commit"
    )
    # what the ledger should hold: the legitimate work on top of the state before the bad UPDATE
    expected = demo_stack.psql(
        "select string_agg(id || ':' || amount || ':' || case when id <= 100 then 'posted' else status end, ',' order by id) from ledger_entry"
    )

    rewound = run_pitr(pitr, target_type="xid", target=bad, target_exclusive=True, validation_sql=[VOID_CHECK])
    assert_success(rewound)
    assert ledger(demo_stack) == (100, 0, 100)

    dag = load_dags("rewind_salvage.py")["rewind_salvage__demo"]
    refused = run_once(dag, run_conf={"bad_xids": ["12a"], "timeline": "previous"})
    assert refused.state == DagRunState.FAILED
    run = run_once(dag, run_conf={"bad_xids": [int(bad)], "timeline": "previous"})
    assert run.state == DagRunState.SUCCESS
    result = xcom(run, "salvage")
    assert result["bad_xids"] == [int(bad)] and int(bad) in result["discarded_xids"] and int(bad) not in result["salvaged_xids"]
    assert result["tables"]["public.ledger_entry"] == {"inserted": 21, "updated": 0, "deleted": 1, "review": []}
    directory = Path(result["directory"])
    assert sorted(result["files"]) == [
        "public.ledger_entry.deleted.csv",
        "public.ledger_entry.inserted.csv",
        "salvage.postgres.sql",
    ]
    assert not (directory / "pg").exists()  # the scratch cluster is gone
    with open(directory / "public.ledger_entry.deleted.csv") as deleted:
        assert list(csv.reader(deleted)) == [["id"], ["50"]]  # 105 was inserted after the target: nothing to delete
    with open(directory / "public.ledger_entry.inserted.csv") as inserted:
        rows = list(csv.reader(inserted))
    assert rows[0] == ["id", "amount", "status"] and ["101", "7.25", "posted"] in rows and ["201", "0.00", 'x\'y, "z"'] in rows

    # the DBA applies the reviewed SQL to the rewound cluster: exactly the legitimate rows
    demo_stack.psql((directory / "salvage.postgres.sql").read_text())
    assert demo_stack.psql(ROWS) == expected
    assert demo_stack.psql("select count(*) from ledger_entry where status = 'void'") == "0"
