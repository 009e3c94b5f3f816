"""What a rewind's restore reads and how long it takes, by pgBackRest restore mode, measured in one run
on one real cluster: a pgbench database, 5000 updates spread over it after the backup.

    .venv/bin/python bench/restore_delta.py [--scale 70] [--updates 5000]

pgbench -i at --scale (70: about 1.1 GB), a full backup, and (where pgBackRest has it) a second full
backup with block incremental (repo-block, with the bundling Rewind always configures; beta in
2.45, so --beta there). Then --updates single-row updates spread evenly over pgbench_accounts,
a checkpoint and a fast stop: the data directory a rewind finds. It is kept aside (cp -a, times
kept) and put back before each restore, with the page cache dropped, so each mode starts alike:

  full            into an emptied directory (what Rewind did not do: it keeps the files it can)
  delta           --delta: every file's SHA-1 compared with the manifest; what differs is fetched whole
  delta-force     --delta --force: size and modification time only (pgBackRest also requires the
                  file to predate the backup's copy start); what differs is fetched whole
  block-delta     --delta from the block incremental backup: checksums as delta, then only the
                  changed blocks of a changed file are fetched
  block-full      the block incremental backup into an emptied directory, for reference

For each: wall time, files and bytes pgBackRest restored (its detail log), and bytes and GET
requests that crossed the S3 endpoint (the TLS front's /proc io and moto's request log). Every
mode's result is compared file by file with the full restore's (SHA-256): all must be identical.
Then the risk of delta-force is shown: one byte of an unchanged file is changed with its size and
time kept (bit rot, or a copy that preserved times); --delta repairs it, --delta --force keeps it.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import re
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from _airflow_env import setup

UNITS = {"B": 1, "KB": 2**10, "MB": 2**20, "GB": 2**30, "TB": 2**40}


def tree_digest(root: Path) -> dict[str, str]:
    """SHA-256 of every regular file under root, by relative path (what recovery will read)."""
    digests = {}
    for path in sorted(root.rglob("*")):
        if path.is_file() and not path.is_symlink():
            relative = str(path.relative_to(root))
            if relative.startswith(("pg_wal/", "log/")) or relative in ("postmaster.opts",):
                continue
            digest = hashlib.sha256()
            with open(path, "rb") as handle:
                for block in iter(lambda: handle.read(1 << 20), b""):
                    digest.update(block)
            digests[relative] = digest.hexdigest()
    return digests


def drop_caches() -> bool:
    try:
        os.sync()
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
        return True
    except OSError:
        return False


def io_bytes(pid: int) -> int:
    """Bytes a process has read (rchar): for the TLS front, what it relayed from moto, plus requests."""
    for line in Path(f"/proc/{pid}/io").read_text().splitlines():
        if line.startswith("rchar:"):
            return int(line.split()[1])
    return 0


def human(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GB"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scale", type=int, default=70)
    parser.add_argument("--updates", type=int, default=5000)
    args = parser.parse_args()
    setup()

    from devstack.demo import PG_BIN, DemoStack

    stack = DemoStack(Path(tempfile.mkdtemp(prefix="rewind-bench-", dir="/tmp"))).start()
    try:
        cluster = stack.cluster
        runner = stack.runner(line_logger=lambda _line: None)
        pgbackrest = stack.pgbackrest()
        version = pgbackrest.version()
        block_help = subprocess.run(
            [cluster.pgbackrest.bin, "help", "backup", "repo-block"], capture_output=True, text=True, timeout=60
        ).stdout
        block_supported = "Enable block incremental backup" in block_help
        block_beta = "FOR BETA TESTING ONLY" in block_help
        runner.run(
            [str(PG_BIN / "pgbench"), "-i", "-q", "-s", str(args.scale), "-h", str(stack.pg_home), "-p", str(stack.pg_port), "postgres"],
            timeout=3600,
            log_stdout=False,
        )
        size = stack.psql("select pg_size_pretty(pg_database_size('postgres'))")
        started = time.perf_counter()
        pgbackrest.backup("full", annotations={"bench": "plain"})
        plain_s = time.perf_counter() - started
        plain = pgbackrest.info().latest()
        block = None
        if block_supported:
            argv = pgbackrest.commands.backup("full", annotations={"bench": "block"})
            argv[-1:-1] = [*(["--beta"] if block_beta else []), "--repo1-block"]
            started = time.perf_counter()
            pgbackrest.run(argv, timeout=cluster.pgbackrest.backup_timeout_s)
            block_s = time.perf_counter() - started
            block = pgbackrest.info().latest()
        print(
            f"pgbench scale {args.scale} ({size}); pgBackRest {'.'.join(map(str, version))}; repo-block "
            f"{'beta (--beta needed)' if block_beta else 'supported' if block_supported else 'not available'}; "
            f"full backup {plain_s:.1f} s, {human(plain.info.repository.size or 0)} in the repository"
            + (f"; with repo-block {block_s:.1f} s, {human(block.info.repository.size or 0)}" if block else ""),
            flush=True,
        )

        accounts = args.scale * 100_000
        every = max(1, accounts // args.updates)
        stack.psql(f"update pgbench_accounts set abalance = abalance + 1 where aid % {every} = 0")
        stack.psql("checkpoint")
        stack.stop_postgres()
        data = stack.data_dir
        modified = data.parent / "data.modified"
        subprocess.run(["cp", "-a", str(data), str(modified)], check=True, timeout=1800)

        moto_log = stack.s3.workdir / "moto.log"
        stunnel_pid = stack.s3._stunnel.pid

        def reset(empty: bool, source: Path = modified) -> None:
            """The data directory as the rewind finds it (or empty, owned like it)."""
            if data.exists():
                shutil.rmtree(data)
            if empty:
                data.mkdir(mode=0o700)
                os.chown(data, source.stat().st_uid, source.stat().st_gid)
            else:
                subprocess.run(["cp", "-a", str(source), str(data)], check=True, timeout=1800)

        def restore(label: str, *, delta: bool, force: bool = False) -> dict:
            argv = pgbackrest.commands.restore(backup_set=label, delta=delta)
            argv[-1:-1] = [*(["--force"] if force else []), "--log-level-console=detail"]
            cached = drop_caches()
            log_offset = moto_log.stat().st_size
            relayed = io_bytes(stunnel_pid)
            started = time.perf_counter()
            result = pgbackrest.run(argv, timeout=cluster.pgbackrest.backup_timeout_s, log_stdout=False)
            seconds = time.perf_counter() - started
            relayed = io_bytes(stunnel_pid) - relayed
            with open(moto_log, "rb") as handle:
                handle.seek(log_offset)
                gets = sum(1 for line in handle.read().decode(errors="replace").splitlines() if '"GET ' in line)
            copied = kept = 0
            copied_bytes = 0
            for line in result.output.splitlines():
                if "restore file " not in line:
                    continue
                if "matches backup" in line:
                    kept += 1
                    continue
                copied += 1
                if match := re.search(r"\((\d+(?:\.\d+)?)(B|KB|MB|GB|TB)", line):
                    copied_bytes += float(match.group(1)) * UNITS[match.group(2)]
            return {
                "s": seconds,
                "copied": copied,
                "kept": kept,
                "copied_bytes": copied_bytes,
                "wire": relayed,
                "gets": gets,
                "cold": cached,
            }

        # Each backup's restore into an empty directory is what its delta restores must equal.
        modes = [("full", plain.label, False, False), ("delta", plain.label, True, False), ("delta-force", plain.label, True, True)]
        if block:
            modes += [("block-full", block.label, False, False), ("block-delta", block.label, True, False)]
        results, references = {}, {}
        for name, label, delta, force in modes:
            reset(empty=not delta)
            results[name] = outcome = restore(label, delta=delta, force=force)
            digest = tree_digest(data)
            reference = references.setdefault(label, digest)
            outcome["identical"] = digest == reference
            if not outcome["identical"]:
                outcome["differs"] = sorted(k for k in reference.keys() | digest.keys() if reference.get(k) != digest.get(k))[:5]
            print(
                f"{name:12} {outcome['s']:6.2f} s   restored {outcome['copied']:4d} files ({human(outcome['copied_bytes'])}), kept "
                f"{outcome['kept']:4d}   from S3: {human(outcome['wire'])} in {outcome['gets']} GETs   "
                f"{'same files as a full restore' if outcome['identical'] else 'DIFFERENT FILES FROM A FULL RESTORE: ' + ', '.join(outcome['differs'])}"
                f"{'' if outcome['cold'] else '   (page cache not dropped)'}",
                flush=True,
            )
        base = results["full"]
        for name, outcome in results.items():
            if name != "full":
                print(f"{name} / full: time {outcome['s'] / base['s']:.2f}, bytes from S3 {outcome['wire'] / max(base['wire'], 1):.2f}")

        # The risk of a size/time delta: a file the backup has, unchanged since (older than the
        # backup's copy start), gets one byte changed with its size and time kept.
        reset(empty=False)
        victim = max(
            (p for p in data.glob("base/*/*") if p.is_file() and p.stat().st_mtime < plain.timestamp.start and p.stat().st_size > 8192),
            key=lambda p: p.stat().st_size,
        )
        relative = str(victim.relative_to(data))
        stat = victim.stat()
        with open(victim, "r+b") as handle:
            handle.seek(stat.st_size // 2)
            byte = handle.read(1)
            handle.seek(stat.st_size // 2)
            handle.write(bytes([byte[0] ^ 0xFF]))
        os.utime(victim, ns=(stat.st_atime_ns, stat.st_mtime_ns))
        damaged = data.parent / "data.damaged"
        shutil.rmtree(damaged, ignore_errors=True)
        subprocess.run(["cp", "-a", str(data), str(damaged)], check=True, timeout=1800)
        for name, force in (("delta", False), ("delta-force", True)):
            reset(empty=False, source=damaged)
            restore(plain.label, delta=True, force=force)
            repaired = tree_digest(data).get(relative) == references[plain.label].get(relative)
            print(
                f"one byte of {relative} changed, size and time kept: {name} "
                f"{'restored the backup' if repaired else 'KEPT THE CHANGED FILE (the restore is not the backup)'}",
                flush=True,
            )
        shutil.rmtree(damaged, ignore_errors=True)
        shutil.rmtree(modified, ignore_errors=True)
    finally:
        stack.remove()


if __name__ == "__main__":
    main()
