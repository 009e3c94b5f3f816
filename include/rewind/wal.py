"""WAL and timelines, in one place: LSN and segment arithmetic, timeline history, the stanza's
archive as pgBackRest stores it, continuity (gaps) and the pg_waldump scan that finds a
transaction's commit or a restore point in archived WAL.

A timeline's history (`0000000N.history`) lists, oldest first, each ancestor and the LSN where
the next timeline branched off it. Recovery along timeline N reads each segment from the timeline
that owned it on that path: segments wholly before a switch point from the older timeline, the
switch segment and later ones from the newer one. Everything here answers questions on one such
path: which backups lie on it, which segments it needs, whether they are all archived.
"""

from __future__ import annotations

import datetime as dt
import os
import pwd
import queue
import re
import shutil
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from rewind.pgbackrest.client import PgBackRest

SEGMENT_SIZE = 16 * 1024 * 1024  # wal_segment_size; Rewind supports the default only
SEGMENTS_PER_XLOGID = 0x100000000 // SEGMENT_SIZE
SEGMENT_RE = re.compile(r"^([0-9A-F]{8})([0-9A-F]{8})([0-9A-F]{8})$")
HISTORY_RE = re.compile(r"^([0-9A-F]{8})\.history$")
WALDUMP_RE = re.compile(
    r"rmgr: (\w+)\s+len \(rec/tot\):\s+\d+/\s*\d+, tx:\s+(\d+), lsn: ([0-9A-F]+/[0-9A-F]+), prev [^,]+, desc: (\S+)\s?(.*)$"
)


# ---- LSNs and segment names ------------------------------------------------------------------------
def lsn_value(lsn: str) -> int:
    high, low = lsn.split("/")
    return (int(high, 16) << 32) | int(low, 16)


def lsn_text(value: int) -> str:
    return f"{value >> 32:X}/{value & 0xFFFFFFFF:X}"


def segment_parts(name: str) -> tuple[int, int]:
    """(timeline, segment number) of a WAL segment file name."""
    match = SEGMENT_RE.match(name)
    if not match:
        raise ValueError(f"{name!r} is not a WAL segment name")
    timeline, log, seg = (int(part, 16) for part in match.groups())
    return timeline, log * SEGMENTS_PER_XLOGID + seg


def segment_name(timeline: int, segno: int) -> str:
    return f"{timeline:08X}{segno // SEGMENTS_PER_XLOGID:08X}{segno % SEGMENTS_PER_XLOGID:08X}"


def segment_of(lsn: int) -> int:
    return lsn // SEGMENT_SIZE


def is_segment_file(name: str) -> bool:
    """A stored WAL segment: <24 hex>-<checksum>[.ext] (not .history, .backup or .partial)."""
    return bool(SEGMENT_RE.match(name[:24])) and name[24:25] == "-"


# ---- timeline history -----------------------------------------------------------------------------
@dataclass(frozen=True)
class TimelineHistory:
    """A timeline and its ancestors: [(timeline, end LSN or None for the last)] oldest first."""

    entries: tuple[tuple[int, int | None], ...]

    @classmethod
    def parse(cls, timeline: int, history_text: str | None) -> TimelineHistory:
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

    @property
    def timelines(self) -> tuple[int, ...]:
        return tuple(tli for tli, _end in self.entries)

    def contains(self, timeline: int, lsn: int) -> bool:
        """Is (timeline, lsn) on this history? (a backup that ended there can reach the history's end)"""
        for tli, end in self.entries:
            if tli == timeline:
                return end is None or lsn <= end
        return False

    def switch_lsn(self, timeline: int) -> int | None:
        """Where this history left `timeline` for the next one (None: it is the last, or not on it)."""
        return next((end for tli, end in self.entries if tli == timeline), None)

    def timeline_of_segment(self, segno: int) -> int:
        """The timeline whose copy of this segment recovery reads: segments wholly before a switch
        point belong to the old timeline; the switch segment and later ones to the next."""
        for tli, end in self.entries:
            if end is None or segno < segment_of(end):
                return tli
        return self.entries[-1][0]

    def path(self, first_segno: int, last_segno: int) -> list[str]:
        """The segment names recovery along this history reads from first to last (inclusive)."""
        return [segment_name(self.timeline_of_segment(segno), segno) for segno in range(first_segno, last_segno + 1)]


# ---- the stanza's archive --------------------------------------------------------------------------
@dataclass(frozen=True)
class ArchiveListing:
    """What one archive id (`<pg version>-<db id>`) of the stanza holds, from `repo-ls`."""

    segments: dict[int, dict[int, dict]] = field(default_factory=dict)  # segno -> {timeline: repo-ls entry}
    histories: frozenset[int] = frozenset()

    @classmethod
    def parse(cls, listing: dict[str, dict]) -> ArchiveListing:
        segments: dict[int, dict[int, dict]] = {}
        histories = set()
        for path, entry in listing.items():
            if entry.get("type") != "file":
                continue
            name = Path(path).name
            if is_segment_file(name):
                tli, segno = segment_parts(name[:24])
                segments.setdefault(segno, {})[tli] = entry
            elif match := HISTORY_RE.match(name):
                histories.add(int(match.group(1), 16))
        return cls(segments, frozenset(histories))

    def has(self, name: str) -> bool:
        tli, segno = segment_parts(name)
        return tli in self.segments.get(segno, {})

    def newest_upload(self) -> dt.datetime | None:
        """Upload time of the newest archived segment: WAL written after it is not in the repository."""
        stamps = [entry["time"] for by_tli in self.segments.values() for entry in by_tli.values() if "time" in entry]
        return dt.datetime.fromtimestamp(max(stamps), dt.timezone.utc) if stamps else None

    def highest_timeline(self) -> int:
        return max([*self.histories, *(tli for by_tli in self.segments.values() for tli in by_tli)], default=1)

    def last_segment_on(self, history: TimelineHistory) -> int | None:
        """The newest archived segment on the history's path."""
        on_path = [segno for segno, by_tli in self.segments.items() if history.timeline_of_segment(segno) in by_tli]
        return max(on_path, default=None)

    def gaps(self, history: TimelineHistory, first_segno: int, last_segno: int) -> list[str]:
        """Segments recovery along `history` needs from first to last that are not archived."""
        return [name for name in history.path(first_segno, last_segno) if not self.has(name)]


def read_archive(pgbackrest: PgBackRest, archive_id: str) -> ArchiveListing:
    return ArchiveListing.parse(pgbackrest.repo_ls(f"archive/{pgbackrest.cluster.stanza}/{archive_id}"))


def work_dir(pgbackrest: PgBackRest) -> Path:
    """A private directory the cluster's OS user can write WAL into (archive-get runs as it)."""
    user = pwd.getpwnam(pgbackrest.cluster.postgres.os_user)
    base = Path(pgbackrest.cluster.pgbackrest.spool_path)
    directory = Path(tempfile.mkdtemp(prefix="rewind-wal-", dir=base if base.is_dir() else None))
    os.chown(directory, user.pw_uid, user.pw_gid)
    return directory


def read_history(pgbackrest: PgBackRest, timeline: int) -> TimelineHistory:
    if timeline == 1:
        return TimelineHistory.parse(1, None)
    directory = work_dir(pgbackrest)
    try:
        name = f"{timeline:08X}.history"
        pgbackrest.archive_get(name, str(directory / name))
        return TimelineHistory.parse(timeline, (directory / name).read_text())
    finally:
        shutil.rmtree(directory, ignore_errors=True)


# ---- finding an xid's commit or a restore point --------------------------------------------------
@dataclass(frozen=True)
class WalRecord:
    """A WAL record pg_waldump printed that a recovery target can name."""

    kind: str  # COMMIT, ABORT, RESTORE_POINT
    lsn: str
    timeline: int
    xid: str | None
    detail: str  # the commit time, or the restore point's name

    @property
    def description(self) -> str:
        return f"{self.kind} {self.detail}"


# A two-phase commit's end (COMMIT PREPARED / ROLLBACK PREPARED) is written by whichever session
# runs it: the record's own xid is 0, and the prepared transaction's xid leads its description
# ("COMMIT_PREPARED 725: 2026-12-04 02:48:57.93 UTC"). PostgreSQL's recovery_target_xid stops on it
# like on a COMMIT, so everything that names transactions reads it as the prepared xid's end.
PREPARED_ENDS = {"COMMIT_PREPARED": "COMMIT", "ABORT_PREPARED": "ABORT"}
PREPARED_XID_RE = re.compile(r"^(\d+):\s*(.*)$")


def transaction_end(rmgr: str, xid: str, kind: str, rest: str) -> tuple[str, str, str] | None:
    """(COMMIT or ABORT, the transaction's xid, the rest of the description) when the record ends a
    transaction, two-phase ones included; None for any other record."""
    if rmgr != "Transaction":
        return None
    if kind in ("COMMIT", "ABORT"):
        return kind, xid, rest
    if kind in PREPARED_ENDS and (prepared := PREPARED_XID_RE.match(rest)):
        return PREPARED_ENDS[kind], prepared.group(1), prepared.group(2)
    return None


def parse_waldump_line(line: str, timeline: int) -> WalRecord | None:
    match = WALDUMP_RE.search(line)
    if not match:
        return None
    rmgr, xid, lsn, kind, rest = match.groups()
    if ended := transaction_end(rmgr, xid, kind, rest):
        kind, xid, rest = ended
        return WalRecord(kind, lsn, timeline, xid, rest.split(";")[0].strip())
    if rmgr == "XLOG" and kind == "RESTORE_POINT":
        return WalRecord(kind, lsn, timeline, None, rest.strip())
    return None


@dataclass(frozen=True)
class ScanResult:
    matches: list[WalRecord]
    segments_scanned: int
    seconds: float


def scan_windows(segments: list[tuple[int, int]], *, first: int, largest: int) -> list[list[tuple[int, int]]]:
    """Newest-first (segment, timeline) pairs cut into windows for pg_waldump: the first `first`
    segments long (a target is usually recent), each next one twice as long up to `largest`; each
    window shares its oldest segment with the next one (a record can start in one segment and end
    in the next)."""
    # at least two segments a window: a window of one could not share a segment with the next
    windows, index, size = [], 0, max(2, first)
    while index < len(segments):
        windows.append(segments[index : index + size])
        if index + size >= len(segments):
            break
        index += size - 1
        size = min(size * 2, max(largest, 2))
    return windows


@dataclass
class ScanStats:
    segments: set[int] = field(default_factory=set)
    seconds: float = 0.0


def segments_on_path(listing: ArchiveListing, history: TimelineHistory, *, oldest_segno: int) -> list[tuple[int, int]]:
    """(segment number, timeline) of the archived segments on the history's path, newest first,
    none older than `oldest_segno`."""
    last = listing.last_segment_on(history)
    if last is None:
        return []
    return [
        (segno, history.timeline_of_segment(segno))
        for segno in range(last, oldest_segno - 1, -1)
        if history.timeline_of_segment(segno) in listing.segments.get(segno, {})
    ]


def waldump_archive(
    pgbackrest: PgBackRest,
    on_path: list[tuple[int, int]],
    *,
    batch: int = 16,
    stats: ScanStats | None = None,
    log: Callable[[str], None] = print,
) -> Iterator[tuple[int, Iterator[str]]]:
    """pg_waldump over archived segments (newest first, as segments_on_path lists them), fetched
    with `archive-get` into a private directory `batch` at a time: yields (timeline, its output
    lines as pg_waldump prints them) per pg_waldump run (one per timeline in a batch). Read each
    run's lines before asking for the next: memory stays bounded whatever the window, and the
    batch's files are replaced by the next one's. Consecutive batches overlap by one segment
    (records span files), so a record can be printed twice: key records by LSN. Commit times are
    printed in UTC. The caller stops when it has what it wants; the fetched WAL is removed however
    the iteration ends."""
    stats = stats if stats is not None else ScanStats()
    pg_waldump = str(Path(pgbackrest.cluster.postgres.bin_dir) / "pg_waldump")
    directory = work_dir(pgbackrest)
    started = time.monotonic()
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
                    pgbackrest.archive_get(name, str(directory / name))
                stats.segments.update(segment_parts(name)[1] for name in names)
                lines = pgbackrest.runner.lines(
                    [pg_waldump, "--path", str(directory), names[0], names[-1]], timeout=600, extra_env={"TZ": "UTC"}
                )
                try:
                    yield timeline, lines
                finally:
                    lines.close()  # a reader that stopped early: its pg_waldump ends before the next archive-get
    finally:
        shutil.rmtree(directory, ignore_errors=True)
        stats.seconds = time.monotonic() - started
        count = len(stats.segments)
        log(f"scanned {count} archived WAL segment(s) in {stats.seconds:.1f}s ({stats.seconds / max(count, 1):.2f}s per segment)")


def scan_archive(
    pgbackrest: PgBackRest,
    listing: ArchiveListing,
    history: TimelineHistory,
    wanted: Callable[[WalRecord], bool],
    *,
    oldest_segno: int,
    newer_than: int | None = None,
    rmgr: str | None = None,
    xid: str | None = None,
    max_segments: int = 512,
    first_window: int = 2,
    largest_window: int = 8,
    workers: int | None = None,
    log: Callable[[str], None] = print,
) -> ScanResult:
    """Read archived WAL on the history's path newest first and stop after the first window where
    `wanted` matched a record; never older than `oldest_segno` (the oldest backup's first segment),
    nor at or before `newer_than` (what an earlier scan of this plan already read: an archived
    segment never changes). pg_waldump prints only what a target can name (`rmgr`: Transaction for
    an xid, XLOG for a restore point; `xid`: that transaction's records), so little is parsed.
    Segments are fetched by `workers` archive-gets at once (default: the cluster's process-max), the
    next window while pg_waldump reads this one."""
    floor = oldest_segno if newer_than is None else max(oldest_segno, newer_than + 1)
    on_path = segments_on_path(listing, history, oldest_segno=floor)[:max_segments]
    windows = scan_windows(on_path, first=first_window, largest=largest_window)
    pg_waldump = str(Path(pgbackrest.cluster.postgres.bin_dir) / "pg_waldump")
    filters = [*(["--rmgr", rmgr] if rmgr else []), *(["--xid", xid] if xid else [])]
    directory = work_dir(pgbackrest)
    workers = max(1, workers or pgbackrest.cluster.pgbackrest.process_max)
    fetchers = [PgBackRest(pgbackrest.cluster, pgbackrest.runner.sibling()) for _ in range(workers)]
    idle: queue.SimpleQueue[PgBackRest] = queue.SimpleQueue()
    for fetcher in fetchers:
        idle.put(fetcher)
    fetched: dict[str, Future] = {}

    def fetch(name: str) -> None:
        fetcher = idle.get()
        try:
            fetcher.archive_get(name, str(directory / name))
        finally:
            idle.put(fetcher)

    def prefetch(pool: ThreadPoolExecutor, window: list[tuple[int, int]]) -> None:
        for segno, tli in window:
            name = segment_name(tli, segno)
            if name not in fetched:
                fetched[name] = pool.submit(fetch, name)

    found: list[WalRecord] = []
    scanned: set[int] = set()
    started = time.monotonic()
    try:
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="rewind-archive-get") as pool:
            try:
                for number, window in enumerate(windows):
                    prefetch(pool, window)
                    if number + 1 < len(windows):
                        prefetch(pool, windows[number + 1])  # fetched while pg_waldump reads this window
                    for timeline in sorted({tli for _seg, tli in window}):
                        names = sorted(segment_name(tli, segno) for segno, tli in window if tli == timeline)
                        for name in names:
                            fetched[name].result()
                        scanned.update(segment_parts(name)[1] for name in names)
                        result = pgbackrest.runner.run(
                            [pg_waldump, *filters, "--path", str(directory), names[0], names[-1]],
                            timeout=600,
                            check=False,
                            log_stdout=False,
                            extra_env={"TZ": "UTC"},
                        )
                        found.extend(r for line in result.stdout.splitlines() if (r := parse_waldump_line(line, timeline)) and wanted(r))
                    if found:
                        break
                    keep = segment_name(window[-1][1], window[-1][0])  # shared with the next window
                    for segno, tli in window:
                        if (name := segment_name(tli, segno)) != keep:
                            (directory / name).unlink(missing_ok=True)
            finally:  # found, done or interrupted: what is still being fetched is not needed
                for future in fetched.values():
                    future.cancel()
                for fetcher in fetchers:
                    fetcher.runner.terminate()
    finally:
        shutil.rmtree(directory, ignore_errors=True)
    seconds = time.monotonic() - started
    log(f"scanned {len(scanned)} archived WAL segment(s) in {seconds:.1f}s ({seconds / max(len(scanned), 1):.2f}s per segment)")
    return ScanResult(found, len(scanned), seconds)


def oldest_start_segment(starts: Iterable[str | None]) -> int:
    """The oldest segment number among backups' first WAL segments (0 when none)."""
    return min((segment_parts(start)[1] for start in starts if start), default=0)
