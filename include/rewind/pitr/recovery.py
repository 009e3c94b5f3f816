"""Live-cluster steps of a PITR around the restore: archive the current WAL before stopping (and
what a stopped cluster left unarchived), check data, describe state. The restore, start, wait for
the target, promote and stop are the restore executor's (rewind.restore)."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from pathlib import Path

from rewind.credentials import bounded, redact
from rewind.errors import RewindError
from rewind.inventory import Cluster
from rewind.pitr.request import DataCheck
from rewind.pitr.results import CheckResult
from rewind.postgres import live_timeline, postmaster_pid, run_check, run_sql
from rewind.restore import RecoveryError
from rewind.runner import CommandFailed, CommandRunner


class DataCheckFailed(RewindError):
    """`results`: every check's (masked, bounded) outcome, for a DBA deciding what to do next."""

    def __init__(self, message: str, results: list[CheckResult] | None = None) -> None:
        super().__init__(message)
        self.results = results or []


def is_running(cluster: Cluster) -> bool:
    return postmaster_pid(cluster) is not None


def archive_current_wal(
    runner: CommandRunner, cluster: Cluster, *, timeout_s: float = 120, log: Callable[[str], None] = print
) -> str | None:
    """Commit a marker, switch WAL and wait until the segment is archived, so every commit up to
    now is in the repository before PostgreSQL stops. Returns the segment, or None when
    PostgreSQL is down or a standby (nothing to switch).

    The marker (an empty transaction given an xid: a COMMIT record stamped now) is there because
    recovery to a time stops at the first commit after it: on a quiet cluster, with no commit
    after the target, recovery would end in "recovery ended before configured recovery target
    was reached" instead of at the target (in place, with PostgreSQL already stopped)."""
    if not is_running(cluster):
        log("PostgreSQL is not running: only WAL already archived can be recovered")
        return None
    if run_sql(runner, cluster, "select pg_is_in_recovery()") == "t":
        log("PostgreSQL is in recovery: no WAL switch")
        return None
    run_sql(runner, cluster, "select pg_current_xact_id()")  # the marker commit (autocommit)
    segment = run_sql(runner, cluster, "select pg_walfile_name(pg_switch_wal())")
    deadline = time.monotonic() + timeout_s
    query = f"select count(*) from pg_ls_archive_statusdir() where name = '{segment}.ready'"
    while run_sql(runner, cluster, query) != "0":
        if time.monotonic() > deadline:
            failed = run_sql(
                runner,
                cluster,
                "select coalesce(last_failed_wal, '-') || ' at ' || coalesce(last_failed_time::text, '-') from pg_stat_archiver",
            )
            raise RecoveryError(
                f"WAL segment {segment} was not archived within {timeout_s:.0f}s (last failure {failed}): fix archiving before a PITR"
            )
        time.sleep(0.1)
    log(f"WAL up to segment {segment} is archived")
    return segment


def unarchived_wal(cluster: Cluster) -> list[str]:
    """WAL files PostgreSQL finished but never archived (archive_status/*.ready), oldest first."""
    status = Path(cluster.postgres.data_dir) / "pg_wal" / "archive_status"
    return sorted(path.name.removesuffix(".ready") for path in status.glob("*.ready")) if status.is_dir() else []


def archive_left_behind(pgbackrest, cluster: Cluster, *, log: Callable[[str], None] = print) -> list[str]:
    """A cluster found stopped may hold finished WAL its archive_command never archived (it
    crashed, or was stopped while the repository was unreachable): a restore over its pg_wal would
    destroy those commits, and an abort back to latest could never reach them. They are archived
    now, before anything is restored; one that cannot be is a failure that touches nothing."""
    left = unarchived_wal(cluster)
    if not left:
        return []
    log(f"PostgreSQL of {cluster.name} is stopped with {len(left)} WAL file(s) never archived: archiving them before the restore")
    for name in left:
        try:
            pgbackrest.archive_push(str(Path(cluster.postgres.data_dir) / "pg_wal" / name))
        except RewindError as exc:
            raise RecoveryError(
                f"WAL file {name} in {cluster.postgres.data_dir}/pg_wal was never archived and archiving it now failed ({exc}); "
                "a restore would destroy it: nothing was restored. Fix archiving, then clear this task"
            ) from None
    log(f"archived {', '.join(left)}")
    return left


MAX_RESULT_CHARS = 200  # what one check's answer may put into XCom, a log line, the change or an incident


def run_data_checks(
    runner: CommandRunner,
    cluster: Cluster,
    checks: list[DataCheck],
    *,
    database: str,
    secrets: Iterable[str] = (),
    log: Callable[[str], None] = print,
) -> list[CheckResult]:
    """Each check as the check role (rewind.postgres.run_check). Its answer is compared in full,
    then masked (every secret value this task knows replaced) and bounded before it goes anywhere."""
    secrets = list(secrets)
    results = []
    for number, check in enumerate(checks, 1):
        try:
            got = run_check(runner, cluster, check.sql, database=database)
            passed = got == check.expect
        except CommandFailed as exc:
            got, passed = f"error: {exc}", False
        shown = bounded(redact(got, secrets), MAX_RESULT_CHARS)
        sql = bounded(redact(check.sql, secrets), MAX_RESULT_CHARS)
        results.append(CheckResult(sql=sql, expect=redact(check.expect, secrets), got=shown, passed=passed))
        log(f"data check {number}: {'ok' if passed else 'FAILED'}: {sql!r} -> {shown!r} (expected {results[-1].expect!r})")
    failed = [r for r in results if not r.passed]
    if failed:
        first = failed[0]
        raise DataCheckFailed(
            f"{len(failed)} of {len(results)} data check(s) failed; first: {first.sql!r} returned {first.got!r}, expected {first.expect!r}",
            results,
        )
    return results


def describe_state(runner: CommandRunner, cluster: Cluster) -> str:
    """One line for a work note: is PostgreSQL up, in recovery, paused, on which timeline."""
    if not is_running(cluster):
        return "PostgreSQL is stopped"
    try:
        in_recovery = run_sql(runner, cluster, "select pg_is_in_recovery()", timeout=15) == "t"
        if in_recovery:
            pause = run_sql(runner, cluster, "select pg_get_wal_replay_pause_state()", timeout=15)
            lsn = run_sql(runner, cluster, "select pg_last_wal_replay_lsn()", timeout=15)
            return f"PostgreSQL is running in recovery (replay {pause}) at LSN {lsn}"
        return f"PostgreSQL is running, promoted, on timeline {live_timeline(runner, cluster)}"
    except CommandFailed as exc:
        return f"PostgreSQL is running but not answering queries ({exc})"
