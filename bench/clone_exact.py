"""Every target type exact in clone mode, on targets the test never saw: random points between
committed batches, each rewind after the earlier ones (on the timeline the last one made).

    .venv/bin/python bench/clone_exact.py [--rounds 2] [--batches 30] [--seed N]

The demo cluster (PostgreSQL + pgBackRest + S3 over TLS) writes --batches batches, one transaction
each (50 rows of `item` and one row of `batch_log`), recording after each commit its xid, the WAL
position just after it, a restore point named after it, and an instant between it and the next
commit. Each rewind picks, with a seeded random generator (the seed is printed: a failure can be
replayed), a target type in turn (time, xid inclusive, xid exclusive of the next batch, lsn, name)
and a batch k among those written on the current timeline; it rewinds through the PITR DAG
(`mode` clone: restore and checks on a clone, cutover), then checks that exactly batches 1..k
of this timeline's history are there (batch_log and item agree), and writes the next batches on the
new timeline before the next rewind. Prints one line per rewind and "exact: n/n".
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import random
import tempfile
import time
from pathlib import Path

from _airflow_env import REPO, setup

KINDS = ("time", "xid", "xid_exclusive", "lsn", "name")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=2, help="rewinds per target type")
    parser.add_argument("--batches", type=int, default=30, help="batches written before each rewind")
    parser.add_argument("--seed", type=int, default=None)
    args = parser.parse_args()
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(2**32)
    rng = random.Random(seed)
    setup(migrate=True)

    from devstack.demo import DemoStack
    from devstack.servicenow_sim import ServiceNowSimulator

    stack = DemoStack(Path(tempfile.mkdtemp(prefix="rewind-bench-", dir="/tmp"))).start()
    sim = ServiceNowSimulator().start()
    try:
        os.environ["REWIND_INVENTORY"] = str(stack.inventory_path)
        os.environ["AIRFLOW_CONN_SERVICENOW_DEFAULT"] = sim.airflow_connection()
        os.environ.update(stack.worker_env())
        # who asks (dag.test runs as DAG_TEST): the simulator's on-call DBA, so its CAB approver may approve
        os.environ["AIRFLOW_VAR_REWIND_IDENTITY__DAG_TEST"] = '{"email": "dba.oncall@example.com", "amr": ["pwd", "otp"]}'
        sim.state.auto_approve = True
        stack.psql("create table batch_log (batch int primary key, committed_at timestamptz not null)")
        stack.psql("create table item (id bigint primary key, batch int not null)")
        stack.pgbackrest().backup("full", annotations={})

        from airflow.dag_processing.dagbag import DagBag

        dag = DagBag(dag_folder=str(REPO / "dags" / "rewind_pitr.py"), safe_mode=False).dags["rewind_pitr__demo"]
        dag.get_task("wait_for_approval").poll_interval = 1
        form = dag.params.dump()

        def write_batches(first: int, count: int) -> dict[int, dict]:
            """One transaction per batch; what identifies each commit, and an instant after it."""
            marks = {}
            for batch in range(first, first + count):
                xid = stack.psql(  # one statement: one transaction, its xid
                    f"with items as (insert into item select {batch} * 100 + g, {batch} from generate_series(1, 50) g returning 1), "
                    f"logged as (insert into batch_log values ({batch}, clock_timestamp()) returning 1) "
                    "select pg_current_xact_id() from logged, (select count(*) from items) n"
                )
                lsn = stack.psql("select pg_current_wal_insert_lsn()")
                stack.psql(f"select pg_create_restore_point('bench-{seed}-batch-{batch}')")
                time.sleep(0.3)
                at = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S.%f+00")
                time.sleep(0.3)
                marks[batch] = {"xid": xid, "lsn": lsn, "at": at}
            return marks

        def target_for(kind: str, batch: int, marks: dict[int, dict]) -> dict:
            if kind == "time":
                return {"target_type": "time", "target": marks[batch]["at"]}
            if kind == "xid":
                return {"target_type": "xid", "target": marks[batch]["xid"]}
            if kind == "xid_exclusive":  # just before the next batch's commit
                return {"target_type": "xid", "target": marks[batch + 1]["xid"], "target_exclusive": True}
            if kind == "lsn":
                return {"target_type": "lsn", "target": marks[batch]["lsn"]}
            return {"target_type": "name", "target": f"bench-{seed}-batch-{batch}"}

        print(f"seed {seed}; {args.batches} batches before each rewind; clone mode; target types {', '.join(KINDS)}", flush=True)
        kept = 0  # batches of the current timeline's history below the ones written since the last rewind
        exact, rewinds = 0, 0
        for round_ in range(args.rounds):
            for kind in KINDS:
                marks = write_batches(kept + 1, args.batches)
                batch = rng.randrange(kept + 1, kept + args.batches)  # never the last: xid_exclusive needs the next one
                conf = {
                    **form,
                    **target_for(kind, batch, marks),
                    "mode": "clone",
                    "target_action": "pause",
                    "validation_sql": [{"sql": f"select count(*) from batch_log where batch > {batch}", "expect": 0}],
                    "reason": f"bench clone_exact round {round_ + 1}: {kind} at batch {batch}",
                }
                started = time.monotonic()
                run = dag.test(run_conf=conf)
                seconds = time.monotonic() - started
                rewinds += 1
                found = stack.psql("select count(*) || ' ' || coalesce(max(batch), 0) from batch_log")
                items = stack.psql("select count(*) || ' ' || count(distinct batch) || ' ' || coalesce(max(batch), 0) from item")
                ok = run.state == "success" and found == f"{batch} {batch}" and items == f"{batch * 50} {batch} {batch}"
                exact += ok
                timeline = stack.psql("select timeline_id from pg_control_checkpoint()")
                print(
                    f"rewind {rewinds:2}: {kind:13} batch {batch:3} of {kept + 1}..{kept + args.batches}: run {run.state}, "
                    f"batch_log {found}, item {items} -> {'exact' if ok else 'WRONG'} (timeline {timeline}, {seconds:.1f} s)",
                    flush=True,
                )
                if run.state != "success":
                    raise SystemExit(f"rewind {rewinds} did not succeed: {[(ti.task_id, ti.state) for ti in run.get_task_instances()]}")
                kept = batch
        print(f"exact: {exact}/{rewinds} (seed {seed})", flush=True)
        if exact != rewinds:
            raise SystemExit(1)
    finally:
        sim.stop()
        stack.remove()


if __name__ == "__main__":
    main()
