"""Live-cluster steps of a PITR: archive the current WAL before stopping, watch recovery reach the
target (and fail loudly when PostgreSQL says it did not), check data, promote, describe state."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from pathlib import Path

from rewind.credentials import bounded, redact
from rewind.errors import RewindError
from rewind.inventory import Cluster
from rewind.pitr.request import DataCheck
from rewind.pitr.results import CheckResult, RecoveryResult
from rewind.postgres import live_timeline, log_file, postmaster_pid, run_check, run_sql
from rewind.runner import CommandFailed, CommandRunner

NOT_REACHED = "recovery ended before configured recovery target was reached"
STATE_SQL = (
    "select case when pg_is_in_recovery() "
    "then 't|' || pg_get_wal_replay_pause_state() || '|' || coalesce(pg_last_wal_replay_lsn()::text, '-') "
    "else 'f|-|' || pg_current_wal_lsn()::text end"
)


class RecoveryError(RewindError):
    pass


class RecoveryTargetNotReached(RecoveryError):
    pass


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
    """Switch WAL and wait until the segment is archived, so every commit up to now is in the
    repository before PostgreSQL stops. Returns the segment, or None when PostgreSQL is down
    or a standby (nothing to switch)."""
    if not is_running(cluster):
        log("PostgreSQL is not running: only WAL already archived can be recovered")
        return None
    if run_sql(runner, cluster, "select pg_is_in_recovery()") == "t":
        log("PostgreSQL is in recovery: no WAL switch")
        return None
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


def log_offset(cluster: Cluster) -> int:
    path = log_file(cluster)
    try:
        return path.stat().st_size if path else 0
    except FileNotFoundError:
        return 0


def new_log_lines(cluster: Cluster, offset: int) -> list[str]:
    path = log_file(cluster)
    if path is None or not path.exists():
        return []
    with open(path, "rb") as handle:
        handle.seek(offset)
        return handle.read().decode(errors="replace").splitlines()


def wait_for_recovery(
    runner: CommandRunner,
    cluster: Cluster,
    *,
    action: str,
    since_offset: int,
    timeout_s: float,
    poll_s: float = 0.1,
    log: Callable[[str], None] = print,
) -> RecoveryResult:
    deadline = time.monotonic() + timeout_s
    started = time.monotonic()
    last_note = ""
    while True:
        lines = new_log_lines(cluster, since_offset)
        if any(NOT_REACHED in line for line in lines):
            raise RecoveryTargetNotReached(
                f"PostgreSQL reported '{NOT_REACHED}': the target is beyond the archived WAL; the cluster is stopped, not promoted"
            )
        if not is_running(cluster) and time.monotonic() - started > 3:
            fatal = [line for line in lines if "FATAL" in line or "PANIC" in line]
            raise RecoveryError(f"PostgreSQL exited during recovery: {fatal[-1].strip() if fatal else 'see its log'}")
        # One statement, and any failure while PostgreSQL changes state (starting up, promoting
        # between two calls: "recovery is not in progress") means: look again.
        try:
            state = run_sql(runner, cluster, STATE_SQL, timeout=30)
        except CommandFailed as exc:
            note = str(exc)
            if note != last_note:
                log(f"waiting for PostgreSQL: {note}")
                last_note = note
            state = None
        if state is not None:
            in_recovery, pause, lsn = state.split("|")
            stop_record = next((line.split("LOG:", 1)[-1].strip() for line in lines if "recovery stopping" in line), None)
            if action == "promote" and in_recovery == "f":
                return RecoveryResult(state="promoted", replay_lsn=lsn, stop_record=stop_record, timeline=live_timeline(runner, cluster))
            if action == "pause" and in_recovery == "t" and pause == "paused":
                return RecoveryResult(state="paused", replay_lsn=lsn, stop_record=stop_record, timeline=None)
        if time.monotonic() > deadline:
            raise RecoveryError(f"recovery did not reach the target within {timeout_s:.0f}s: check PostgreSQL's log")
        time.sleep(poll_s)


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


def promote(runner: CommandRunner, cluster: Cluster, *, timeout_s: int = 300) -> int:
    """Promote if still in recovery, then CHECKPOINT: PostgreSQL only requests the end-of-recovery
    checkpoint, and until it completes pg_control still names the old timeline, which pgBackRest
    rejects for the new timeline's full backup ("WAL timeline does not match pg_control")."""
    if run_sql(runner, cluster, "select pg_is_in_recovery()") == "t":
        if run_sql(runner, cluster, f"select pg_promote(true, {int(timeout_s)})", timeout=timeout_s + 30) != "t":
            raise RecoveryError(f"pg_promote did not finish within {timeout_s}s")
    run_sql(runner, cluster, "checkpoint", timeout=timeout_s)
    timeline = live_timeline(runner, cluster)
    control = int(run_sql(runner, cluster, "select timeline_id from pg_control_checkpoint()"))
    if control != timeline:
        raise RecoveryError(f"pg_control is on timeline {control} after a checkpoint, WAL on {timeline}")
    return timeline


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
