"""Repository verification: WAL continuity from every retained backup to the archive's end."""

from __future__ import annotations

from rewind.health import Finding
from rewind.pgbackrest.client import PgBackRest
from rewind.pgbackrest.info import StanzaInfo
from rewind.wal import oldest_start_segment, read_archive, read_history, segment_parts


def wal_gaps(pgbackrest: PgBackRest, info: StanzaInfo) -> list[str]:
    """Segments missing between the oldest retained backup's first WAL and the archive's last,
    on the current timeline's history (the segments a restore of any retained backup needs)."""
    archive = info.current_archive()
    valid = [b for b in info.backups if b.archive.start and not b.error]
    if archive is None or not archive.max or not valid:
        return []
    timeline, last = segment_parts(archive.max)
    listing = read_archive(pgbackrest, archive.id)
    return listing.gaps(read_history(pgbackrest, timeline), oldest_start_segment(b.archive.start for b in valid), last)


def continuity_finding(missing: list[str]) -> Finding:
    if missing:
        shown = ", ".join(missing[:5]) + (f" (+{len(missing) - 5} more)" if len(missing) > 5 else "")
        return Finding(
            "wal_continuity",
            False,
            f"{len(missing)} WAL segment(s) missing from the archive",
            f"missing: {shown}; restores that need them will fail",
            {"wal.gaps": len(missing)},
        )
    return Finding("wal_continuity", True, "WAL continuous from every retained backup", metrics={"wal.gaps": 0})
