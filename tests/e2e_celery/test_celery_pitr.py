"""A rewind of one database host's cluster, with the other host's backups running meanwhile: the
PITR's every step runs on the ledger host's worker, the crm host's worker keeps taking crm's backups
(none skips: the restore guard is ledger's), and crm's PostgreSQL is never touched."""

from __future__ import annotations

import datetime as dt
import time

import pytest

from rewind.postgres import postmaster_pid
from rewind.servicenow import Auth, ServiceNowClient
from tests.e2e_celery.conftest import utc

pytestmark = pytest.mark.e2e

VOID_CHECK = [{"sql": "select count(*) from ledger_entry where status = 'void'", "expect": 0}]


def prepare_mistake(stack, base_label: str) -> dict:
    """A base backup, 75 posted entries, then a mistake voiding all of them: the PITR's request to
    go back to just before the mistake."""
    stack.pgbackrest().backup("full", annotations={"airflow_run_id": base_label})
    stack.psql("drop table if exists ledger_entry")
    stack.psql("create table ledger_entry (id bigint primary key, status text)")
    stack.psql("insert into ledger_entry select g, 'posted' from generate_series(1, 75) g")
    time.sleep(1.2)
    target = dt.datetime.now(dt.timezone.utc).replace(microsecond=0)
    time.sleep(1.2)
    stack.psql("update ledger_entry set status = 'void'")
    return {
        "target_type": "time",
        "target": target.strftime("%Y-%m-%d %H:%M:%S+00"),
        "validation_sql": VOID_CHECK,
        "reason": "e2e celery: a migration voided the ledger",
    }


def assert_rewound_exactly(shape, stack, dag_id: str, run_id: str) -> None:
    assert stack.psql("select count(*) || ' ' || count(*) filter (where status = 'void') from ledger_entry") == "75 0"
    sn = ServiceNowClient(shape.servicenow.url, Auth("basic", shape.servicenow.state.username, shape.servicenow.state.password))
    [change] = sn.query("change_request", f"correlation_id=rewind:{dag_id}:{run_id}")
    assert (change["state"], change["close_code"]) == ("3", "successful")
    backups = [b for b in stack.pgbackrest().info().backups if b.annotations.get("airflow_run_id") == run_id]
    assert [(b.type, b.annotations.get("rewind_change")) for b in backups] == [("full", change["number"])]  # one new full, not two


def test_a_rewind_of_ledger_completes_exactly_while_crm_keeps_backing_up(shape):
    ledger, crm = shape.clusters["ledger"], shape.clusters["crm"]
    pitr, incr = "rewind_pitr__ledger", "rewind_backup_incr__crm"
    conf = prepare_mistake(ledger, "e2e-celery-pitr-base")
    crm_postmaster = postmaster_pid(crm.cluster)
    shape.airflow.wait_for_dag(incr)

    run_id = shape.trigger(pitr, conf)
    crm_runs = []
    while shape.airflow.api("GET", f"/dags/{pitr}/dagRuns/{run_id}").json()["state"] not in ("success", "failed"):
        crm_runs.append(shape.trigger(incr))
        shape.wait_for_run(incr, crm_runs[-1])
    shape.wait_for_run(pitr, run_id)

    tis = shape.task_instances(pitr, run_id)
    assert {(ti["queue"], ti["hostname"]) for ti in tis.values()} == {(ledger.queue, ledger.host.address)}
    assert_rewound_exactly(shape, ledger, pitr, run_id)

    # crm's backups ran on crm's host, and went on while ledger was stopped, restored and rewound
    rewind_window = (utc(tis["stop_postgres"]["start_date"]), utc(tis["release_restore_guard"]["end_date"]))
    crm_backups = []
    for crm_run in shape.airflow.api("GET", f"/dags/{incr}/dagRuns", params={"limit": 100}).json()["dag_runs"]:
        crm_run_id = crm_run["dag_run_id"]
        shape.wait_for_run(incr, crm_run_id)  # scheduled ones included (unpausing creates one)
        backup = shape.task_instances(incr, crm_run_id)["backup"]
        assert (backup["state"], backup["queue"], backup["hostname"]) == ("success", crm.queue, crm.host.address), backup
        crm_backups.append((utc(backup["start_date"]), utc(backup["end_date"])))
    during = [b for b in crm_backups if rewind_window[0] <= b[0] and b[1] <= rewind_window[1]]
    assert during, f"no crm backup ran while ledger was being rewound {rewind_window}: {crm_backups}"
    info = crm.pgbackrest().info()
    assert all(info.find_annotated("airflow_run_id", r) is not None for r in crm_runs)
    assert postmaster_pid(crm.cluster) == crm_postmaster
