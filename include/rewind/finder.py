"""Which instant is just before the bad transaction? Read it from the archived WAL.

The finder lists the transactions committed in a time window, from the WAL in the repository
(rewind.wal reads it: archive-get, pg_waldump): xid, commit time and LSN, rows inserted, updated
and deleted per table, and DDL seen as storage changes (DROP, and TRUNCATE or another rewrite).
For each it names the PITR params that stop just before it (xid N, exclusive), and it states the
recoverable window: the oldest point a restore reaches (the end of the oldest backup) and the
newest archived WAL.

What WAL can say, and what it cannot:
- Rows are counted from heap records (INSERT, MULTI_INSERT, UPDATE, HOT_UPDATE, DELETE) of the
  transaction and its subtransactions; system catalogs and TOAST are left out of the counts (a
  catalog change is reported as DDL). A TRUNCATE writes no row records: it shows as a rewrite.
- Tables are named by mapping the relfilenode in each record to pg_class of the live cluster, read
  only. A file rewritten or dropped since (TRUNCATE, VACUUM FULL, DROP) no longer maps: it is shown
  as "relfilenode N (unknown now)". A dropped relation's name is gone with it: only its OID remains.
- Only segments that could hold the window are read: from the newest archived segment back to the
  newest segment uploaded before the window starts (every record in a segment predates its upload).
  A transaction that began writing before that segment has its rows counted partly.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from rewind.errors import RewindError
from rewind.wal import (
    WALDUMP_RE,
    ArchiveListing,
    TimelineHistory,
    lsn_value,
    oldest_start_segment,
    segment_name,
    segments_on_path,
    transaction_end,
)

ROW_KINDS = {"INSERT": "inserted", "MULTI_INSERT": "inserted", "UPDATE": "updated", "HOT_UPDATE": "updated", "DELETE": "deleted"}
REL_RE = re.compile(r"blkref #0: rel (\d+)/(\d+)/(\d+)")
MULTI_RE = re.compile(r"(\d+) tuples|ntuples:? (\d+)")
COMMIT_TIME_RE = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d(?:\.\d+)?) (UTC|GMT)")
PATH_RE = re.compile(r"(?:base|pg_tblspc/\d+/[^/\s]+)/(\d+)/(\d+)")
DROPPED_STATS_RE = re.compile(r"\b2/(\d+)/(\d+)")
CATALOG_SCHEMAS = ("pg_catalog", "pg_toast", "information_schema")
FIRST_USER_OID = 16384  # below: relations created by initdb (catalogs)
# What ANALYZE (by hand or autovacuum's) writes: never what a DBA rewinds past, left out of the listing
STATISTICS_TABLES = frozenset(
    {"pg_catalog.pg_statistic", "pg_catalog.pg_statistic_ext_data", "pg_toast.pg_toast_2619", "pg_toast.pg_toast_3429"}
)
STATISTICS_FILES = frozenset({2619, 3429})  # their initdb file numbers: the fallback when the cluster is down


class FinderError(RewindError):
    opens_incident = False


# ---- the window ----------------------------------------------------------------------------------
def parse_instant(value: str, *, what: str) -> dt.datetime:
    """'2026-11-24 02:13:30+00' (a time zone is required: a window without one is a guess)."""
    text = value.strip().replace("T", " ", 1)
    if text.endswith(("Z", "z")):
        text = text[:-1] + "+00:00"
    if re.search(r"[+-]\d\d$", text):
        text += ":00"
    try:
        instant = dt.datetime.fromisoformat(text)
    except ValueError:
        raise FinderError(f"param {what}: {value!r} is not a time like 2026-11-24 02:13:30+00") from None
    if instant.tzinfo is None:
        raise FinderError(f"param {what}: {value!r} has no time zone: write it like 2026-11-24 02:13:30+00")
    return instant.astimezone(dt.timezone.utc)


@dataclass(frozen=True)
class Window:
    start: dt.datetime
    end: dt.datetime

    @classmethod
    def parse(cls, start: str, end: str | None, *, now: dt.datetime) -> Window:
        if not (start or "").strip():
            raise FinderError("param window_start: give the time the window starts, like 2026-11-24 02:00:00+00")
        begin = parse_instant(start, what="window_start")
        finish = parse_instant(end, what="window_end") if (end or "").strip() else now
        if finish <= begin:
            raise FinderError(f"param window_end: {finish:%Y-%m-%d %H:%M:%S} UTC is not after window_start {begin:%Y-%m-%d %H:%M:%S} UTC")
        return cls(begin, finish)

    def __contains__(self, instant: dt.datetime) -> bool:
        return self.start <= instant <= self.end


def segments_to_read(
    listing: ArchiveListing, history: TimelineHistory, window: Window, *, backup_starts: Iterable[str | None]
) -> list[tuple[int, int]]:
    """(segno, timeline) newest first: from the newest archived segment on the history's path down
    to the newest one uploaded before the window starts (kept: it may hold the first rows of a
    transaction committed in the window), never older than the oldest backup's first segment."""
    on_path = segments_on_path(listing, history, oldest_segno=oldest_start_segment(backup_starts))
    chosen = []
    for segno, tli in on_path:
        chosen.append((segno, tli))
        uploaded = listing.segments[segno][tli].get("time")
        if uploaded is not None and dt.datetime.fromtimestamp(uploaded, dt.timezone.utc) < window.start:
            break
    return chosen


# ---- what pg_waldump printed -----------------------------------------------------------------------
@dataclass(frozen=True)
class Relation:
    tablespace: int
    database: int
    node: int

    def __str__(self) -> str:
        return f"{self.tablespace}/{self.database}/{self.node}"


@dataclass
class Transaction:
    xid: int
    timeline: int = 0
    lsn: str = ""  # of the commit (or abort) record
    committed_at: dt.datetime | None = None
    aborted: bool = False
    subxacts: tuple[int, ...] = ()
    rows: dict[Relation, dict[str, int]] = field(default_factory=dict)
    created: set[Relation] = field(default_factory=set)  # Storage CREATE: new relation files
    dropped_files: tuple[Relation, ...] = ()  # files unlinked at commit
    dropped_oids: tuple[tuple[int, int], ...] = ()  # (database, OID) whose statistics the commit dropped: DROP
    locked: set[tuple[int, int]] = field(default_factory=set)  # (database, OID) AccessExclusiveLock'ed

    def count(self, relation: Relation, kind: str, n: int = 1) -> None:
        counts = self.rows.setdefault(relation, {"inserted": 0, "updated": 0, "deleted": 0})
        counts[kind] += n

    def absorb(self, sub: Transaction) -> None:
        for relation, counts in sub.rows.items():
            for kind, n in counts.items():
                self.count(relation, kind, n)
        self.created |= sub.created
        self.locked |= sub.locked


def parse_records(dumps: Iterable[tuple[int, Iterable[str]]]) -> dict[int, Transaction]:
    """Top-level transactions (subtransactions folded in) that committed or aborted in these
    pg_waldump outputs (each with its timeline), read line by line as they come. Records printed
    twice (overlapping batches) count once: a record within the LSN range an earlier output of its
    timeline printed is skipped (one range per output, not one entry per record: a 16 MiB segment
    holds hundreds of thousands of records)."""
    printed: list[tuple[int, int, int]] = []  # (timeline, first LSN, last LSN) of each output read
    by_xid: dict[int, Transaction] = {}
    for timeline, lines in dumps:
        earlier = [(low, high) for tli, low, high in printed if tli == timeline]
        first = last = None
        for line in lines:
            match = WALDUMP_RE.search(line)
            if not match:
                continue
            rmgr, xid_text, lsn, kind, rest = match.groups()
            at = lsn_value(lsn)
            first = at if first is None else min(first, at)
            last = at if last is None else max(last, at)
            if any(low <= at <= high for low, high in earlier):
                continue
            ended = transaction_end(rmgr, xid_text, kind, rest)
            if ended:  # a two-phase commit's end carries its transaction's xid in the description
                kind, xid_text, rest = ended
            xid = int(xid_text)
            if xid == 0:
                continue
            xact = by_xid.setdefault(xid, Transaction(xid))
            kind = kind.split("+")[0]
            if rmgr in ("Heap", "Heap2") and kind in ROW_KINDS and (rel := REL_RE.search(rest)):
                relation = Relation(*(int(part) for part in rel.groups()))
                n = 1
                if kind == "MULTI_INSERT" and (multi := MULTI_RE.search(rest)):
                    n = int(multi.group(1) or multi.group(2))
                xact.count(relation, ROW_KINDS[kind], n)
            elif rmgr == "Storage" and kind == "CREATE" and (path := PATH_RE.search(rest)):
                xact.created.add(_relation_of_path(path, rest))
            elif rmgr == "Standby" and kind == "LOCK":
                for db, oid in re.findall(r"db (\d+) rel (\d+)", rest):
                    xact.locked.add((int(db), int(oid)))
            elif ended:
                _finish(xact, kind, rest, timeline, lsn)
        if first is not None:
            printed.append((timeline, first, last))
    finished = {xid: x for xid, x in by_xid.items() if x.lsn}
    for xact in list(finished.values()):
        for sub in xact.subxacts:
            if sub in by_xid and sub != xact.xid:
                xact.absorb(by_xid[sub])
                finished.pop(sub, None)
    return finished


def _relation_of_path(match: re.Match, text: str) -> Relation:
    database, node = (int(part) for part in match.groups())
    tablespace = re.search(r"pg_tblspc/(\d+)/", match.group(0))
    return Relation(int(tablespace.group(1)) if tablespace else 1663, database, node)


def _finish(xact: Transaction, kind: str, rest: str, timeline: int, lsn: str) -> None:
    xact.timeline, xact.lsn, xact.aborted = timeline, lsn, kind == "ABORT"
    parts = [part.strip() for part in rest.split(";")]
    when = COMMIT_TIME_RE.match(parts[0])
    if when:
        xact.committed_at = dt.datetime.fromisoformat(when.group(1)).replace(tzinfo=dt.timezone.utc)
    for part in parts[1:]:
        name, _, value = part.partition(":")
        if name == "subxacts":
            xact.subxacts = tuple(int(x) for x in value.split())
        elif name == "rels":
            xact.dropped_files = tuple(_relation_of_path(m, value) for m in PATH_RE.finditer(value))
        elif name == "dropped stats":
            xact.dropped_oids = tuple((int(db), int(oid)) for db, oid in DROPPED_STATS_RE.findall(value))


# ---- names from the live cluster -----------------------------------------------------------------
@dataclass(frozen=True)
class Names:
    """What the live cluster's catalogs say now: relation files and OIDs -> (schema.table, relkind)."""

    databases: dict[int, str] = field(default_factory=dict)
    files: dict[Relation, tuple[str, str]] = field(default_factory=dict)
    oids: dict[tuple[int, int], tuple[str, str]] = field(default_factory=dict)

    def table(self, relation: Relation) -> str:
        if relation in self.files:
            return self.files[relation][0]
        return f"relfilenode {relation} (unknown now)"

    def is_catalog(self, relation: Relation) -> bool:
        if relation in self.files:
            return self.files[relation][0].split(".")[0] in CATALOG_SCHEMAS
        return relation.node < FIRST_USER_OID or relation.database == 0

    def is_statistics(self, relation: Relation) -> bool:
        if relation in self.files:
            return self.files[relation][0] in STATISTICS_TABLES
        return relation.node in STATISTICS_FILES


def names_sql(files: Iterable[Relation], oids: Iterable[int]) -> str:
    """One read-only query in one database: (kind, key, name, relkind) rows for the relation files
    (pg_filenode_relation, which also knows mapped catalogs) and for the OIDs."""
    file_rows = ", ".join(f"({r.tablespace}, {r.node})" for r in files) or "(0, 0)"
    oid_list = ", ".join(str(oid) for oid in oids) or "0"
    return (
        "select 'f|' || f.ts || '/' || f.node || '|' || n.nspname || '.' || c.relname || '|' || c.relkind::text"
        f" from (values {file_rows}) f(ts, node)"
        " join pg_class c on c.oid = pg_filenode_relation(case when f.ts = (select dattablespace from pg_database"
        " where datname = current_database()) then 0 else f.ts end, f.node)"
        " join pg_namespace n on n.oid = c.relnamespace"
        " union all select 'o|' || c.oid || '|' || n.nspname || '.' || c.relname || '|' || c.relkind::text"
        f" from pg_class c join pg_namespace n on n.oid = c.relnamespace where c.oid in ({oid_list})"
    )


def resolve_names(transactions: Iterable[Transaction], query: Callable[[str, str], str]) -> Names:
    """`query(sql, database)` runs read-only SQL on the live cluster and returns psql's unaligned rows."""
    transactions = list(transactions)
    databases = {}
    for row in query("select oid || '|' || datname from pg_database where datallowconn", "postgres").splitlines():
        oid, _, name = row.partition("|")
        databases[int(oid)] = name
    files: dict[Relation, tuple[str, str]] = {}
    oids: dict[tuple[int, int], tuple[str, str]] = {}
    for db_oid, db_name in databases.items():
        wanted_files = {r for x in transactions for r in (*x.rows, *x.created, *x.dropped_files) if r.database == db_oid}
        wanted_oids = {oid for x in transactions for db, oid in (*x.locked, *x.dropped_oids) if db == db_oid}
        if not wanted_files and not wanted_oids:
            continue
        for row in query(names_sql(sorted(wanted_files, key=str), sorted(wanted_oids)), db_name).splitlines():
            kind, key, name, relkind = row.split("|")
            if kind == "f":
                tablespace, node = key.split("/")
                files[Relation(int(tablespace), db_oid, int(node))] = (name, relkind)
            else:
                oids[(db_oid, int(key))] = (name, relkind)
    return Names(databases, files, oids)


# ---- the report ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Finding:
    """One committed transaction of the window, as the DBA reads it."""

    xid: int
    committed_at: dt.datetime
    lsn: str
    timeline: int
    tables: dict[str, dict[str, int]]
    ddl: tuple[str, ...]
    pitr_params: dict[str, object]

    @property
    def rows(self) -> int:
        return sum(sum(counts.values()) for counts in self.tables.values())

    def as_dict(self) -> dict:
        return {
            "xid": self.xid,
            "committed_at": self.committed_at.isoformat(timespec="microseconds"),
            "lsn": self.lsn,
            "timeline": self.timeline,
            "tables": self.tables,
            "ddl": list(self.ddl),
            "pitr_params": self.pitr_params,
        }


def ddl_of(xact: Transaction, names: Names) -> tuple[str, ...]:
    """DROP (statistics dropped at commit), a rewrite (new file + old files unlinked: TRUNCATE,
    VACUUM FULL, CLUSTER, a rewriting ALTER TABLE), CREATE, and other catalog changes."""
    found: list[str] = []
    for db, oid in xact.dropped_oids:
        found.append(f"DROP relation oid {oid} (database {names.databases.get(db, db)}; its name is gone with it)")
    rewritten = sorted(
        {names.oids[key][0] for key in xact.locked if key in names.oids and names.oids[key][1] in ("r", "m", "p")}
        if xact.created and xact.dropped_files
        else set()
    )
    for table in rewritten:
        found.append(f"TRUNCATE or rewrite of {table} (new file; old files unlinked at commit)")
    if xact.dropped_files and not xact.dropped_oids and not rewritten:
        files = ", ".join(names.table(r) for r in xact.dropped_files)
        found.append(
            f"TRUNCATE or rewrite (new file; old files unlinked at commit: {files})"
            if xact.created
            else f"files unlinked at commit: {files}"
        )
    created_tables = sorted(
        names.files[r][0] for r in xact.created if r in names.files and names.files[r][1] in ("r", "m", "p") and r not in xact.dropped_files
    )
    if created_tables and not rewritten:
        found.append("CREATE " + ", ".join(created_tables))
    if not found and any(names.is_catalog(r) for r in xact.rows):
        found.append("catalog change (ALTER, CREATE or GRANT: DDL without new files)")
    return tuple(found)


def pitr_params(xact: Transaction, history: TimelineHistory) -> dict[str, object]:
    """The PITR form's values that stop just before this transaction."""
    return {
        "target_type": "xid",
        "target": str(xact.xid),
        "target_exclusive": True,
        # Always the number: xids repeat across timelines (a rewind hands the discarded ones out
        # again), and "current" names the cluster's timeline, not the one this history was read on.
        "target_timeline": str(xact.timeline),
    }


def findings(
    transactions: dict[int, Transaction], names: Names, window: Window, history: TimelineHistory, *, tables: Iterable[str] = ()
) -> list[Finding]:
    wanted = {t.lower() for t in tables}
    result = []
    for xact in sorted(transactions.values(), key=lambda x: (x.timeline, lsn_value(x.lsn))):
        if xact.aborted or xact.committed_at is None or xact.committed_at not in window:
            continue
        counts: dict[str, dict[str, int]] = {}
        for relation, by_kind in xact.rows.items():
            if names.is_catalog(relation):
                continue
            table = counts.setdefault(names.table(relation), {"inserted": 0, "updated": 0, "deleted": 0})
            for kind, n in by_kind.items():
                table[kind] += n
        ddl = ddl_of(xact, names)
        if not counts and not ddl:
            continue
        if not counts and _only_statistics(xact, names):
            continue  # an ANALYZE: autovacuum's can land anywhere in the window
        if wanted and not any(_matches(name, wanted) for name in [*counts, *ddl]):
            continue
        result.append(Finding(xact.xid, xact.committed_at, xact.lsn, xact.timeline, counts, ddl, pitr_params(xact, history)))
    return result


def _only_statistics(xact: Transaction, names: Names) -> bool:
    return (
        bool(xact.rows)
        and all(names.is_statistics(r) for r in xact.rows)
        and not (xact.created or xact.dropped_files or xact.dropped_oids or xact.locked)
    )


def _matches(text: str, wanted: set[str]) -> bool:
    lowered = text.lower()
    return any(lowered == w or lowered.endswith("." + w) or f" {w} " in f" {lowered} " or f".{w} " in f"{lowered} " for w in wanted)


@dataclass(frozen=True)
class Recoverable:
    oldest_point: dt.datetime | None  # the end of the oldest valid backup: a restore cannot stop before it
    oldest_backup: str | None
    newest_segment: str | None
    newest_upload: dt.datetime | None

    def describe(self) -> str:
        oldest = (
            f"{self.oldest_point:%Y-%m-%d %H:%M:%S} UTC (end of backup {self.oldest_backup})" if self.oldest_point else "none (no backup)"
        )
        newest = (
            f"{self.newest_segment} (archived {self.newest_upload:%Y-%m-%d %H:%M:%S} UTC)"
            if self.newest_segment and self.newest_upload
            else self.newest_segment or "none"
        )
        return f"recoverable window: oldest reachable point {oldest}; newest archived WAL {newest}"

    def as_dict(self) -> dict:
        return {
            "oldest_point": self.oldest_point.isoformat() if self.oldest_point else None,
            "oldest_backup": self.oldest_backup,
            "newest_segment": self.newest_segment,
            "newest_upload": self.newest_upload.isoformat() if self.newest_upload else None,
        }


def recoverable(info, listing: ArchiveListing, history: TimelineHistory) -> Recoverable:
    backups = [b for b in info.backups if not b.error and history.contains(b.timeline, lsn_value(b.lsn.stop))]
    oldest = min(backups, key=lambda b: b.stopped_at, default=None)
    last = listing.last_segment_on(history)
    newest = segment_name(history.timeline_of_segment(last), last) if last is not None else None
    uploaded = listing.segments[last][history.timeline_of_segment(last)].get("time") if last is not None else None
    return Recoverable(
        oldest.stopped_at if oldest else None,
        oldest.label if oldest else None,
        newest,
        dt.datetime.fromtimestamp(uploaded, dt.timezone.utc) if uploaded else None,
    )


def render_table(found: list[Finding]) -> str:
    """The transactions as a fixed-width table for the task log and the CLI."""
    width = max([len("table"), *(len(t) for f in found for t in f.tables)])
    header = f"{'xid':>10}  {'committed (UTC)':<26}  {'lsn':<12}  {'table':<{width}}  {'ins':>7}  {'upd':>7}  {'del':>7}  ddl"
    lines = [header, "-" * len(header)]
    for f in found:
        when = f"{f.committed_at:%Y-%m-%d %H:%M:%S.%f}"
        rows = list(f.tables.items()) or [("-", {"inserted": 0, "updated": 0, "deleted": 0})]
        for index, (table, counts) in enumerate(rows):
            first = index == 0
            line = (
                f"{(str(f.xid) if first else ''):>10}  {(when if first else ''):<26}  {(f.lsn if first else ''):<12}  {table:<{width}}  "
                f"{counts['inserted']:>7}  {counts['updated']:>7}  {counts['deleted']:>7}  {'; '.join(f.ddl) if first else ''}"
            )
            lines.append(line.rstrip())
    return "\n".join(lines)


def params_line(finding: Finding) -> str:
    p = finding.pitr_params
    return (
        f"to stop just before xid {finding.xid} (committed {finding.committed_at:%Y-%m-%d %H:%M:%S.%f} UTC): "
        f"target_type={p['target_type']} target={p['target']} target_exclusive={str(p['target_exclusive']).lower()} "
        f"target_timeline={p['target_timeline']}"
    )


def largest(found: list[Finding]) -> Finding | None:
    """The likeliest culprit to name first: DDL that drops or rewrites (the earliest), else the most rows updated or deleted."""
    if not found:
        return None
    return max(found, key=lambda f: (any(d.startswith(("DROP", "TRUNCATE")) for d in f.ddl), _changed(f)))


def _changed(f: Finding) -> int:
    return sum(c["updated"] + c["deleted"] for c in f.tables.values())


@dataclass(frozen=True)
class Capped:
    """The window needed more segments than the limit: what was read, and from when the listing is whole."""

    segments_read: int
    segments_needed: int
    complete_from: dt.datetime | None  # the oldest commit read: the window is listed in full from here on

    def describe(self) -> str:
        whole = (
            f"transactions of the window committed before {self.complete_from:%Y-%m-%d %H:%M:%S} UTC are not listed"
            if self.complete_from
            else "no transaction was read"
        )
        return (
            f"CAPPED: read the newest {self.segments_read} of the {self.segments_needed} archived WAL segments the window needs: {whole}; "
            f"run again with max_segments={self.segments_needed} or a window that starts later"
        )

    def as_dict(self) -> dict:
        return {
            "segments_read": self.segments_read,
            "segments_needed": self.segments_needed,
            "complete_from": self.complete_from.isoformat() if self.complete_from else None,
        }


def report(found: list[Finding], window: Window, window_recoverable: Recoverable, *, segments: int, capped: Capped | None) -> str:
    lines = [
        f"transactions committed {window.start:%Y-%m-%d %H:%M:%S} .. {window.end:%Y-%m-%d %H:%M:%S} UTC "
        f"({len(found)} found in {segments} archived WAL segment(s))",
        window_recoverable.describe(),
    ]
    if capped:
        lines.append(capped.describe())
    if found:
        lines += ["", render_table(found), ""]
        suspect = largest(found)
        lines.append(f"most rows updated/deleted or DDL: xid {suspect.xid}; {params_line(suspect)}")
        lines.append("each transaction's PITR params are in this task's XCom (pitr_params); exclusive = the transaction is not replayed")
    else:
        lines.append("no committed transaction changed user tables in the window (is the WAL archived? widen the window)")
    return "\n".join(lines)


# ---- the whole finder ----------------------------------------------------------------------------
@dataclass(frozen=True)
class FinderResult:
    window: Window
    recoverable: Recoverable
    findings: list[Finding]
    segments: int
    capped: Capped | None
    timeline: int

    @property
    def partial(self) -> bool:
        return self.capped is not None

    def text(self) -> str:
        return report(self.findings, self.window, self.recoverable, segments=self.segments, capped=self.capped)

    def as_dict(self, *, limit: int = 200) -> dict:
        suspect = largest(self.findings)
        return {
            "window": {"start": self.window.start.isoformat(), "end": self.window.end.isoformat()},
            "timeline": self.timeline,
            "recoverable": self.recoverable.as_dict(),
            "segments_scanned": self.segments,
            "partial": self.partial,
            "capped": self.capped.as_dict() if self.capped else None,
            "suspect": suspect.as_dict() if suspect else None,
            "transactions": [f.as_dict() for f in self.findings[-limit:]],
            "transactions_total": len(self.findings),
        }


def live_query(runner, cluster) -> Callable[[str, str], str]:
    """Read-only SQL on the live cluster as its OS user over the socket (a read-only transaction)."""
    from rewind.postgres import psql_argv

    def query(sql: str, database: str) -> str:
        # the SQL on standard input: it may list any number of transactions or keys (never argv)
        argv = psql_argv(cluster, None, database=database)
        return runner.run(
            argv, timeout=600, log_stdout=False, extra_env={"PGOPTIONS": "-c default_transaction_read_only=on"}, input_text=sql
        ).stdout.strip("\n")

    return query


def find_transactions(
    pgbackrest,
    runner,
    *,
    window: Window,
    tables: Iterable[str] = (),
    timeline: int | None = None,
    max_segments: int = 256,
    log: Callable[[str], None] = print,
) -> FinderResult:
    """Read the archived WAL that can hold the window on the timeline's history (default: the
    cluster's current one) and report its committed transactions. Reads the repository and the
    live catalogs only."""
    from rewind.postgres import control_timeline, postmaster_pid
    from rewind.wal import ScanStats, read_archive, read_history, waldump_archive

    cluster = pgbackrest.cluster
    info = pgbackrest.info()
    archive = info.current_archive()
    if archive is None or not archive.max:
        raise FinderError(f"stanza {info.name!r} has no archived WAL: is archive_command working?")
    listing = read_archive(pgbackrest, archive.id)
    timeline = timeline or control_timeline(runner, cluster) or listing.highest_timeline()
    history = read_history(pgbackrest, timeline)
    starts = [b.archive.start for b in info.backups if not b.error]
    to_read = segments_to_read(listing, history, window, backup_starts=starts)
    needed = len(to_read)
    to_read = to_read[:max_segments]
    log(
        f"reading {len(to_read)} archived WAL segment(s) on timeline {timeline}'s history for {window.start:%Y-%m-%d %H:%M:%S} .. {window.end:%Y-%m-%d %H:%M:%S} UTC"
    )
    stats = ScanStats()
    transactions = parse_records(waldump_archive(pgbackrest, to_read, stats=stats, log=log))
    if postmaster_pid(cluster):
        names = resolve_names(transactions.values(), live_query(runner, cluster))
    else:
        log("PostgreSQL is not running: tables are named by relfilenode only")
        names = Names()
    found = findings(transactions, names, window, history, tables=tables)
    capped = None
    if needed > len(to_read):
        commits = [x.committed_at for x in transactions.values() if x.committed_at is not None]
        capped = Capped(len(to_read), needed, min(commits) if commits else None)
    return FinderResult(window, recoverable(info, listing, history), found, len(stats.segments), capped, timeline)
