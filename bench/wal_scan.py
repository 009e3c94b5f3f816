"""Preflight's search for an xid or restore-point target in archived WAL, measured in one run on
one real cluster: how many segments it reads and how long each takes.

    .venv/bin/python bench/wal_scan.py [--wal-mb 400]

After a full backup the demo cluster writes about --wal-mb MB of WAL (a table of wide rows) with
three marks: a transaction and a restore point just after the backup (the oldest the search can be
asked for: it must read back through everything), and a transaction near the end (the usual case:
the bad transaction was recent). For each, the target is located as preflight does
(rewind.pitr.plan.make_plan: archive listing, timeline, pg_waldump over archive-get), then the
re-plan the stop does after the approval wait is timed too, with one more segment archived
meanwhile. Prints, per search: segments read, seconds, seconds per segment.
"""

from __future__ import annotations

import argparse
import re
import tempfile
import time
from pathlib import Path

from _airflow_env import setup


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--wal-mb", type=int, default=400)
    args = parser.parse_args()
    setup()

    from devstack.demo import DemoStack
    from rewind.pitr.plan import make_plan
    from rewind.pitr.preflight import replan
    from rewind.pitr.recovery import archive_current_wal
    from rewind.pitr.request import parse_request

    stack = DemoStack(Path(tempfile.mkdtemp(prefix="rewind-bench-", dir="/tmp"))).start()
    try:
        runner = stack.runner(line_logger=lambda _line: None)
        pgbackrest = stack.pgbackrest()
        stack.psql("create table ledger_entry (id bigint primary key, status text not null, pad text not null)")
        stack.psql("insert into ledger_entry select g, 'posted', repeat('x', 200) from generate_series(1, 10000) g")
        pgbackrest.backup("full", annotations={})
        start_lsn = stack.psql("select pg_current_wal_lsn()")

        def transaction() -> str:
            return stack.psql("begin; update ledger_entry set status = 'void' where id = 1; select pg_current_xact_id(); commit;").split()[
                -1
            ]

        old_xid = transaction()
        stack.psql("select pg_create_restore_point('before-migration-42')")
        rows_per_mb = 1800  # rows of ~500 bytes: about 1 MB of WAL each
        for chunk in range(max(1, args.wal_mb // 50)):
            stack.psql(
                f"insert into ledger_entry select {(chunk + 1) * 1_000_000} + g, 'posted', repeat(md5(g::text), 16) "
                f"from generate_series(1, {rows_per_mb * 50}) g"
            )
        recent_xid = transaction()
        archive_current_wal(runner, stack.cluster, log=lambda _m: None)
        wal_mb = int(float(stack.psql(f"select (pg_current_wal_lsn() - '{start_lsn}'::pg_lsn) / 1048576")))
        version = ".".join(map(str, pgbackrest.version()))
        print(
            f"{wal_mb} MB of WAL archived after the backup; pgBackRest {version}; process-max {stack.cluster.pgbackrest.process_max}",
            flush=True,
        )

        def scanned(lines: list[str]) -> tuple[int, float]:
            segments = seconds = 0.0
            for line in lines:
                if match := re.match(r"scanned (\d+) archived WAL segment\(s\) in ([\d.]+)s", line):
                    segments += int(match.group(1))
                    seconds += float(match.group(2))
            return int(segments), seconds

        cases = [
            ("xid just after the backup", {"target_type": "xid", "target": old_xid}),
            ("restore point just after the backup", {"target_type": "name", "target": "before-migration-42"}),
            ("xid near the end (recent)", {"target_type": "xid", "target": recent_xid}),
        ]
        plans = {}
        for title, params in cases:
            request = parse_request({**params, "target_timeline": "1", "reason": "benchmark of the WAL search"})
            lines: list[str] = []
            started = time.perf_counter()
            plans[title] = (
                request,
                make_plan(pgbackrest, request, pgbackrest.info(), cluster_timeline=1, in_use_bytes=0, log=lines.append),
            )
            took = time.perf_counter() - started
            segments, seconds = scanned(lines)
            print(
                f"preflight, {title}: {segments} segments read in {seconds:.1f} s ({seconds / max(segments, 1):.2f} s per segment; plan {took:.1f} s)",
                flush=True,
            )
        stack.psql("insert into ledger_entry select 30000000 + g, 'posted', repeat(md5(g::text), 16) from generate_series(1, 20000) g")
        archive_current_wal(runner, stack.cluster, log=lambda _m: None)  # archived during the approval wait
        for title, (request, plan) in plans.items():
            lines = []
            started = time.perf_counter()
            replan(pgbackrest, request, plan, runner=runner, log=lines.append)
            took = time.perf_counter() - started
            segments, seconds = scanned(lines)
            print(f"re-plan at the stop, {title}: {segments} segments read in {seconds:.1f} s (re-plan {took:.1f} s)", flush=True)
    finally:
        stack.remove()


if __name__ == "__main__":
    main()
