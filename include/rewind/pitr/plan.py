"""Where a PITR target lies, and which backup reaches it.

pgBackRest chooses the backup set itself only for time and lsn targets. Rewind always chooses
explicitly, and the same way for every target type: the newest valid backup that ended before the
target on the timeline history being recovered. For xid and restore-point targets the target's
position is not known up front, so Rewind finds it in the archived WAL (archive-get + pg_waldump,
newest segments first, bounded), which also proves the target exists and was archived.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import pwd
import re
import shutil
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

from rewind.errors import PreflightError
from rewind.pgbackrest.client import PgBackRest
from rewind.pgbackrest.info import Backup, StanzaInfo
from rewind.pitr.request import PitrRequest, lsn_value

SEGMENT_SIZE = 16 * 1024 * 1024  # wal_segment_size; Rewind supports the default only
SEGMENT_RE = re.compile(r"^([0-9A-F]{8})([0-9A-F]{8})([0-9A-F]{8})$")
WALDUMP_RE = re.compile(r"rmgr: (\w+)\s+len \(rec/tot\):\s+\d+/\s*\d+, tx:\s+(\d+), lsn: ([0-9A-F]+/[0-9A-F]+), prev [^,]+, desc: (\S+)\s?(.*)$")


def segment_parts(name: str) -> tuple[int, int]:
    """(timeline, segment number) of a WAL segment file name."""
    match = SEGMENT_RE.match(name)
    if not match:
        raise ValueError(f"{name!r} is not a WAL segment name")
    timeline, log, seg = (int(part, 16) for part in match.groups())
    return timeline, log * (0x100000000 // SEGMENT_SIZE) + seg


def segment_name(timeline: int, segno: int) -> str:
    per_log = 0x100000000 // SEGMENT_SIZE
    return f"{timeline:08X}{segno // per_log:08X}{segno % per_log:08X}"


@dataclass(frozen=True)
class TimelineHistory:
    """A timeline and its ancestors: [(timeline, end LSN or None for the last)] oldest first."""

    entries: tuple[tuple[int, int | None], ...]

    @classmethod
    def parse(cls, timeline: int, history_text: str | None) -> "TimelineHistory":
        entries: list[tuple[int, int | None]] = []
        for line in (history_text or "").splitlines():
            fields = line.split()
            if len(fields) >= 2 and fields[0].isdigit():
                entries.append((int(fields[0]), lsn_value(fields[1])))
        entries.append((timeline, None))
        return cls(tuple(entries))

    @property
    def timeline(self) -> int:
        return self.entries[-1][0]

    def contains(self, timeline: int, lsn: int) -> bool:
        """Is (timeline, lsn) on this history? (a backup taken there can reach the history's end)"""
        for tli, end in self.entries:
            if tli == timeline:
                return end is None or lsn <= end
        return False

    def timeline_of_segment(self, segno: int) -> int:
        """The timeline whose copy of this segment recovery reads: segments wholly before a switch
        point belong to the old timeline; the switch segment and later ones to the next."""
        for tli, end in self.entries:
            if end is None or segno < end // SEGMENT_SIZE:
                return tli
        return self.entries[-1][0]


@dataclass(frozen=True)
class TargetLocation:
    lsn: str
    timeline: int
    description: str  # the WAL record found, e.g. "COMMIT 2026-11-24 02:14:00.1 UTC"
    committed_at: str | None = None


@dataclass(frozen=True)
class RestorePlan:
    backup_set: str
    backup_type: str
    backup_stopped_at: str
    backup_stop_lsn: str
    backup_size_bytes: int
    timeline: int
    target_lsn: str | None
    target_record: str | None
    archive_max: str | None

    def as_dict(self) -> dict:
        return asdict(self)


# ---- reading the repository ----------------------------------------------------------------------
def _pgbackrest_argv(pgbackrest: PgBackRest, command: str, *args: str, options: tuple[str, ...] = ()) -> list[str]:
    cluster = pgbackrest.cluster
    return [cluster.pgbackrest.bin, f"--config={cluster.config_path}", f"--stanza={cluster.stanza}", *options, command, *args]


def archive_listing(pgbackrest: PgBackRest, archive_id: str) -> dict[str, dict]:
    """{file name: repo-ls entry} for the stanza's archive of one database id (segments, .history)."""
    argv = _pgbackrest_argv(pgbackrest, "repo-ls", f"archive/{pgbackrest.cluster.stanza}/{archive_id}", options=("--output=json", "--recurse"))
    listing = json.loads(pgbackrest.run(argv, log_stdout=False).stdout)
    return {Path(name).name: entry for name, entry in listing.items() if entry.get("type") == "file"}


def is_segment_file(name: str) -> bool:
    """A stored WAL segment: <24 hex>-<checksum>[.ext] (not .history, .backup or .partial)."""
    return bool(SEGMENT_RE.match(name[:24])) and name[24:25] == "-"


def newest_segment_upload(listing: dict[str, dict]) -> dt.datetime | None:
    """Upload time of the newest archived segment: WAL written after it is not in the repository."""
    stamps = [entry["time"] for name, entry in listing.items() if is_segment_file(name) and "time" in entry]
    return dt.datetime.fromtimestamp(max(stamps), dt.timezone.utc) if stamps else None


def _work_dir(pgbackrest: PgBackRest) -> Path:
    user = pwd.getpwnam(pgbackrest.cluster.postgres.os_user)
    base = Path(pgbackrest.cluster.pgbackrest.spool_path)
    directory = Path(tempfile.mkdtemp(prefix="rewind-wal-", dir=base if base.is_dir() else None))
    os.chown(directory, user.pw_uid, user.pw_gid)
    return directory


def read_history(pgbackrest: PgBackRest, timeline: int) -> TimelineHistory:
    if timeline == 1:
        return TimelineHistory.parse(1, None)
    directory = _work_dir(pgbackrest)
    try:
        name = f"{timeline:08X}.history"
        pgbackrest.run(_pgbackrest_argv(pgbackrest, "archive-get", name, str(directory / name)), log_stdout=False)
        return TimelineHistory.parse(timeline, (directory / name).read_text())
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def current_timeline(info: StanzaInfo, request: PitrRequest) -> int:
    archive = info.current_archive()
    if archive is None or not archive.max:
        raise PreflightError(f"stanza {info.name!r} has no archived WAL: is archive_command working?")
    newest = segment_parts(archive.max)[0]
    if request.target_timeline in ("current", "latest"):
        return newest
    return int(request.target_timeline)


# ---- finding an xid or restore point in WAL --------------------------------------------------------
def locate_in_wal(
    pgbackrest: PgBackRest,
    info: StanzaInfo,
    history: TimelineHistory,
    request: PitrRequest,
    *,
    max_segments: int = 512,
    batch: int = 16,
) -> TargetLocation:
    """Scan archived WAL newest-first for the xid's commit or the restore point; bounded."""
    archive = info.current_archive()
    segments: dict[int, set[int]] = {}
    for name in archive_listing(pgbackrest, archive.id):
        if is_segment_file(name):
            timeline, segno = segment_parts(name[:24])
            segments.setdefault(segno, set()).add(timeline)
    on_path = sorted(
        ((segno, history.timeline_of_segment(segno)) for segno in segments if history.timeline_of_segment(segno) in segments[segno]),
        reverse=True,
    )
    oldest_backup_segno = min(
        (segment_parts(b.archive.start)[1] for b in info.backups if b.archive.start and not b.error), default=0
    )
    on_path = [item for item in on_path if item[0] >= oldest_backup_segno][:max_segments]
    found: list[TargetLocation] = []
    pg_waldump = str(Path(pgbackrest.cluster.postgres.bin_dir) / "pg_waldump")
    directory = _work_dir(pgbackrest)
    try:
        index = 0
        while index < len(on_path):
            window = on_path[index : index + batch]
            index += batch - 1 if len(window) == batch else batch  # overlap one segment: records span files
            for timeline in sorted({tli for _seg, tli in window}):
                names = sorted(segment_name(tli, segno) for segno, tli in window if tli == timeline)
                for child in directory.iterdir():
                    child.unlink()
                for name in names:
                    pgbackrest.run(_pgbackrest_argv(pgbackrest, "archive-get", name, str(directory / name)), log_stdout=False)
                result = pgbackrest.runner.run(
                    [pg_waldump, "--path", str(directory), names[0], names[-1]], timeout=600, check=False, log_stdout=False
                )
                for line in result.stdout.splitlines():
                    location = _match(line, request, timeline)
                    if location:
                        found.append(location)
            if found:
                break
    finally:
        shutil.rmtree(directory, ignore_errors=True)
    what = f"transaction {request.target}" if request.target_type == "xid" else f"restore point {request.target!r}"
    if not found:
        raise PreflightError(
            f"{what} is not in the archived WAL since the oldest backup ({len(on_path)} segments on timeline "
            f"{history.timeline}'s history scanned): check the target, or give backup_set"
        )
    newest = max(found, key=lambda loc: lsn_value(loc.lsn))
    if newest.description.startswith("ABORT"):
        raise PreflightError(f"{what} aborted ({newest.description} at {newest.lsn}): there is no commit to recover to")
    return newest


def _match(line: str, request: PitrRequest, timeline: int) -> TargetLocation | None:
    match = WALDUMP_RE.search(line)
    if not match:
        return None
    rmgr, xid, lsn, kind, rest = match.groups()
    if request.target_type == "xid" and rmgr == "Transaction" and xid == request.target and kind in ("COMMIT", "ABORT"):
        stamp = rest.split(";")[0].strip()
        return TargetLocation(lsn=lsn, timeline=timeline, description=f"{kind} {stamp}", committed_at=stamp if kind == "COMMIT" else None)
    if request.target_type == "name" and rmgr == "XLOG" and kind == "RESTORE_POINT" and rest.strip() == request.target:
        return TargetLocation(lsn=lsn, timeline=timeline, description=f"RESTORE_POINT {request.target}")
    return None


# ---- choosing the backup set ---------------------------------------------------------------------
def _usable(backup: Backup, history: TimelineHistory) -> bool:
    return not backup.error and backup.lsn.stop is not None and history.contains(backup.timeline, lsn_value(backup.lsn.stop))


def choose_backup(
    info: StanzaInfo,
    history: TimelineHistory,
    request: PitrRequest,
    *,
    target_lsn: str | None = None,
) -> Backup:
    """The newest usable backup that ended before the target (or the named backup_set, checked)."""
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
            raise PreflightError(f"param backup_set: {request.backup_set} is not in the repository (see `pgbackrest info`)")
        if not _usable(backup, history):
            raise PreflightError(f"param backup_set: {backup.label} is not usable for timeline {history.timeline} (error flag or another timeline branch)")
        if not before_target(backup):
            raise PreflightError(f"param backup_set: {backup.label} ended at {backup.stopped_at:%Y-%m-%d %H:%M:%S} UTC / {backup.lsn.stop}, after the {what}")
        return backup
    usable = [b for b in info.backups if _usable(b, history)]
    if not usable:
        raise PreflightError(f"stanza {info.name!r} has no valid backup on timeline {history.timeline}'s history")
    candidates = [b for b in usable if before_target(b)]
    if not candidates:
        oldest = usable[0]
        raise PreflightError(
            f"{what} is before the oldest usable backup ({oldest.label} ended {oldest.stopped_at:%Y-%m-%d %H:%M:%S} UTC at {oldest.lsn.stop}): "
            "it cannot be reached"
        )
    return candidates[-1]


def check_target_time(request: PitrRequest, now: dt.datetime) -> None:
    target_time = request.target_time
    if target_time is not None and target_time > now:
        raise PreflightError(
            f"param target: {target_time:%Y-%m-%d %H:%M:%S} UTC is in the future (now {now:%Y-%m-%d %H:%M:%S} UTC)"
        )


def check_free_disk(data_dir: str, needed_bytes: int, *, margin: float = 1.10) -> None:
    """A --delta restore rewrites at most the backup's size; free space plus what the data
    directory already uses must cover that with a margin."""
    path = Path(data_dir)
    probe = path if path.exists() else path.parent
    usage = shutil.disk_usage(probe)
    existing = sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) if path.exists() else 0
    needed = int(needed_bytes * margin)
    if usage.free + existing < needed:
        raise PreflightError(
            f"not enough disk for the restore under {data_dir}: needs {needed / 2**30:.1f} GiB, "
            f"{(usage.free + existing) / 2**30:.1f} GiB available (free + current data directory)"
        )


def make_plan(backup: Backup, history: TimelineHistory, info: StanzaInfo, location: TargetLocation | None) -> RestorePlan:
    archive = info.current_archive()
    return RestorePlan(
        backup_set=backup.label,
        backup_type=backup.type,
        backup_stopped_at=backup.stopped_at.isoformat(),
        backup_stop_lsn=backup.lsn.stop,
        backup_size_bytes=backup.info.size or 0,
        timeline=history.timeline,
        target_lsn=location.lsn if location else None,
        target_record=location.description if location else None,
        archive_max=archive.max if archive else None,
    )

