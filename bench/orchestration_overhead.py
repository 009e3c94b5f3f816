"""Orchestration overhead of the incr backup DAG, measured in one run on one real cluster.

    .venv/bin/python bench/orchestration_overhead.py [--rounds 3]

Prints the wall time of `dag.test()` of rewind_backup_incr__demo (preflight + backup + expire,
task start-up included) and of a bare `pgbackrest --type=incr backup` on the same cluster, with
the same small change written before each, and their ratio. Rounds alternate the two so drift
in the machine affects both alike.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

from _airflow_env import REPO, setup


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    setup(migrate=True)

    from devstack.demo import DemoStack

    stack = DemoStack(Path(tempfile.mkdtemp(prefix="rewind-bench-", dir="/tmp"))).start()
    try:
        os.environ["REWIND_INVENTORY"] = str(stack.inventory_path)
        os.environ.update(stack.worker_env())
        stack.psql("create table t (i int, pad text)")
        stack.psql("insert into t select g, repeat('x', 200) from generate_series(1, 200000) g")
        pgbackrest = stack.pgbackrest()
        pgbackrest.backup("full", annotations={})

        from airflow.dag_processing.dagbag import DagBag

        dag = DagBag(dag_folder=str(REPO / "dags" / "rewind_backup.py"), safe_mode=False).dags["rewind_backup_incr__demo"]
        dag_times, bare_times = [], []
        for round_ in range(args.rounds):
            stack.psql(f"update t set pad = repeat('y', 200) where i % 50 = {round_}")
            started = time.perf_counter()
            run = dag.test()
            dag_times.append(time.perf_counter() - started)
            assert run.state == "success", run.state

            stack.psql(f"update t set pad = repeat('z', 200) where i % 50 = {round_ + 25}")
            started = time.perf_counter()
            pgbackrest.run(pgbackrest.commands.backup("incr"))
            bare_times.append(time.perf_counter() - started)
        dag_s, bare_s = statistics.median(dag_times), statistics.median(bare_times)
        print(f"rounds: {args.rounds}   pgBackRest {'.'.join(map(str, pgbackrest.version()))}")
        print(f"incr DAG (dag.test, preflight+backup+expire): median {dag_s:.2f} s  {[round(t, 2) for t in dag_times]}")
        print(f"bare pgbackrest --type=incr backup:          median {bare_s:.2f} s  {[round(t, 2) for t in bare_times]}")
        print(f"overhead ratio DAG/bare: {dag_s / bare_s:.2f}")
    finally:
        stack.remove()


if __name__ == "__main__":
    main()
