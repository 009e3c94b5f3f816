"""The rehearsal's one touch of production: the mark it restores to, and the rows it must find there.

For a `latest` target the declared tables are counted and a restore point is created as one
moment, without holding writers back for the length of the count:

    BEGIN ISOLATION LEVEL REPEATABLE READ;
    SAVEPOINT rewind_mark;
    SET LOCAL lock_timeout = '2000ms';
    LOCK TABLE <declared tables> IN SHARE MODE;    -- waits for their writers, keeps new ones out
    SELECT pg_create_restore_point('rewind-rehearsal-...');   -- the transaction's snapshot is taken here
    ROLLBACK TO SAVEPOINT rewind_mark;              -- the lock is gone, the snapshot stays
    SELECT count(*) ...;                            -- production's rows at the restore point
    COMMIT;

LOCK TABLE takes no snapshot, so the snapshot is taken after every earlier writer of the tables has
committed and before any later one may write: the rows it sees are those the restore point leaves
in WAL. Writers of the declared tables wait at most for the restore point's one WAL record (or
lock_timeout, after which the mark is tried again). Then the WAL is switched and archived, so the
restore point is in the repository. The counts run on production inside that snapshot (a read of
each declared table, holding back vacuum for as long).

A time target needs no restore point; production's counts now are recorded for the report only.
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

from rewind.errors import PreflightError, RewindError
from rewind.inventory import Cluster
from rewind.pgbackrest.info import Backup, StanzaInfo
from rewind.pitr.plan import on_history
from rewind.pitr.recovery import archive_current_wal
from rewind.postgres import live_timeline, psql_argv, run_sql
from rewind.rehearsal.request import RehearsalRefused, RehearsalRequest
from rewind.runner import CommandFailed, CommandRunner
from rewind.wal import TimelineHistory, lsn_value

LOCK_TIMEOUT_MS = 2000
LOCK_TRIES = 5
RESTORE_POINT_PREFIX = "rewind-rehearsal-"


class ProductionBusy(RewindError):
    """Production's writers kept the declared tables locked on every try: nothing was marked."""


def quoted_table(name: str) -> str:
    """schema.table (validated by the inventory: letters, digits, _ and $) as a quoted identifier."""
    schema, table = name.split(".")
    return f'"{schema}"."{table}"'


def restore_point_name(now: dt.datetime) -> str:
    """Unique per mark (a retry makes a new one: recovery stops at the first point of a name)."""
    return RESTORE_POINT_PREFIX + now.astimezone(dt.timezone.utc).strftime("%Y%m%dT%H%M%S.%fZ")


def counts_sql(tables: list[str]) -> str:
    return "select concat_ws(' ', " + ", ".join(f"(select count(*) from {quoted_table(t)})" for t in tables) + ")"


def parse_counts(tables: list[str], line: str) -> dict[str, int]:
    values = line.split()
    if len(values) != len(tables):
        raise RewindError(f"row counts: expected {len(tables)} numbers, got {line!r}")
    return {table: int(value) for table, value in zip(tables, values, strict=True)}


def missing_tables(runner: CommandRunner, cluster: Cluster) -> list[str]:
    """Declared tables production does not have (a typo in rehearsal.tables)."""
    tables = list(cluster.rehearsal.tables)
    if not tables:
        return []
    literals = ", ".join(f"'{quoted_table(t)}'" for t in tables)
    sql = f"select coalesce(string_agg(t, ' ' order by t), '') from unnest(array[{literals}]) t where to_regclass(t) is null"
    missing = run_sql(runner, cluster, sql, database=cluster.rehearsal_database).split()
    return [t for t in tables if quoted_table(t) in missing]


@dataclass(frozen=True)
class Mark:
    """What the copy is restored to and must hold."""

    marked_at: str
    timeline: int
    restore_point: str | None  # latest: the name recovery stops at
    restore_point_lsn: str | None
    counts: dict[str, int]  # production's rows: at the restore point (latest), or now (time: for the report)
    wal_segment: str | None  # the segment switched and archived after the mark

    def as_dict(self) -> dict:
        return asdict(self)


def mark_statements(tables: list[str], restore_point: str | None) -> list[str]:
    statements = ["BEGIN ISOLATION LEVEL REPEATABLE READ"]
    if restore_point:
        statements += ["SAVEPOINT rewind_mark", f"SET LOCAL lock_timeout = '{LOCK_TIMEOUT_MS}ms'"]
        if tables:
            statements.append(f"LOCK TABLE {', '.join(quoted_table(t) for t in tables)} IN SHARE MODE")
        statements += [f"select pg_create_restore_point('{restore_point}')", "ROLLBACK TO SAVEPOINT rewind_mark"]
    if tables:
        statements.append(counts_sql(tables))
    return [*statements, "COMMIT"]


def _script_argv(cluster: Cluster, statements: list[str], database: str) -> list[str]:
    """psql with one -c per statement, all in one session (each statement's result on its own lines)."""
    argv = psql_argv(cluster, statements[0], database=database)
    for statement in statements[1:]:
        argv += ["-c", statement]
    return argv


def mark_production(
    runner: CommandRunner,
    cluster: Cluster,
    request: RehearsalRequest,
    *,
    now: Callable[[], dt.datetime] = lambda: dt.datetime.now(dt.timezone.utc),
    archive_timeout_s: float = 300,
    lock_pause_s: float = 1.0,
    log: Callable[[str], None] = print,
) -> Mark:
    if run_sql(runner, cluster, "select pg_is_in_recovery()") == "t":
        raise PreflightError(f"PostgreSQL of {cluster.name} is in recovery: the rehearsal marks the primary (is this a standby?)")
    tables = list(cluster.rehearsal.tables)
    database = cluster.rehearsal_database
    timeline = live_timeline(runner, cluster)
    for attempt in range(1, LOCK_TRIES + 1):
        marked_at = now()
        name = restore_point_name(marked_at) if request.target == "latest" else None
        argv = _script_argv(cluster, mark_statements(tables, name), database)
        try:
            lines = runner.run(argv, timeout=cluster.rehearsal.check_timeout_s, log_stdout=False).stdout.splitlines()
            break
        except CommandFailed as exc:
            if "lock timeout" not in str(exc) or attempt == LOCK_TRIES:
                if "lock timeout" in str(exc):
                    raise ProductionBusy(
                        f"writers of {', '.join(tables)} on {cluster.name} held them longer than {LOCK_TIMEOUT_MS} ms on "
                        f"{LOCK_TRIES} tries: no restore point was made; run the rehearsal again at a quieter time"
                    ) from None
                raise
            log(f"the declared tables are busy (try {attempt} of {LOCK_TRIES}): {exc}")
            time.sleep(lock_pause_s)
    lines = [line for line in lines if line.strip()]
    lsn = lines.pop(0).strip() if name else None
    counts = parse_counts(tables, lines.pop(0)) if tables else {}
    if name:
        log(f"restore point {name} at {lsn} on timeline {timeline}; production's rows there: {counts or 'no tables declared'}")
    else:
        log(f"production's rows now (for the report): {counts or 'no tables declared'}")
    segment = archive_current_wal(runner, cluster, timeout_s=archive_timeout_s, log=log)
    return Mark(marked_at.isoformat(), timeline, name, lsn, counts, segment)


def choose_backup(info: StanzaInfo, history: TimelineHistory, mark: Mark, request: RehearsalRequest) -> Backup:
    """The newest valid backup on the timeline's history that ended before the target."""
    usable = [b for b in info.backups if on_history(b, history)]
    if not usable:
        raise PreflightError(f"stanza {info.name!r} has no valid backup on timeline {history.timeline}'s history: nothing to rehearse")
    if request.target == "latest":
        candidates = [b for b in usable if lsn_value(b.lsn.stop) <= lsn_value(mark.restore_point_lsn)]
    else:
        candidates = [b for b in usable if b.stopped_at < request.target_time]
    if not candidates:
        oldest = usable[0]
        raise RehearsalRefused(
            f"param target: {request.describe()} is before the oldest usable backup ({oldest.label} ended "
            f"{oldest.stopped_at:%Y-%m-%d %H:%M:%S} UTC): it cannot be restored"
        )
    return candidates[-1]
