"""The target finder's WAL scan at 1, 16 and 256 archived segments: time and peak memory, in one run.

    .venv/bin/python bench/finder_scan.py [--segments 256]

The demo cluster writes WAL the way that makes pg_waldump print the most: small records (single-row
HOT updates of a narrow table, hundreds of thousands per 16 MiB segment, about 45 MB of text each).
Then `rewind find-target` (the CLI: the finder DAG's code, in its own process) reads the newest 1, 16
and 256 segments (max_segments caps a window that starts before them all). Its peak memory is its own
high-water RSS plus its children's (pg_waldump, archive-get), sampled every 50 ms
(devstack/peak_memory.py). Prints, per size: segments read, seconds, seconds per segment, peak MiB,
and the ratios of the largest to the smallest: time should grow with the segments, memory not.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import sys
import tempfile
from pathlib import Path

from _airflow_env import setup


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--segments", type=int, default=256, help="the largest scan (default 256)")
    args = parser.parse_args()
    setup()

    from devstack.demo import DemoStack
    from devstack.peak_memory import run_measured
    from rewind.pitr.recovery import archive_current_wal

    stack = DemoStack(Path(tempfile.mkdtemp(prefix="rewind-bench-", dir="/tmp"))).start()
    try:
        runner = stack.runner(line_logger=lambda _line: None)
        stack.psql("create table counter (id int primary key, n bigint not null) with (fillfactor = 50)")
        stack.psql("insert into counter select g, 0 from generate_series(1, 200000) g")
        stack.pgbackrest().backup("full", annotations={})
        window_start = (dt.datetime.now(dt.timezone.utc) - dt.timedelta(seconds=1)).strftime("%Y-%m-%d %H:%M:%S+00")
        start_lsn = stack.psql("select pg_current_wal_lsn()")
        target_mb = (args.segments + 2) * 16
        while float(stack.psql(f"select (pg_current_wal_lsn() - '{start_lsn}'::pg_lsn) / 1048576")) < target_mb:
            # one statement, 200,000 row versions: small WAL records, many per segment
            stack.psql("update counter set n = n + 1")
        archive_current_wal(runner, stack.cluster, log=lambda _m: None)
        wal_mb = float(stack.psql(f"select (pg_current_wal_lsn() - '{start_lsn}'::pg_lsn) / 1048576"))
        print(f"{wal_mb:.0f} MB of WAL archived after the backup, in single-row update records", flush=True)

        results = {}
        for size in sorted({1, 16, args.segments}):
            argv = [sys.executable, "-m", "rewind.cli", "--inventory", str(stack.inventory_path), "find-target", "--cluster", "demo"]
            argv += ["--from", window_start, "--max-segments", str(size), "--no-wal-switch", "--json"]
            measured = run_measured(argv, env={**os.environ, **stack.worker_env()}, output_dir=stack.base)
            if measured.returncode != 0:
                raise SystemExit(f"find-target --max-segments {size} failed: {measured.stderr[-2000:]}")
            found = json.loads(measured.stdout)
            read = found["segments_scanned"]
            results[size] = (measured.seconds, measured.peak_mib)
            print(
                f"{read} segment(s): {measured.seconds:.1f} s ({measured.seconds / max(read, 1):.2f} s per segment), "
                f"peak {measured.peak_mib:.0f} MiB; {found['transactions_total']} transactions; capped: {found['capped']}",
                flush=True,
            )
        small, large = results[1], results[max(results)]
        print(
            f"ratios {max(results)} vs 1 segment: time x{large[0] / small[0]:.1f}, peak memory x{large[1] / small[1]:.2f}",
            flush=True,
        )
    finally:
        stack.remove()


if __name__ == "__main__":
    main()
