"""The restore plan: which timeline the rewind follows, which backup reaches the target on it, and
which archived WAL it needs. Made in preflight and made again, from the repository as it is then,
immediately before PostgreSQL is stopped: a plan that no longer holds is replaced or refused there.

The timeline is always resolved to a number here. `current` is the timeline the cluster runs on
(from its pg_control), `latest` the highest in the archive; PostgreSQL itself would read `current`
as the chosen backup's timeline, which after an earlier rewind is the abandoned branch.

pgBackRest chooses the backup set itself only for time and lsn targets. Rewind always chooses
explicitly, the same way for every target type: the newest valid backup that ended before the
target and lies on the timeline's history. For xid and restore-point targets the position is
found in the archived WAL itself (rewind.wal.scan_archive), which also proves it was archived.
"""

from __future__ import annotations

import datetime as dt
import os
import shutil
from collections.abc import Callable
from pathlib import Path

from pydantic import BaseModel, ConfigDict

from rewind.errors import PreflightError
from rewind.pgbackrest.client import PgBackRest
from rewind.pgbackrest.info import Backup, StanzaInfo
from rewind.pitr.request import PitrRequest
from rewind.wal import (
    SEGMENT_SIZE,
    ArchiveListing,
    TimelineHistory,
    WalRecord,
    lsn_text,
    lsn_value,
    oldest_start_segment,
    read_archive,
    read_history,
    scan_archive,
    segment_name,
    segment_of,
    segment_parts,
)


class TargetNotReachable(PreflightError):
    """The form asked for something the repository cannot give (a target in the future or before
    the oldest backup, a restore point that was never made, a backup set of another branch): the
    run ends with the reason, and no incident is opened: nothing is broken. Not retried: the
    repository will not change its answer by being asked again."""

    opens_incident = False
    retryable = False


class RestorePlan(BaseModel):
    """What `restore` will do; the XCom of preflight and, re-checked, of stop_postgres."""

    model_config = ConfigDict(frozen=True)

    backup_set: str
    backup_type: str
    backup_stopped_at: str
    backup_stop_lsn: str
    backup_size_bytes: int
    timeline: int  # numeric: what --target-timeline gets
    timeline_requested: str  # the param: current, latest or N
    target_lsn: str | None = None
    target_record: str | None = None
    wal_scanned_to: str | None = None  # xid/name: the newest segment the search for the target read (from there back to it)
    wal_first: str  # first and last segment the recovery needs, on the timeline's path
    wal_last: str
    archive_max: str | None = None
    archive_id: str | None = None  # the archive (<pg version>-<db id>) the plan read: what a re-plan reads again

    def as_dict(self) -> dict:
        return self.model_dump(mode="json")

    def describe(self) -> str:
        return (
            f"backup {self.backup_set} ({self.backup_type}, ended {self.backup_stopped_at}), timeline {self.timeline} "
            f"({self.timeline_requested}), WAL {self.wal_first}..{self.wal_last}"
        )


# ---- the timeline ------------------------------------------------------------------------------
def resolve_timeline(request: PitrRequest, *, cluster_timeline: int | None, listing: ArchiveListing) -> int:
    """The numeric timeline to recover along."""
    requested = request.target_timeline
    highest = listing.highest_timeline()
    if requested == "latest":
        return highest
    if requested == "current":
        if cluster_timeline is None:
            raise TargetNotReachable(
                "param target_timeline: 'current' needs the cluster's pg_control, which could not be read: give a timeline number"
            )
        return cluster_timeline
    number = int(requested)
    if number != 1 and number not in listing.histories:
        raise TargetNotReachable(f"param target_timeline: timeline {number} is not in the archive (highest is {highest})")
    return number


# ---- the backup --------------------------------------------------------------------------------
def on_history(backup: Backup, history: TimelineHistory) -> bool:
    """A valid backup whose end lies on the history: restoring it and replaying WAL along the
    history reaches the history's timeline."""
    return not backup.error and backup.lsn.stop is not None and history.contains(backup.timeline, lsn_value(backup.lsn.stop))


def choose_backup(info: StanzaInfo, history: TimelineHistory, request: PitrRequest, *, target_lsn: str | None = None) -> Backup:
    """The newest backup on the history that ended before the target (or the named backup_set, checked)."""
    target_time = request.target_time

    def before_target(backup: Backup) -> bool:
        if target_time is not None:
            return backup.stopped_at < target_time
        if target_lsn is not None:
            return lsn_value(backup.lsn.stop) <= lsn_value(target_lsn)
        return True  # immediate, latest

    what = f"target {request.target_type} {request.pgbackrest_target}" if request.target else f"target {request.target_type}"
    if request.backup_set:
        backup = info.get(request.backup_set)
        if backup is None:
            raise TargetNotReachable(f"param backup_set: {request.backup_set} is not in the repository (see `pgbackrest info`)")
        if backup.error:
            raise TargetNotReachable(f"param backup_set: {backup.label} has pgBackRest's error flag: choose another backup")
        if not on_history(backup, history):
            raise TargetNotReachable(
                f"param backup_set: {backup.label} (timeline {backup.timeline}, stop LSN {backup.lsn.stop}) does not lead to timeline "
                f"{history.timeline}: it lies on a branch that timeline {history.timeline} does not come from; choose a backup on its history"
            )
        if not before_target(backup):
            raise TargetNotReachable(
                f"param backup_set: {backup.label} ended at {backup.stopped_at:%Y-%m-%d %H:%M:%S} UTC / {backup.lsn.stop}, after the {what}"
            )
        return backup
    usable = [b for b in info.backups if on_history(b, history)]
    if not usable:
        raise PreflightError(f"stanza {info.name!r} has no valid backup on timeline {history.timeline}'s history")
    candidates = [b for b in usable if before_target(b)]
    if not candidates:
        oldest = usable[0]
        raise TargetNotReachable(
            f"{what} is before the oldest usable backup ({oldest.label} ended {oldest.stopped_at:%Y-%m-%d %H:%M:%S} UTC at {oldest.lsn.stop}): "
            "it cannot be reached"
        )
    return candidates[-1]


# ---- the target --------------------------------------------------------------------------------
def check_target_time(request: PitrRequest, now: dt.datetime) -> None:
    target_time = request.target_time
    if target_time is not None and target_time > now:
        raise TargetNotReachable(f"param target: {target_time:%Y-%m-%d %H:%M:%S} UTC is in the future (now {now:%Y-%m-%d %H:%M:%S} UTC)")


def locate_in_wal(
    pgbackrest: PgBackRest,
    info: StanzaInfo,
    listing: ArchiveListing,
    history: TimelineHistory,
    request: PitrRequest,
    *,
    newer_than: int | None = None,
    log: Callable[[str], None] = print,
) -> WalRecord | None:
    """The xid's commit or the restore point, newest first on the history's path, since the oldest
    backup. With `newer_than` (a re-plan: the WAL up to that segment was read when the plan was
    made), only WAL archived since is read, and None means nothing newer names the target."""
    if request.target_type == "xid":
        what = f"transaction {request.target}"
        # Transaction records only (COMMIT, ABORT). Not filtered by xid: a two-phase commit's end
        # (COMMIT PREPARED) is a record of xid 0 naming the prepared xid in its description.
        filters = {"rmgr": "Transaction"}

        def wanted(record: WalRecord) -> bool:
            return record.xid == request.target and record.kind in ("COMMIT", "ABORT")
    else:
        what = f"restore point {request.target!r}"
        filters = {"rmgr": "XLOG"}  # RESTORE_POINT is an XLOG record

        def wanted(record: WalRecord) -> bool:
            return record.kind == "RESTORE_POINT" and record.detail == request.target

    oldest = oldest_start_segment(b.archive.start for b in info.backups if not b.error)
    result = scan_archive(pgbackrest, listing, history, wanted, oldest_segno=oldest, newer_than=newer_than, log=log, **filters)
    if not result.matches and newer_than is not None:
        return None
    if not result.matches:
        raise TargetNotReachable(
            f"{what} is not in the archived WAL since the oldest backup ({result.segments_scanned} segments on timeline "
            f"{history.timeline}'s history scanned): check the target, or give backup_set"
        )
    newest = max(result.matches, key=lambda record: lsn_value(record.lsn))
    if newest.kind == "ABORT":
        raise TargetNotReachable(f"{what} aborted ({newest.description} at {newest.lsn}): there is no commit to recover to")
    return newest


InUse = int | Callable[[], int | None] | None


def allocated_bytes_until(directory: Path, enough: int) -> int:
    """What the files under `directory` occupy on its file system (allocated blocks), counted only
    until `enough` is reached: the walk stops there. Symbolic links are not followed (pg_wal or a
    tablespace elsewhere is another file system's space)."""
    total, pending = 0, [directory]
    while pending and total < enough:
        try:
            entries = os.scandir(pending.pop())
        except OSError:
            continue
        with entries:
            for entry in entries:
                try:
                    if entry.is_dir(follow_symlinks=False):
                        pending.append(Path(entry.path))
                    elif entry.is_file(follow_symlinks=False):
                        total += entry.stat(follow_symlinks=False).st_blocks * 512
                except OSError:  # vanished meanwhile
                    continue
                if total >= enough:
                    break
    return total


def check_free_disk(data_dir: str, needed_bytes: int, *, in_use_bytes: InUse = None, margin: float = 1.10) -> None:
    """A --delta restore writes at most the backup's size, in place: the space the current data
    directory occupies is reused (its files are rewritten or removed). The file system's free space
    (statvfs) is looked at first, and when it alone covers the backup with the margin, that is all.
    Only when it falls short does the data directory's own space count, and only as much as the
    shortfall: `in_use_bytes`, the live cluster's own figure (a number, or a callable asked only then:
    pg_database_size while PostgreSQL runs), else the data directory's files are counted until the
    shortfall is covered. A whole walk happens only when the restore does not fit."""
    path = Path(data_dir)
    probe = path if path.exists() else path.parent
    usage = shutil.disk_usage(probe)
    needed = int(needed_bytes * margin)
    if usage.free >= needed:
        return
    in_use = in_use_bytes() if callable(in_use_bytes) else in_use_bytes
    if in_use is None:
        in_use = allocated_bytes_until(path, needed - usage.free) if path.is_dir() else 0
    if usage.free + in_use < needed:
        raise PreflightError(
            f"not enough disk for the restore under {data_dir}: needs {needed / 2**30:.1f} GiB, "
            f"{(usage.free + in_use) / 2**30:.1f} GiB available (free + current data directory)"
        )


# ---- the plan ------------------------------------------------------------------------------------
def make_plan(
    pgbackrest: PgBackRest,
    request: PitrRequest,
    info: StanzaInfo,
    *,
    cluster_timeline: int | None,
    timeline: int | None = None,
    previous: RestorePlan | None = None,
    in_use_bytes: InUse = None,
    read_ahead: tuple[str, ArchiveListing, TimelineHistory] | None = None,
    log: Callable[[str], None] = print,
) -> RestorePlan:
    """Resolve the timeline (or keep the given one: a re-plan follows the plan it replaces), locate
    the target, choose the backup, and prove that every WAL segment recovery needs along the
    timeline is in the archive. A re-plan (`previous`) searches only the WAL archived since the
    plan it replaces was made for an xid or restore point: archived segments never change, so what
    was read then need not be read again, and the WAL check below proves the target's segment is
    still there."""
    archive = info.current_archive()
    if archive is None or not archive.max:
        raise PreflightError(f"stanza {info.name!r} has no archived WAL: is archive_command working?")
    # `read_ahead`: (archive id, listing, history) read alongside `info` by a re-plan, used when
    # they are of the archive and timeline this plan needs
    ahead = read_ahead if read_ahead and read_ahead[0] == archive.id and timeline == read_ahead[2].timeline else None
    listing = ahead[1] if ahead else read_archive(pgbackrest, archive.id)
    if timeline is None:
        timeline = resolve_timeline(request, cluster_timeline=cluster_timeline, listing=listing)
    history = ahead[2] if ahead else read_history(pgbackrest, timeline)
    last_on_path = listing.last_segment_on(history)
    if last_on_path is None:
        raise PreflightError(f"no archived WAL on timeline {timeline}'s history")

    target_lsn: str | None = None
    target_record: str | None = None
    scanned_to: str | None = None
    if request.target_type in ("xid", "name"):
        # what the plan replaced found stands only for the same archive (a stanza upgrade starts another)
        known = (
            previous
            if previous is not None and previous.target_lsn and previous.wal_scanned_to and previous.archive_id == archive.id
            else None
        )
        newer_than = None
        if known:
            read_to = segment_parts(known.wal_scanned_to)[1]
            # the segment read last is read again when WAL follows it: a record can start there and end in the next
            newer_than = read_to - 1 if last_on_path > read_to else read_to
        record = locate_in_wal(pgbackrest, info, listing, history, request, newer_than=newer_than, log=log)
        scanned_to = segment_name(history.timeline_of_segment(last_on_path), last_on_path)
        if record is None:
            target_lsn, target_record = known.target_lsn, known.target_record
            log(f"target as found before: {target_record} at {target_lsn} (nothing in the WAL archived since names it)")
        else:
            target_lsn, target_record = record.lsn, record.description
            log(f"target found in archived WAL: {record.description} at {record.lsn} (timeline {record.timeline})")
    elif request.target_type == "lsn":
        target_lsn = request.pgbackrest_target
        end_of_archive = (last_on_path + 1) * SEGMENT_SIZE
        if lsn_value(target_lsn) >= end_of_archive:
            raise TargetNotReachable(
                f"param target: LSN {request.target} is beyond the archived WAL of timeline {timeline} (it ends before {lsn_text(end_of_archive)})"
            )
    elif request.target_type == "time":
        newest = listing.newest_upload()
        if newest is None or request.target_time > newest:
            newest_text = f"{newest:%Y-%m-%d %H:%M:%S} UTC" if newest else "none"
            raise TargetNotReachable(
                f"param target: {request.target_time:%Y-%m-%d %H:%M:%S} UTC is after the newest archived WAL "
                f"({newest_text}): the WAL to reach it is not in the repository"
            )

    backup = choose_backup(info, history, request, target_lsn=target_lsn)
    first = segment_parts(backup.archive.start)[1]
    if request.target_type == "immediate":
        last = segment_parts(backup.archive.stop)[1]
    elif target_lsn is not None:
        last = segment_of(lsn_value(target_lsn))
    else:  # time and latest: recovery may read up to the end of the archive on this history
        last = last_on_path
    missing = listing.gaps(history, first, last)
    if missing:
        shown = ", ".join(missing[:3]) + (f" (+{len(missing) - 3} more)" if len(missing) > 3 else "")
        raise PreflightError(
            f"WAL needed to recover from backup {backup.label} along timeline {timeline} is missing from the archive: {shown}; "
            "choose a later target or backup"
        )
    check_free_disk(pgbackrest.cluster.postgres.data_dir, backup.info.size or 0, in_use_bytes=in_use_bytes)
    plan = RestorePlan(
        backup_set=backup.label,
        backup_type=backup.type,
        backup_stopped_at=backup.stopped_at.isoformat(),
        backup_stop_lsn=backup.lsn.stop,
        backup_size_bytes=backup.info.size or 0,
        timeline=timeline,
        timeline_requested=request.target_timeline,
        target_lsn=target_lsn,
        target_record=target_record,
        wal_scanned_to=scanned_to,
        wal_first=segment_name(history.timeline_of_segment(first), first),
        wal_last=segment_name(history.timeline_of_segment(last), last),
        archive_max=archive.max,
        archive_id=archive.id,
    )
    log(f"restore plan: {plan.describe()}")
    return plan
