"""The finder on the real stack: in the ledger incident, among other traffic, it names the runaway
UPDATE's xid from the archived WAL (DAG and CLI), and a PITR with the params it names is exact."""

from __future__ import annotations

import datetime as dt
import json
import time

import pytest

from tests.conftest import load_dags, run_once
from tests.integration.helpers import VOID_CHECK, assert_success, fresh_ledger, ledger, run_pitr, write

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("clean_guard")]

FORM = {"window_end": "", "tables": [], "timeline": "current", "max_segments": 256}


def finder_dag():
    return load_dags("rewind_find_target.py")["rewind_find_target__demo"]


def xcom(run, task_id: str):
    [ti] = [ti for ti in run.get_task_instances() if ti.task_id == task_id]
    return ti.xcom_pull(task_ids=task_id, key="return_value")


def test_the_finder_names_the_runaway_update_among_other_traffic_and_its_params_rewind_exactly(demo_stack, pitr, approve_all, capfd):
    from airflow.utils.state import DagRunState

    from rewind.cli import main as rewind_cli

    fresh_ledger(demo_stack)
    demo_stack.psql("drop table if exists trade; create table trade (id serial primary key, note text)")
    write(demo_stack, 1, 100)
    time.sleep(1.1)
    start = (dt.datetime.now(dt.timezone.utc) - dt.timedelta(seconds=0.5)).strftime("%Y-%m-%d %H:%M:%S.%f+00")
    demo_stack.psql("insert into trade (note) values ('a'), ('b')")  # other tables' traffic
    demo_stack.psql("update ledger_entry set amount = amount + 1 where id <= 3")  # legitimate, before the incident
    demo_stack.psql("delete from ledger_entry where id = 100")
    bad = demo_stack.psql("begin; update ledger_entry set status = 'void'; select pg_current_xact_id(); commit;").split()[-1]
    write(demo_stack, 101, 20)  # legitimate, after it
    demo_stack.psql("insert into trade (note) values ('c')")

    # bad input: one line, nothing read
    refused = run_once(finder_dag(), run_conf={**FORM, "window_start": "2026-11-27 02:00"})
    assert refused.state == DagRunState.FAILED

    run = run_once(finder_dag(), run_conf={**FORM, "window_start": start, "tables": ["ledger_entry"]})
    assert run.state == DagRunState.SUCCESS
    result = xcom(run, "find_target")
    assert result["suspect"]["xid"] == int(bad)
    assert result["suspect"]["tables"] == {"public.ledger_entry": {"inserted": 0, "updated": 99, "deleted": 0}}
    by_xid = {t["xid"]: t for t in result["transactions"]}
    assert [t["tables"]["public.ledger_entry"] for t in result["transactions"]] == [
        {"inserted": 0, "updated": 3, "deleted": 0},
        {"inserted": 0, "updated": 0, "deleted": 1},
        {"inserted": 0, "updated": 99, "deleted": 0},
        {"inserted": 20, "updated": 0, "deleted": 0},
    ]  # the trade-only transactions are left out by the table filter
    params = by_xid[int(bad)]["pitr_params"]
    assert params == {"target_type": "xid", "target": bad, "target_exclusive": True, "target_timeline": "current"}
    assert result["recoverable"]["oldest_backup"] and result["recoverable"]["newest_segment"]

    # the CLI reads the same WAL: every table this time
    capfd.readouterr()
    assert rewind_cli(["--inventory", str(demo_stack.inventory_path), "find-target", "--cluster", "demo", "--from", start, "--json"]) == 0
    listed = json.loads(capfd.readouterr().out)
    assert listed["suspect"]["xid"] == int(bad)
    assert [t["tables"] for t in listed["transactions"]][0] == {"public.trade": {"inserted": 2, "updated": 0, "deleted": 0}}

    rewound = run_pitr(pitr, **params, validation_sql=[VOID_CHECK])
    assert_success(rewound)
    # everything before the UPDATE (the legitimate update and delete included), nothing from it on
    assert ledger(demo_stack) == (99, 0, 99)
    assert demo_stack.psql("select amount from ledger_entry where id = 3") == "5.50"
    assert demo_stack.psql("select count(*) from trade") == "2"
