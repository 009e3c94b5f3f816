"""The seed story at its own size, in one run: a ledger of 10 million rows, the runaway UPDATE flipping
9.4 million of them to void (GiBs of WAL), legitimate work after it, then what the on-call does:
a full backup first, the finder locating the bad transaction, a PITR to just before it, and the
salvage of the legitimate inserts it discarded; beside the same restore done by hand.

    .venv/bin/python bench/story_10m.py [--rows 10000000]

Prints, per step: wall time, bytes read from the repository where it restores (pgBackRest's restore
size, and the WAL between the backup and the target), peak memory of Rewind's own process (the
`rewind` CLI's VmHWM plus its children, devstack/peak_memory.py; the PITR runs in this process
through dag.test, whose peak is this process's), and for the two restores the downtime (stop
requested -> PostgreSQL accepting connections again). Not part of the test suite.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import re
import sys
import tempfile
import time
from pathlib import Path

from _airflow_env import REPO, setup

LEGIT_TRANSACTIONS = 300


def vm_hwm_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=10_000_000)
    args = parser.parse_args()
    setup(migrate=True)

    from devstack.demo import DemoStack
    from devstack.peak_memory import run_measured
    from devstack.servicenow_sim import ServiceNowSimulator
    from rewind.pitr.recovery import archive_current_wal
    from rewind.postgres import start_argv, stop_argv

    stack = DemoStack(Path(tempfile.mkdtemp(prefix="rewind-bench-", dir="/tmp"))).start()
    sim = ServiceNowSimulator().start()
    report: list[str] = []

    def say(line: str) -> None:
        report.append(line)
        print(line, flush=True)

    def timed(_what: str, work):
        started = time.perf_counter()
        value = work()
        seconds = time.perf_counter() - started
        return value, seconds

    try:
        os.environ["REWIND_INVENTORY"] = str(stack.inventory_path)
        os.environ["AIRFLOW_CONN_SERVICENOW_DEFAULT"] = sim.airflow_connection()
        os.environ.update(stack.worker_env())
        # who asks (dag.test runs as DAG_TEST): the simulator's on-call DBA, so its CAB approver may approve
        os.environ["AIRFLOW_VAR_REWIND_IDENTITY__DAG_TEST"] = json.dumps({"email": "dba.oncall@example.com", "amr": ["pwd", "otp"]})
        runner = stack.runner(line_logger=lambda _line: None)
        pgbackrest = stack.pgbackrest()
        cli = [sys.executable, "-m", "rewind.cli", "--inventory", str(stack.inventory_path)]
        env = {**os.environ, **stack.worker_env()}

        _, seconds = timed(
            "load",
            lambda: stack.psql(
                "create table ledger_entry (id bigint primary key, amount numeric(12,2) not null, status text not null); "
                f"insert into ledger_entry select g, (g % 1000) * 1.25, 'posted' from generate_series(1, {args.rows}) g"
            ),
        )
        size = stack.psql("select pg_size_pretty(pg_total_relation_size('ledger_entry'))")
        say(f"ledger_entry: {args.rows:,} rows, {size}, loaded in {seconds:.0f} s")
        result, seconds = timed("backup", lambda: pgbackrest.backup("full", annotations={"airflow_run_id": "story-10m"}))
        backup_size = re.search(r"full backup size = ([^,]+)", result.output)
        label = re.search(r"new backup label = (\S+)", result.output).group(1)
        say(f"full backup: {seconds:.0f} s ({backup_size.group(1) if backup_size else '?'})")

        window_start = (dt.datetime.now(dt.timezone.utc) - dt.timedelta(seconds=1)).strftime("%Y-%m-%d %H:%M:%S+00")
        time.sleep(1.1)
        before_lsn = stack.psql("select pg_current_wal_lsn()")
        bad, seconds = timed(
            "update",
            lambda: stack.psql(
                "begin; update ledger_entry set status = 'void' where id % 100 >= 6; select pg_current_xact_id(); commit;"
            ).split()[-1],
        )
        void = int(stack.psql("select count(*) from ledger_entry where status = 'void'"))
        wal_mb = float(stack.psql(f"select (pg_current_wal_lsn() - '{before_lsn}'::pg_lsn) / 1048576"))
        say(f"runaway UPDATE (xid {bad}): {void:,} rows voided in {seconds:.0f} s, {wal_mb:,.0f} MB of WAL")
        for batch in range(LEGIT_TRANSACTIONS):
            first = 20_000_000 + batch * 10
            stack.psql(f"insert into ledger_entry select g, 9.99, 'posted' from generate_series({first}, {first + 9}) g")
        _, seconds = timed("archive", lambda: archive_current_wal(runner, stack.cluster, timeout_s=3600, log=lambda _m: None))
        say(f"{LEGIT_TRANSACTIONS} legitimate transactions after it; WAL archived ({seconds:.0f} s to catch up)")

        # ---- the finder -------------------------------------------------------------------------
        finder = run_measured(
            [*cli, "find-target", "--cluster", "demo", "--from", window_start, "--no-wal-switch", "--json", "--max-segments", "1024"],
            env=env,
            output_dir=stack.base,
        )
        assert finder.returncode == 0, finder.stderr[-2000:]
        found = json.loads(finder.stdout)
        say(
            f"finder: {finder.seconds:.0f} s, {found['segments_scanned']} segments, peak {finder.peak_mib:.0f} MiB; "
            f"suspect xid {found['suspect']['xid']} ({'the runaway UPDATE' if str(found['suspect']['xid']) == bad else 'NOT the runaway UPDATE'})"
        )

        # ---- the PITR through the DAG (the approval automatic: not part of what is measured) -----------
        from airflow.dag_processing.dagbag import DagBag

        dag = DagBag(dag_folder=str(REPO / "dags" / "rewind_pitr.py"), safe_mode=False).dags["rewind_pitr__demo"]
        sim.state.auto_approve = True
        conf = {
            "target_type": "xid",
            "target": bad,
            "target_exclusive": True,
            "target_action": "pause",
            "target_timeline": "current",
            "backup_set": None,
            "change_number": None,
            "validation_sql": [{"sql": "select count(*) from ledger_entry where status = 'void'", "expect": 0}],
            "reason": "benchmark: the seed story at its size",
        }
        run, seconds = timed("pitr", lambda: dag.test(run_conf=conf))
        assert run.state == "success", {ti.task_id: ti.state for ti in run.get_task_instances()}
        tis = {ti.task_id: ti for ti in run.get_task_instances()}
        downtime = (tis["stop_restore_promote"].end_date - tis["stop_restore_promote"].start_date).total_seconds()
        approval = (tis["wait_for_approval"].end_date - tis["wait_for_approval"].start_date).total_seconds()
        restored = tis["stop_restore_promote"].xcom_pull(task_ids="stop_restore_promote")
        say(
            f"PITR DAG: {seconds - approval:.0f} s without the approval wait; downtime (stop_restore_promote) {downtime:.0f} s "
            f"(steps {restored.get('timings_s')}); peak of this process so far {vm_hwm_mib():.0f} MiB"
        )
        rows_void = stack.psql("select count(*) || ' rows, ' || count(*) filter (where status = 'void') || ' void' from ledger_entry")
        say(f"after the PITR: {rows_void}")

        # ---- salvage ------------------------------------------------------------------------------
        directory = stack.base / "salvage-10m"
        salvage = run_measured(
            [*cli, "salvage", "--cluster", "demo", "--directory", str(directory), "--bad-xid", bad, "--json"],
            env=env,
            output_dir=stack.base,
        )
        assert salvage.returncode == 0, salvage.stderr[-2000:]
        salvaged = json.loads(salvage.stdout)["tables"].get("public.ledger_entry", {})
        say(f"salvage: {salvage.seconds:.0f} s, peak {salvage.peak_mib:.0f} MiB; {salvaged}")

        # ---- the same restore by hand (the runbook's commands), from the same backup to the same xid --
        cluster = stack.cluster
        started = time.perf_counter()
        runner.run(stop_argv(cluster), timeout=600)
        out = pgbackrest.restore(
            restore_type="xid",
            target=bad,
            target_exclusive=True,
            target_action="promote",
            target_timeline="1",
            backup_set=label,
            delta=True,
        )
        runner.run(start_argv(cluster), timeout=7200)
        while stack.psql("select pg_is_in_recovery()") != "f":
            time.sleep(0.2)
        by_hand = time.perf_counter() - started
        restore_size = re.search(r"restore size = ([^,]+)", out.output)
        say(
            f"by hand (stop, restore --delta, start, replay to the target, promoted): {by_hand:.0f} s; "
            f"restore read {restore_size.group(1) if restore_size else '?'} plus about {wal_mb:,.0f} MB of WAL replayed"
        )
        say(f"ratio PITR DAG downtime / by hand: {downtime / by_hand:.2f}")
    finally:
        sim.stop()
        stack.remove()


if __name__ == "__main__":
    main()
