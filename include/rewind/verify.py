"""Repository verification: WAL continuity from every retained backup to the archive's end."""

from __future__ import annotations

from rewind.health import Finding
from rewind.pgbackrest.client import PgBackRest
from rewind.pgbackrest.info import StanzaInfo
from rewind.pitr.plan import archive_listing, is_segment_file, read_history, segment_name, segment_parts


def wal_gaps(pgbackrest: PgBackRest, info: StanzaInfo) -> list[str]:
    """Segments missing between the oldest retained backup's first WAL and the archive's last,
    on the current timeline's history (the segments a restore of any retained backup needs)."""
    archive = info.current_archive()
    starts = [segment_parts(b.archive.start)[1] for b in info.backups if b.archive.start and not b.error]
    if archive is None or not archive.max or not starts:
        return []
    timeline, last = segment_parts(archive.max)
    history = read_history(pgbackrest, timeline)
    present: dict[int, set[int]] = {}
    for name in archive_listing(pgbackrest, archive.id):
        if is_segment_file(name):
            tli, segno = segment_parts(name[:24])
            present.setdefault(segno, set()).add(tli)
    missing = []
    for segno in range(min(starts), last + 1):
        expected = history.timeline_of_segment(segno)
        if expected not in present.get(segno, set()):
            missing.append(segment_name(expected, segno))
    return missing


def continuity_finding(missing: list[str]) -> Finding:
    if missing:
        shown = ", ".join(missing[:5]) + (f" (+{len(missing) - 5} more)" if len(missing) > 5 else "")
        return Finding("wal_continuity", False, f"{len(missing)} WAL segment(s) missing from the archive",
                       f"missing: {shown}; restores that need them will fail", {"wal.gaps": len(missing)})
    return Finding("wal_continuity", True, "WAL continuous from every retained backup", metrics={"wal.gaps": 0})
