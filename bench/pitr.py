"""PITR benchmarks, each measured in one run on one real cluster.

    .venv/bin/python bench/pitr.py [--rows 200000]

1. PITR DAG wall time minus the approval wait, divided by the same steps done by hand with the
   pgbackrest CLI and pg_ctl on the same data (stop, restore --delta to the same time target,
   start, wait for promotion, full backup). Goal <= 1.15.
2. Approval pickup latency: from approving the change in the simulator to the stop_postgres step
   starting, with a 5 s poll interval. Goal <= poll interval + 5 s.
3. Restore into an existing data directory with --delta vs into an empty one.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import shutil
import tempfile
import threading
import time
from pathlib import Path

from _airflow_env import REPO, setup


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=200_000)
    args = parser.parse_args()
    setup(migrate=True)

    from devstack.demo import DemoStack
    from devstack.net import free_port
    from devstack.servicenow_sim import ServiceNowSimulator
    from rewind.postgres import start_argv, stop_argv
    from rewind.scratch import ScratchCluster
    from rewind.servicenow import Auth, ServiceNowClient

    stack = DemoStack(Path(tempfile.mkdtemp(prefix="rewind-bench-", dir="/tmp"))).start()
    sim = ServiceNowSimulator().start()
    try:
        os.environ["REWIND_INVENTORY"] = str(stack.inventory_path)
        os.environ["AIRFLOW_CONN_SERVICENOW_DEFAULT"] = sim.airflow_connection()
        os.environ.update(stack.worker_env())
        # who asks (dag.test runs as DAG_TEST): the simulator's on-call DBA, so its CAB approver may approve
        os.environ["AIRFLOW_VAR_REWIND_IDENTITY__DAG_TEST"] = '{"email": "dba.oncall@example.com", "amr": ["pwd", "otp"]}'
        stack.psql(
            f"create table ledger_entry as select g as id, 'posted'::text as status, repeat('x', 200) as pad from generate_series(1, {args.rows}) g"
        )
        pgbackrest = stack.pgbackrest()
        pgbackrest.backup("full", annotations={})
        time.sleep(1.1)

        def target_now() -> str:
            time.sleep(1.1)
            target = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S+00")
            time.sleep(1.1)
            stack.psql("update ledger_entry set status = 'void' where id % 10 = 0")
            return target

        from airflow.dag_processing.dagbag import DagBag

        dag = DagBag(dag_folder=str(REPO / "dags" / "rewind_pitr.py"), safe_mode=False).dags["rewind_pitr__demo"]
        base_conf = {
            "target_type": "time",
            "target_exclusive": False,
            "target_action": "promote",
            "target_timeline": "current",
            "backup_set": None,
            "change_number": None,
            "validation_sql": [],
            "reason": "benchmark of the PITR DAG",
        }

        # 1. DAG vs by hand --------------------------------------------------------------------
        sim.state.auto_approve = True
        conf = {**base_conf, "target": target_now()}
        started = time.perf_counter()
        run = dag.test(run_conf=conf)
        dag_total = time.perf_counter() - started
        assert run.state == "success", run.state
        tis = {ti.task_id: ti for ti in run.get_task_instances()}
        approval_wait = (tis["wait_for_approval"].end_date - tis["wait_for_approval"].start_date).total_seconds()
        dag_s = dag_total - approval_wait

        cluster = stack.cluster
        target = target_now()
        runner = pgbackrest.runner
        started = time.perf_counter()
        runner.run(stop_argv(cluster), timeout=300)
        pgbackrest.restore(restore_type="time", target=target, target_action="promote", delta=True)
        runner.run(start_argv(cluster), timeout=300)
        while stack.psql("select pg_is_in_recovery()") != "f":
            time.sleep(0.2)
        stack.psql("checkpoint")
        pgbackrest.backup("full", annotations={})
        by_hand_s = time.perf_counter() - started
        steps = sorted(tis.values(), key=lambda ti: ti.start_date)
        print("PITR DAG steps: " + ", ".join(f"{ti.task_id} {(ti.end_date - ti.start_date).total_seconds():.2f}" for ti in steps))
        print(f"PITR DAG minus approval wait: {dag_s:.1f} s (total {dag_total:.1f} s, approval wait {approval_wait:.1f} s)")
        print(f"same steps by hand:            {by_hand_s:.1f} s")
        print(f"ratio DAG/by hand: {dag_s / by_hand_s:.2f} (goal <= 1.15)")

        # 2. approval pickup latency -------------------------------------------------------------
        sim.state.auto_approve = False
        dag.get_task("wait_for_approval").poll_interval = 5
        client = ServiceNowClient(sim.url, Auth("basic", sim.state.username, sim.state.password))
        approved = {}

        def approver() -> None:
            while True:
                waiting = client.query("change_request", "approval=requested")
                if waiting:
                    time.sleep(7)  # let the sensor defer first
                    approved["at"] = dt.datetime.now(dt.timezone.utc)
                    sim.approve(waiting[0]["number"])
                    return
                time.sleep(0.2)

        threading.Thread(target=approver, daemon=True).start()
        run = dag.test(run_conf={**base_conf, "target": target_now()})
        assert run.state == "success", run.state
        stop_started = {ti.task_id: ti for ti in run.get_task_instances()}["stop_restore_promote"].start_date
        latency = (stop_started - approved["at"]).total_seconds()
        print(f"approval pickup latency: {latency:.1f} s with a 5 s poll (goal <= 10 s)")

        # 3. delta vs non-delta restore ------------------------------------------------------------
        directory = Path(tempfile.mkdtemp(prefix="rewind-bench-delta-", dir="/tmp"))
        directory.chmod(0o755)
        scratch = ScratchCluster(pgbackrest, directory / "pg", port=free_port())
        label = pgbackrest.info().latest().label
        started = time.perf_counter()
        scratch.restore(backup_set=label)
        empty_s = time.perf_counter() - started
        started = time.perf_counter()
        scratch.restore(backup_set=label)
        delta_s = time.perf_counter() - started
        shutil.rmtree(directory, ignore_errors=True)
        print(
            f"restore into an empty directory: {empty_s:.2f} s; --delta over the same files: {delta_s:.2f} s; ratio {delta_s / empty_s:.2f}"
        )
    finally:
        sim.stop()
        stack.remove()


if __name__ == "__main__":
    main()
