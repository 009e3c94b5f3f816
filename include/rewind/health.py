"""The watchdog's checks. Each returns a Finding for one problem of one cluster; a failing Finding
pages and opens (or updates) the ServiceNow incident keyed by cluster and problem, a passing one
resolves it."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from pathlib import Path

from rewind.pgbackrest.info import STATUS_NO_BACKUP, StanzaInfo
from rewind.state import StateFileDamaged, read_json, write_json


@dataclass(frozen=True)
class Finding:
    problem: str  # stable key part: archive_failing, backup_age, stanza_status, backup_lock
    ok: bool
    summary: str
    details: str = ""
    metrics: dict[str, float] = field(default_factory=dict)


def load_watch_state(path) -> dict:
    """What the previous check saw, kept in the cluster's state directory on the database host. A
    damaged file only costs the comparison with the previous run."""
    try:
        return read_json(Path(path), what="watchdog state", fix="it is rewritten by the next run") or {}
    except StateFileDamaged:
        return {}


def save_watch_state(path, state: dict) -> None:
    write_json(Path(path), state)


@dataclass(frozen=True)
class ArchiverState:
    """pg_stat_archiver plus the WAL waiting in archive_status (.ready files)."""

    archived_count: int
    last_archived_wal: str | None
    last_archived_time: dt.datetime | None
    failed_count: int
    last_failed_wal: str | None
    last_failed_time: dt.datetime | None
    ready_count: int
    oldest_ready_age_s: float | None
    archive_timeout_s: int


ARCHIVER_SQL = (
    "select archived_count, coalesce(last_archived_wal, ''), coalesce(extract(epoch from last_archived_time)::text, ''), "
    "failed_count, coalesce(last_failed_wal, ''), coalesce(extract(epoch from last_failed_time)::text, ''), "
    "(select count(*) from pg_ls_archive_statusdir() where name like '%.ready'), "
    "coalesce((select extract(epoch from now() - min(modification))::text from pg_ls_archive_statusdir() where name like '%.ready'), ''), "
    "(select setting::int from pg_settings where name = 'archive_timeout') from pg_stat_archiver"
)


def parse_archiver_row(row: list) -> ArchiverState:
    def stamp(value) -> dt.datetime | None:
        return dt.datetime.fromtimestamp(float(value), dt.timezone.utc) if value not in (None, "") else None

    return ArchiverState(
        archived_count=int(row[0]),
        last_archived_wal=row[1] or None,
        last_archived_time=stamp(row[2]),
        failed_count=int(row[3]),
        last_failed_wal=row[4] or None,
        last_failed_time=stamp(row[5]),
        ready_count=int(row[6]),
        oldest_ready_age_s=float(row[7]) if row[7] not in (None, "") else None,
        archive_timeout_s=int(row[8]),
    )


def check_archiving(state: ArchiverState, *, previous_failed_count: int | None, stale_factor: float = 3.0) -> Finding:
    """Failing: the last attempt failed after the last success, WAL has waited for archiving longer
    than stale_factor x archive_timeout, or failures happened since the previous check although it
    was healthy (previous_failed_count: the count at the previous check, only when that check
    found archiving healthy; a failure that recovered between two checks is still reported)."""
    metrics = {
        "archive.failed_count": state.failed_count,
        "archive.ready_segments": state.ready_count,
        "archive.last_archived_age_seconds": (
            (dt.datetime.now(dt.timezone.utc) - state.last_archived_time).total_seconds() if state.last_archived_time else -1
        ),
    }
    reasons = []
    if state.last_failed_time and (state.last_archived_time is None or state.last_failed_time > state.last_archived_time):
        reasons.append(f"last attempt failed: {state.last_failed_wal} at {state.last_failed_time:%Y-%m-%d %H:%M:%S} UTC")
    if previous_failed_count is not None and state.failed_count > previous_failed_count:
        reasons.append(f"failed_count rose from {previous_failed_count} to {state.failed_count}")
    stale_after = stale_factor * (state.archive_timeout_s or 300)
    if state.oldest_ready_age_s is not None and state.oldest_ready_age_s > stale_after:
        reasons.append(f"{state.ready_count} WAL segment(s) waiting, oldest for {state.oldest_ready_age_s:.0f}s (> {stale_after:.0f}s)")
    if reasons:
        return Finding(
            "archive_failing",
            False,
            "WAL archiving is failing",
            "; ".join(reasons)
            + ". PostgreSQL keeps the WAL until it is archived; check archive_command, the repository and its credentials.",
            metrics,
        )
    return Finding("archive_failing", True, f"WAL archiving ok (last {state.last_archived_wal})", metrics=metrics)


def check_backup_age(info: StanzaInfo, *, now: dt.datetime, max_age_hours: float = 26.0) -> Finding:
    metrics: dict[str, float] = {}
    for backup_type in ("full", "diff", "incr"):
        newest = info.latest(backup_type)
        if newest:
            metrics[f"backup.age_seconds.{backup_type}"] = (now - newest.stopped_at).total_seconds()
    latest = info.latest()
    if latest:
        metrics["backup.last_duration_seconds"] = latest.timestamp.stop - latest.timestamp.start
        metrics["backup.last_size_bytes"] = latest.info.size or 0
        metrics["backup.last_repo_size_bytes"] = latest.info.repository.size or 0
    if latest is None:
        return Finding("backup_age", False, "no good backup at all", f"stanza {info.name} has no backup without error", metrics)
    age_h = (now - latest.stopped_at).total_seconds() / 3600
    if age_h > max_age_hours:
        return Finding(
            "backup_age",
            False,
            f"no good backup for {age_h:.1f} h",
            f"newest good backup {latest.label} ({latest.type}) ended {latest.stopped_at:%Y-%m-%d %H:%M:%S} UTC; threshold {max_age_hours} h",
            metrics,
        )
    return Finding("backup_age", True, f"newest good backup {latest.label} is {age_h:.1f} h old", metrics=metrics)


def check_stanza(info: StanzaInfo) -> Finding:
    """Status 2 (no valid backups) is a backup problem, reported by check_backup_age, not here."""
    metrics = {"stanza.status": info.status.code}
    if info.ok or info.status.code == STATUS_NO_BACKUP:
        return Finding("stanza_status", True, f"stanza readable ({info.status.message})", metrics=metrics)
    return Finding("stanza_status", False, f"stanza status {info.status.code}: {info.status.message}", metrics=metrics)


def check_backup_lock(info: StanzaInfo, *, held_since: dt.datetime | None, now: dt.datetime, floor_s: float = 3600) -> Finding:
    """A backup lock held far longer than the longest retained backup took (at least floor_s)."""
    longest = max((b.timestamp.stop - b.timestamp.start for b in info.backup), default=0)
    limit = max(2 * longest, floor_s)
    if info.backup_lock_held and held_since is not None:
        held = (now - held_since).total_seconds()
        if held > limit:
            return Finding(
                "backup_lock",
                False,
                f"backup lock held for {held / 60:.0f} min",
                f"longest retained backup took {longest}s; limit {limit:.0f}s: a backup may be hung",
            )
    return Finding("backup_lock", True, "no backup lock held too long")
