"""How a clone-mode rewind should fill the clone's directory, measured in one run on one real cluster
that keeps serving (as production does while its clone is built):

    .venv/bin/python bench/clone_seed.py [--scale 20] [--updates 5000] [--rounds 3]

pgbench -i at --scale (20: about 320 MB), a full backup, then --updates single-row updates spread
over pgbench_accounts: the database a rewind finds. PostgreSQL stays up. Rounds alternate:

  empty        `pgbackrest restore --pg1-path=<clone>` into an empty sibling of the data directory
               (what Rewind's clone mode does)
  copy+delta   `cp -a --reflink=auto <data_dir> <clone>` of the running data directory, then
               `restore --delta` into it: every file's checksum compared with the manifest, what
               differs fetched (the copy of a running cluster is torn; --delta makes it the backup)

Both with the page cache dropped first. For each: wall time (the copy's and the delta's apart), and
the result compared file by file with the empty restore's (SHA-256): they must be identical. The
file system says whether the copy could share blocks (reflink: XFS, btrfs) or had to write them all.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

from _airflow_env import setup
from restore_delta import drop_caches, tree_digest


def reflink_supported(directory: Path) -> bool:
    """Whether `cp --reflink=always` works on this file system (else --reflink=auto copies every block)."""
    probe, copy = directory / ".reflink-probe", directory / ".reflink-probe.copy"
    probe.write_bytes(b"x" * 4096)
    try:
        return subprocess.run(["cp", "--reflink=always", str(probe), str(copy)], capture_output=True, timeout=30).returncode == 0
    finally:
        probe.unlink(missing_ok=True)
        copy.unlink(missing_ok=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scale", type=int, default=20)
    parser.add_argument("--updates", type=int, default=5000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    setup()

    from devstack.demo import PG_BIN, DemoStack

    stack = DemoStack(Path(tempfile.mkdtemp(prefix="rewind-bench-", dir="/tmp"))).start()
    try:
        runner = stack.runner(line_logger=lambda _line: None)
        pgbackrest = stack.pgbackrest()
        runner.run(
            [str(PG_BIN / "pgbench"), "-i", "-q", "-s", str(args.scale), "-h", str(stack.pg_home), "-p", str(stack.pg_port), "postgres"],
            timeout=3600,
            log_stdout=False,
        )
        size = stack.psql("select pg_size_pretty(pg_database_size('postgres'))")
        pgbackrest.backup("full", annotations={"bench": "clone-seed"})
        label = pgbackrest.info().latest().label
        every = max(1, args.scale * 100_000 // args.updates)
        stack.psql(f"update pgbench_accounts set abalance = abalance + 1 where aid % {every} = 0")
        data = stack.data_dir
        clone = data.with_name(f"{data.name}.rewind-clone-bench")
        owner = data.stat()
        reflink = reflink_supported(data.parent)
        print(
            f"pgbench scale {args.scale} ({size}), production running; reflink on {data.parent}: {'yes' if reflink else 'no'}", flush=True
        )

        def restore(*, delta: bool) -> float:
            argv = pgbackrest.commands.restore(backup_set=label, delta=delta, pg_path=str(clone), archive_mode="off")
            started = time.perf_counter()
            pgbackrest.run(argv, timeout=3600, log_stdout=False)
            return time.perf_counter() - started

        def empty() -> dict:
            shutil.rmtree(clone, ignore_errors=True)
            clone.mkdir(mode=0o700)
            os.chown(clone, owner.st_uid, owner.st_gid)
            drop_caches()
            return {"restore": restore(delta=False)}

        def copy_then_delta() -> dict:
            shutil.rmtree(clone, ignore_errors=True)
            drop_caches()
            started = time.perf_counter()
            subprocess.run(["cp", "-a", "--reflink=auto", str(data), str(clone)], check=True, timeout=3600)
            copied = time.perf_counter() - started
            (clone / "postmaster.pid").unlink(missing_ok=True)  # the copy of a running cluster's
            return {"copy": copied, "restore": restore(delta=True)}

        reference = None
        timings: dict[str, list[float]] = {"empty": [], "copy+delta": []}
        for number in range(args.rounds):
            for name, seed in (
                (("empty", empty), ("copy+delta", copy_then_delta))
                if number % 2 == 0
                else (
                    ("copy+delta", copy_then_delta),
                    ("empty", empty),
                )
            ):
                parts = seed()
                digest = tree_digest(clone)
                reference = reference or digest
                assert digest == reference, f"{name}: the clone differs from the empty restore's"
                total = sum(parts.values())
                timings[name].append(total)
                print(f"round {number + 1} {name}: {total:.1f} s ({', '.join(f'{k} {v:.1f} s' for k, v in parts.items())})", flush=True)
        shutil.rmtree(clone, ignore_errors=True)
        median = {name: statistics.median(values) for name, values in timings.items()}
        print(
            f"median: empty {median['empty']:.1f} s, copy+delta {median['copy+delta']:.1f} s; "
            f"copy+delta / empty = {median['copy+delta'] / median['empty']:.2f} (identical results in every round)"
        )
    finally:
        stack.stop()


if __name__ == "__main__":
    main()
