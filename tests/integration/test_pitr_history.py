"""A branched history, operated as a month of production does: two rewinds in a row (the second
to a time between the first one's promotion and the end of its new full backup, with the default
target_timeline `current`), the hourly backup with its expire afterwards (count-based retention of 2
full backups, so each rewind's new full backup pushes the oldest out), then rewinds to targets on
each branch, from a backup of an ancestor timeline or chosen automatically.

Every case checks the rows, not only that the run succeeded: a restore that follows the wrong
branch also "succeeds".

    timeline 1:  A ─ F1 ─ B ─ T1 ──┬── void, C ─ I1 ─ (end: the pre-rewind state)
    timeline 2:                    └── promote ─ W2 ─ F2 ─ D ─ LSN_D ─ E
    timeline 3:                                  └── (rewind 2 to W2) ─ F3 ─ W ─ LSN_W
"""

from __future__ import annotations

import datetime as dt
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from devstack.demo import DemoStack
from rewind.pitr.journal import RunJournal
from rewind.postgres import postmaster_pid
from tests.conftest import load_dags, run_once
from tests.integration.conftest import pitr_dag
from tests.integration.helpers import VOID_CHECK, assert_success, fresh_ledger, ledger, run_pitr, states, timeline, write

pytestmark = pytest.mark.integration

COUNT = {"sql": "select count(*) from ledger_entry", "expect": 0}


def at(moment: dt.datetime) -> str:
    return moment.astimezone(dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S.%f+00")


@dataclass
class History:
    stack: DemoStack
    dag: object
    f1: str  # full backup on timeline 1, before everything
    i1: str  # incr on timeline 1 after the branch point: not on timeline 2's history
    pre_rewind: tuple[int, int, int]  # timeline 1 at its end
    tl2: int
    tl3: int
    lsn_d: str  # on timeline 2, after D, before E
    lsn_w: str  # on timeline 3, after W
    rewind_runs: list[str]


@pytest.fixture(scope="module")
def history(airflow_db, servicenow):
    stack = DemoStack(Path(tempfile.mkdtemp(prefix="rewind-stack-", dir="/tmp")), name="branched", repo_settings={"retention_full": 2})
    saved = dict(os.environ)
    servicenow.state.auto_approve = True
    try:
        stack.start()
        os.environ["REWIND_INVENTORY"] = str(stack.inventory_path)
        os.environ["AIRFLOW_CONN_REWIND_PG_BRANCHED"] = stack.postgres_connection()
        os.environ.update(stack.worker_env())
        yield build(stack, pitr_dag("branched"))
    finally:
        servicenow.state.auto_approve = False
        os.environ.clear()
        os.environ.update(saved)
        stack.remove()


def build(stack: DemoStack, dag) -> History:
    pgbackrest = stack.pgbackrest()
    fresh_ledger(stack)
    write(stack, 1, 100)  # A
    pgbackrest.backup("full", annotations={"airflow_run_id": "history-F1"})
    write(stack, 101, 100)  # B
    time.sleep(1.2)
    t1 = dt.datetime.now(dt.timezone.utc)
    time.sleep(1.2)
    stack.psql("update ledger_entry set status = 'void'")
    write(stack, 10_001, 50)  # C
    pgbackrest.backup("incr", annotations={"airflow_run_id": "history-I1"})
    pre_rewind = ledger(stack)
    assert pre_rewind == (250, 200, 10_050)

    run1 = run_pitr(dag, target_type="time", target=at(t1), validation_sql=[VOID_CHECK])
    assert_success(run1)
    assert ledger(stack) == (200, 0, 200)
    tl2 = timeline(stack)
    promoted = dt.datetime.fromisoformat(RunJournal.load(stack.cluster, run1.run_id).at("promoted"))
    f2 = pgbackrest.info().find_annotated("airflow_run_id", run1.run_id)
    assert f2.type == "full" and f2.timeline == tl2
    in_window = promoted + dt.timedelta(milliseconds=300)
    assert in_window < f2.stopped_at, f"the full backup ended too soon after the promotion ({promoted} .. {f2.stopped_at})"

    write(stack, 301, 50)  # D
    lsn_d = stack.psql("select pg_current_wal_insert_lsn()")
    write(stack, 401, 50)  # E
    # Rewind 2, to W2: after rewind 1's promotion, before its new full backup ended. The newest
    # backup that ended before W2 is F1 on timeline 1, and target_timeline is the default `current`:
    # recovery must still switch to timeline 2 at the branch point. (PostgreSQL's own `current`,
    # which Rewind once passed on as is, is the backup's timeline: it replayed the void UPDATE.)
    run2 = run_pitr(dag, target_type="time", target=at(in_window), validation_sql=[VOID_CHECK, {**COUNT, "expect": 200}])
    assert_success(run2)
    assert ledger(stack) == (200, 0, 200)
    plan2 = RunJournal.load(stack.cluster, run2.run_id).data["plan"]
    assert (plan2["backup_set"], plan2["timeline"], plan2["timeline_requested"]) == (
        pgbackrest.info().find_annotated("airflow_run_id", "history-F1").label,
        tl2,
        "current",
    )
    tl3 = timeline(stack)
    assert tl3 == tl2 + 1
    write(stack, 501, 50)  # W
    lsn_w = stack.psql("select pg_current_wal_insert_lsn()")
    stack.psql("select pg_switch_wal()")

    # The next hourly incremental backup and its expire, with retention_full=2 and three fulls.
    backup = run_once(load_dags()["rewind_backup_incr__branched"])
    assert backup.state == "success", states(backup)
    labels = {
        "f1": pgbackrest.info().find_annotated("airflow_run_id", "history-F1").label,
        "i1": pgbackrest.info().find_annotated("airflow_run_id", "history-I1").label,
    }
    return History(stack, dag, labels["f1"], labels["i1"], pre_rewind, tl2, tl3, lsn_d, lsn_w, [run1.run_id, run2.run_id])


def test_retention_after_two_rewinds_keeps_the_pre_rewind_history(history, capfd):
    """Count-based retention of 2 fulls with three fulls in the repository would expire F1 and every
    timeline-1 WAL segment: the holds of both rewinds keep them, and say so."""
    from rewind.cli import main as rewind_cli

    info = history.stack.pgbackrest().info()
    labels = {b.label for b in info.backup}
    assert {history.f1, history.i1} <= labels
    assert sum(1 for b in info.backups if b.type == "full") >= 3
    capfd.readouterr()
    assert rewind_cli(["--inventory", str(history.stack.inventory_path), "holds", "--cluster", "branched"]) == 0
    out = capfd.readouterr().out
    for run_id in history.rewind_runs:
        assert f"hold of PITR run {run_id}" in out and "floor " + history.f1 in out
        assert f"held for {run_id}: {history.f1}" in out


def test_latest_on_the_abandoned_timeline_gives_back_the_pre_rewind_state(history):
    run = run_pitr(history.dag, target_type="latest", target_timeline="1", validation_sql=[{**VOID_CHECK, "expect": 200}])
    assert_success(run)
    assert ledger(history.stack) == history.pre_rewind  # every transaction the first rewind discarded


def test_an_lsn_on_timeline_2_from_a_timeline_1_backup_follows_timeline_2(history):
    run = run_pitr(
        history.dag,
        target_type="lsn",
        target=history.lsn_d,
        target_timeline=str(history.tl2),
        backup_set=history.f1,
        validation_sql=[{**COUNT, "expect": 250}],
    )
    assert_success(run)
    assert ledger(history.stack) == (250, 0, 350)  # A, B and D; not the void branch, not E
    plan = RunJournal.load(history.stack.cluster, run.run_id).data["plan"]
    assert (plan["backup_set"], plan["timeline"]) == (history.f1, history.tl2)


def test_an_lsn_on_timeline_3_from_a_timeline_1_backup_follows_timeline_3(history):
    run = run_pitr(
        history.dag,
        target_type="lsn",
        target=history.lsn_w,
        target_timeline=str(history.tl3),
        backup_set=history.f1,
        validation_sql=[{**COUNT, "expect": 250}],
    )
    assert_success(run)
    assert ledger(history.stack) == (250, 0, 550)  # A, B and W: neither the void branch nor D and E


def test_an_lsn_on_timeline_2_without_backup_set_takes_timeline_2s_own_backup(history):
    run = run_pitr(
        history.dag, target_type="lsn", target=history.lsn_d, target_timeline=str(history.tl2), validation_sql=[{**COUNT, "expect": 250}]
    )
    assert_success(run)
    assert ledger(history.stack) == (250, 0, 350)
    plan = RunJournal.load(history.stack.cluster, run.run_id).data["plan"]
    assert plan["backup_set"] != history.f1 and plan["timeline"] == history.tl2


def test_a_backup_of_the_abandoned_branch_is_refused_for_the_new_timeline(history, capfd):
    pid = postmaster_pid(history.stack.cluster)
    run = run_pitr(history.dag, target_type="lsn", target=history.lsn_d, target_timeline=str(history.tl2), backup_set=history.i1)
    assert run.state == "failed" and states(run)["preflight"] == "failed", states(run)
    out = capfd.readouterr().out
    assert f"param backup_set: {history.i1}" in out and f"does not lead to timeline {history.tl2}" in out
    assert postmaster_pid(history.stack.cluster) == pid
