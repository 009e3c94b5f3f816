"""What the rehearsal proves on the scratch copy, each as an argv with a timeout, its output bounded:

  row counts     the declared tables, counted on the copy
  pg_amcheck     --heapallindexed on every database (PostgreSQL 14+; bt_index_check(index, true) on
                 every valid B-tree index before that): every heap tuple must be found in each
                 index, which a damaged index page with a valid checksum does not survive
  pg_dump        every database to /dev/null: every row of every table reads back
  pg_checksums   --check on the stopped copy, when the cluster has data checksums
  archive        the promoted copy's timeline left nothing in the repository (--archive-mode=off)

`pgbackrest verify` proves the repository's files are the ones written; these prove what was
written is a database.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

from rewind.credentials import bounded
from rewind.inventory import Cluster
from rewind.postgres import psql_argv
from rewind.rehearsal.production import counts_sql, parse_counts
from rewind.runner import CommandRunner
from rewind.scratch import ScratchCluster
from rewind.wal import ArchiveListing, segment_name

OUTPUT_CHARS = 1500  # what one check's output may put into the evidence (XCom, change, incident)
AMCHECK_SQL = (
    "select count(bt_index_check(c.oid, true)) from pg_index i join pg_class c on c.oid = i.indexrelid "
    "join pg_am a on a.oid = c.relam where a.amname = 'btree' and i.indisvalid and c.relpersistence <> 't'"
)


@dataclass(frozen=True)
class CheckResult:
    name: str
    ok: bool
    summary: str
    output: str = ""
    seconds: float = 0.0

    def as_dict(self) -> dict:
        return asdict(self)


def conninfo(database: str) -> str:
    """A database name from the copy's catalog as a libpq conninfo: a name holding '=' or starting
    with postgresql:// would otherwise be read as one."""
    return "dbname='" + database.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _connection(scratch: ScratchCluster) -> list[str]:
    return ["-h", str(scratch.socket_dir), "-p", str(scratch.port)]


def amcheck_argv(scratch: ScratchCluster) -> list[str]:
    return [str(scratch.bin_dir / "pg_amcheck"), *_connection(scratch), "--all", "--heapallindexed", "--install-missing"]


def bt_index_check_argv(scratch: ScratchCluster, database: str) -> list[str]:
    """Before PostgreSQL 14 (no pg_amcheck): every valid B-tree index of one database."""
    argv = psql_argv(scratch.cluster, "create extension if not exists amcheck", database=database)
    argv[argv.index("-d") + 1] = conninfo(database)
    return [*argv, "-c", AMCHECK_SQL]


def dump_argv(scratch: ScratchCluster, database: str) -> list[str]:
    return [str(scratch.bin_dir / "pg_dump"), *_connection(scratch), "-d", conninfo(database), "-f", "/dev/null"]


def checksums_argv(scratch: ScratchCluster) -> list[str]:
    return [str(scratch.bin_dir / "pg_checksums"), "--check", "-D", str(scratch.data_dir)]


def controldata(runner: CommandRunner, scratch: ScratchCluster) -> dict[str, str]:
    result = runner.run([str(scratch.bin_dir / "pg_controldata"), "-D", str(scratch.data_dir)], timeout=60, log_stdout=False)
    return {key.strip(): value.strip() for key, _, value in (line.partition(":") for line in result.stdout.splitlines()) if value}


def _run(runner: CommandRunner, name: str, argv: list[str], *, timeout: float, ok_text: str) -> CheckResult:
    started = time.monotonic()
    result = runner.run(argv, timeout=timeout, check=False, log_stdout=True)
    seconds = time.monotonic() - started
    output = bounded(result.output.strip(), OUTPUT_CHARS)
    if result.returncode == 0:
        return CheckResult(name, True, ok_text, output, seconds)
    lines = [line.strip() for line in result.output.splitlines() if line.strip()]
    first = next((line for line in lines if "ERROR" in line or "error" in line or "FATAL" in line), lines[0] if lines else "no output")
    return CheckResult(name, False, f"exit {result.returncode}: {bounded(first, 300)}", output, seconds)


def databases(scratch: ScratchCluster) -> list[str]:
    out = scratch.psql("select datname from pg_database where datallowconn order by datname")
    return [line for line in out.splitlines() if line]


def count_rows(scratch: ScratchCluster, cluster: Cluster, *, timeout: float) -> dict[str, int]:
    tables = list(cluster.rehearsal.tables)
    if not tables:
        return {}
    return parse_counts(tables, scratch.psql(counts_sql(tables), database=cluster.rehearsal_database, timeout=timeout))


def check_running_copy(
    scratch: ScratchCluster, runner: CommandRunner, cluster: Cluster, *, log: Callable[[str], None] = print
) -> list[CheckResult]:
    """The checks that need the copy up: amcheck and a dump of every database."""
    timeout = cluster.rehearsal.check_timeout_s
    names = databases(scratch)
    results = []
    if cluster.postgres.version >= 14:
        results.append(
            _run(runner, "pg_amcheck", amcheck_argv(scratch), timeout=timeout, ok_text=f"no corruption in {len(names)} databases")
        )
    else:
        for name in names:
            results.append(
                _run(
                    runner,
                    f"bt_index_check {name}",
                    bt_index_check_argv(scratch, name),
                    timeout=timeout,
                    ok_text="indexes match their tables",
                )
            )
    for name in names:
        results.append(_run(runner, f"pg_dump {name}", dump_argv(scratch, name), timeout=timeout, ok_text="every table reads back"))
    for result in results:
        log(f"{result.name}: {'ok' if result.ok else 'FAILED'}: {result.summary} ({result.seconds:.1f}s)")
    return results


def check_stopped_copy(scratch: ScratchCluster, runner: CommandRunner, cluster: Cluster) -> tuple[CheckResult, int]:
    """pg_checksums on the cleanly stopped copy; also returns the copy's timeline (from pg_control)."""
    control = controldata(runner, scratch)
    timeline = int(control.get("Latest checkpoint's TimeLineID", "0"))
    if control.get("Database cluster state") != "shut down":
        return CheckResult("pg_checksums", False, f"the copy is not cleanly shut down ({control.get('Database cluster state')})"), timeline
    if control.get("Data page checksum version", "0") == "0":
        return CheckResult("pg_checksums", True, "skipped: the cluster has no data checksums (initdb --data-checksums)"), timeline
    return _run(
        runner, "pg_checksums", checksums_argv(scratch), timeout=cluster.rehearsal.check_timeout_s, ok_text="every page checksum is valid"
    ), timeline


def archive_untouched(listing: ArchiveListing, timeline: int, production_timeline: int) -> CheckResult:
    """The copy was promoted onto its own timeline; with --archive-mode=off none of it may be in
    the repository (its history file or any segment)."""
    if timeline <= production_timeline:
        return CheckResult("archive untouched", False, f"the copy is on timeline {timeline}, not past production's {production_timeline}")
    leaked = [f"{timeline:08X}.history"] if timeline in listing.histories else []
    leaked += [segment_name(timeline, segno) for segno, by_tli in sorted(listing.segments.items()) if timeline in by_tli]
    if leaked:
        return CheckResult("archive untouched", False, f"the copy archived into the repository: {', '.join(leaked[:5])}")
    return CheckResult("archive untouched", True, f"nothing of the copy's timeline {timeline} in the repository")


def compare_counts(production: dict[str, int], scratch: dict[str, int], *, exact: bool) -> CheckResult:
    if not production and not scratch:
        return CheckResult("row counts", True, "no tables declared (rehearsal.tables)")
    rows = ", ".join(f"{t} {production.get(t, '?')}/{scratch.get(t, '?')}" for t in sorted(set(production) | set(scratch)))
    if not exact:
        return CheckResult("row counts", True, f"reported, not compared (a time target: production now / the copy at the target): {rows}")
    differ = [t for t in sorted(set(production) | set(scratch)) if production.get(t) != scratch.get(t)]
    if differ:
        return CheckResult(
            "row counts",
            False,
            "differ from production at the restore point: "
            + ", ".join(f"{t} production {production.get(t)}, copy {scratch.get(t)}" for t in differ),
        )
    return CheckResult("row counts", True, f"equal to production at the restore point (production/copy): {rows}")


def describe(results: list[CheckResult]) -> str:
    return "; ".join(f"{r.name}: {'ok' if r.ok else 'FAILED'} ({r.summary})" for r in results)
